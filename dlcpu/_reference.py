"""Slow, obviously-correct float64 twins of every fast kernel, for tests and `--check`.

Plain NumPy, written for clarity, never for speed.  Nothing here is used by the fast paths.
"""
import math
import struct

import numpy as np


def _conv_operands(x, w, stride, padding):
    return np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64), tuple(stride), tuple(padding)


def conv2d_forward(x, w, bias=None, stride=(1, 1), padding=(0, 0), relu=False):
    """NCHW x KCRS -> NKPQ in float64: y[n,k,p,q] = sum_{c,r,s} x[n,c,p*sh+r-ph,q*sw+s-pw] w[k,c,r,s]."""
    x, w, (sh, sw), (ph, pw) = _conv_operands(x, w, stride, padding)
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    p = (h + 2 * ph - r) // sh + 1
    q = (wd + 2 * pw - s) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, k, p, q))
    for rr in range(r):
        for ss in range(s):
            patch = xp[:, :, rr:rr + sh * (p - 1) + 1:sh, ss:ss + sw * (q - 1) + 1:sw]  # n c p q
            y += np.einsum("ncpq,kc->nkpq", patch, w[:, :, rr, ss])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    if relu:
        y = np.maximum(y, 0.0)
    return y


def brgemm(a, b, c=None, a_index=None, b_index=None, beta=0, bias=None, relu=False):
    """C = beta*C + sum_i b[b_i] @ a[a_i] (+bias) (ReLU) in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a_index is None:
        a_index = b_index = range(a.shape[0])
    acc = np.zeros((b.shape[1], a.shape[2]))
    for ia, ib in zip(a_index, b_index):
        acc += b[ib] @ a[ia]
    if beta:
        acc += np.asarray(c, dtype=np.float64)
    if bias is not None:
        acc += np.asarray(bias, dtype=np.float64)[None, :]
    if relu:
        acc = np.maximum(acc, 0.0)
    return acc


def matmul(x, y):
    return np.asarray(x, dtype=np.float64) @ np.asarray(y, dtype=np.float64)


def to_blocked(x, cb=16):
    """NCHW -> N C/cb H W cb with zero padding, by explicit index arithmetic."""
    n, c, h, w = x.shape
    nb = -(-c // cb)
    out = np.zeros((n, nb, h, w, cb), dtype=x.dtype)
    for ch in range(c):
        out[:, ch // cb, :, :, ch % cb] = x[:, ch]
    return out


def block_weights(w, cb=16):
    """KCRS -> K/cb C/cb R S cb(c) cb(k) with zero padding."""
    k, c, r, s = w.shape
    out = np.zeros((-(-k // cb), -(-c // cb), r, s, cb, cb), dtype=w.dtype)
    for kk in range(k):
        for ch in range(c):
            out[kk // cb, ch // cb, :, :, ch % cb, kk % cb] = w[kk, ch]
    return out


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0)):
    """(dx, dw, db) of conv2d_forward in float64, by scattering every tap explicitly."""
    dy = np.asarray(dy, dtype=np.float64)
    x, w, (sh, sw), (ph, pw) = _conv_operands(x, w, stride, padding)
    n, c, h, wd = x.shape
    _k, _, r, s = w.shape
    p, q = dy.shape[2], dy.shape[3]
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for rr in range(r):
        for ss in range(s):
            rows = slice(rr, rr + sh * (p - 1) + 1, sh)
            cols = slice(ss, ss + sw * (q - 1) + 1, sw)
            dw[:, :, rr, ss] = np.einsum("nkpq,ncpq->kc", dy, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, rr, ss])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, dy.sum(axis=(0, 2, 3))


def _windows(x, r, s, sh, sw, ph, pw, fill):
    """(N, C, P, Q, R, S) view of every pooling window of x padded with `fill`."""
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    p = (h + 2 * ph - r) // sh + 1
    q = (w + 2 * pw - s) // sw + 1
    out = np.empty((n, c, p, q, r, s))
    for i in range(r):
        for j in range(s):
            out[..., i, j] = xp[:, :, i:i + sh * (p - 1) + 1:sh, j:j + sw * (q - 1) + 1:sw]
    return out


def max_pool2d(x, kernel, stride, padding):
    """Max over each window (padding never wins) in float64."""
    return _windows(np.asarray(x, np.float64), *kernel, *stride, *padding, -np.inf).max(axis=(4, 5))


def max_pool2d_backward(dy, x, kernel, stride, padding):
    """Route each dy to the first maximal position of its window."""
    x = np.asarray(x, np.float64)
    r, s = kernel
    sh, sw = stride
    ph, pw = padding
    win = _windows(x, r, s, sh, sw, ph, pw, -np.inf)
    n, c, p, q = win.shape[:4]
    flat = win.reshape(n, c, p, q, r * s).argmax(axis=4)
    dx = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw))
    for pi in range(p):
        for qi in range(q):
            rr, ss = np.divmod(flat[:, :, pi, qi], s)
            ni, ci = np.indices((n, c))
            np.add.at(dx, (ni, ci, pi * sh + rr, qi * sw + ss), dy[:, :, pi, qi])
    return dx[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]


def avg_pool2d(x, kernel, stride, padding):
    """Window sums / (R*S), padding counted as zeros (PyTorch's count_include_pad=True)."""
    return _windows(np.asarray(x, np.float64), *kernel, *stride, *padding, 0.0).mean(axis=(4, 5))


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding):
    n, c, h, w = x_shape
    r, s = kernel
    sh, sw = stride
    ph, pw = padding
    dx = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    p, q = dy.shape[2], dy.shape[3]
    for i in range(r):
        for j in range(s):
            dx[:, :, i:i + sh * (p - 1) + 1:sh, j:j + sw * (q - 1) + 1:sw] += dy / (r * s)
    return dx[:, :, ph:ph + h, pw:pw + w]


def global_avg_pool(x):
    """(N, C) means over H and W, float64."""
    return np.asarray(x, np.float64).mean(axis=(2, 3))


def global_avg_pool_backward(dy, x_shape):
    """dy[n, c] / (H*W) at every pixel of channel c."""
    n, c, h, w = x_shape
    return np.broadcast_to(np.asarray(dy, np.float64)[:, :, None, None] / (h * w), (n, c, h, w)).copy()


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm over (N, H, W): returns (y, mean, biased var)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    return xhat * np.asarray(gamma, np.float64)[None, :, None, None] + np.asarray(beta, np.float64)[None, :, None, None], mean, var


def batchnorm_backward(dy, x, gamma, eps=1e-5):
    """(dx, dgamma, dbeta) of training-mode batch norm, from the textbook formula."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))[None, :, None, None]
    invstd = 1.0 / np.sqrt(x.var(axis=(0, 2, 3)) + eps)[None, :, None, None]
    xhat = (x - mean) * invstd
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dx = np.asarray(gamma, np.float64)[None, :, None, None] * invstd / m * (
        m * dy - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None])
    return dx, dgamma, dbeta


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cell_activations(impl):
    """(sigmoid, tanh) of the recurrent twins: float64 exact for "exact" (the default, unchanged),
    else the flavour twins sigmoid_flavour/tanh_flavour of dlcpu.approx ("fast", "ktanh")."""
    if impl == "exact":
        return _sigmoid, np.tanh
    if impl not in _TANH_FLAVOURS:
        raise ValueError(f"impl must be one of {_TANH_FLAVOURS}, got {impl!r}")
    return (lambda v: sigmoid_flavour(v, impl)), (lambda v: tanh_flavour(v, impl))


def _no_rounding(a):
    return a


_OPERANDS = ("x", "w_ih", "w_hh", "h", "grad")


def _roundings(rounding):
    """The recurrent twins' `rounding`: None, one function for every product operand, or a dict
    naming one per operand -- "x" (the whole sequence at once), "w_ih", "w_hh", "h" (each step's
    h_{t-1}), "grad" (each step's gate gradients) -- missing ones unrounded."""
    if rounding is None or callable(rounding):
        return dict.fromkeys(_OPERANDS, rounding or _no_rounding)
    return {k: rounding.get(k, _no_rounding) for k in _OPERANDS}


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, impl="exact", rounding=None):
    """float64 LSTM, gate order i, f, g, o: returns y (T, N, K), h_T, c_T and the per-step
    (gates, c) needed by lstm_backward.  impl: the activation flavour ("exact", "fast", "ktanh";
    dlcpu.rnn's activation_impl); "ktanh" applies K-TanH to the float32 rounding of the float64
    pre-activations, so a value the kernel rounds to the other side of a bf16 boundary differs.
    rounding: what the low-precision layers do to the operands of the two products (x, W_ih, h,
    W_hh; see _roundings) -- the rest stays float64."""
    q = _roundings(rounding)
    sig, tanh = _cell_activations(impl)
    x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh))
    b = np.asarray(b_ih, np.float64) + np.asarray(b_hh, np.float64)
    h, c = np.asarray(h0, np.float64), np.asarray(c0, np.float64)
    K = w_hh.shape[1]
    ys, steps = [], []
    qx, qw_ih, qw_hh = q["x"](x), q["w_ih"](w_ih), q["w_hh"](w_hh)
    for t in range(x.shape[0]):
        z = qx[t] @ qw_ih.T + q["h"](h) @ qw_hh.T + b
        i, f, g, o = sig(z[:, :K]), sig(z[:, K:2 * K]), tanh(z[:, 2 * K:3 * K]), sig(z[:, 3 * K:])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * tanh(c)
        steps.append((i, f, g, o, c_prev, c, h_prev))
        ys.append(h)
    return np.stack(ys), h, c, steps


def lstm_backward(dy, x, w_ih, w_hh, steps, dh_T, dc_T, impl="exact", rounding=None):
    """Backpropagation through time in float64: (dx, dw_ih, dw_hh, db, dh0, dc0).  impl: the
    forward's flavour; tanh(c) is recomputed with it and every derivative is the analytic one
    evaluated at the flavour's values (1 - y^2, s (1 - s)), as the kernels do.  rounding: as
    lstm_forward's, for the operands of every product (the gate gradients, x, h, W; x per step)."""
    q = _roundings(rounding)
    tanh = _cell_activations(impl)[1]
    dy, x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (dy, x, w_ih, w_hh))
    dh, dc = np.asarray(dh_T, np.float64).copy(), np.asarray(dc_T, np.float64).copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(w_ih.shape[0])
    for t in reversed(range(x.shape[0])):
        i, f, g, o, c_prev, c, h_prev = steps[t]
        dh = dh + dy[t]
        tc = tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                             dh * tc * o * (1 - o)], axis=1)
        qz = q["grad"](dz)
        dx[t] = qz @ q["w_ih"](w_ih)
        dw_ih += qz.T @ q["x"](x[t])
        dw_hh += qz.T @ q["h"](h_prev)
        db += dz.sum(axis=0)
        dh = qz @ q["w_hh"](w_hh)
        dc = dc * f
    return dx, dw_ih, dw_hh, db, dh, dc


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, impl="exact", rounding=None):
    """float64 GRU (PyTorch's formulation, gates r, z, n): y, h_T and per-step values.
    impl: the activation flavour, as lstm_forward's (gru_backward needs no flavour: it reads the
    saved activations); rounding: as lstm_forward's."""
    q = _roundings(rounding)
    sig, tanh = _cell_activations(impl)
    x, w_ih, w_hh, b_ih, b_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh, b_ih, b_hh))
    h = np.asarray(h0, np.float64)
    K = w_hh.shape[1]
    qx, qw_ih, qw_hh = q["x"](x), q["w_ih"](w_ih), q["w_hh"](w_hh)
    ys, steps = [], []
    for t in range(x.shape[0]):
        gx = qx[t] @ qw_ih.T + b_ih
        gh = q["h"](h) @ qw_hh.T + b_hh
        r = sig(gx[:, :K] + gh[:, :K])
        z = sig(gx[:, K:2 * K] + gh[:, K:2 * K])
        hn = gh[:, 2 * K:]
        n = tanh(gx[:, 2 * K:] + r * hn)
        h_prev = h
        h = (1 - z) * n + z * h_prev
        steps.append((r, z, n, hn, h_prev))
        ys.append(h)
    return np.stack(ys), h, steps


def gru_backward(dy, x, w_ih, w_hh, steps, dh_T):
    """BPTT for gru_forward in float64: (dx, dw_ih, dw_hh, db_ih, db_hh, dh0)."""
    dy, x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (dy, x, w_ih, w_hh))
    dh = np.asarray(dh_T, np.float64).copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(w_ih.shape[0]), np.zeros(w_hh.shape[0])
    for t in reversed(range(x.shape[0])):
        r, z, n, hn, h_prev = steps[t]
        dh = dh + dy[t]
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        dgx = np.concatenate([dr, dz, dn], axis=1)
        dgh = np.concatenate([dr, dz, dn * r], axis=1)
        dx[t] = dgx @ w_ih
        dw_ih += dgx.T @ x[t]
        dw_hh += dgh.T @ h_prev
        db_ih += dgx.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        dh = dh * z + dgh @ w_hh
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh


def rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, relu=False, impl="exact", rounding=None):
    """float64 vanilla RNN: y, h_T, per-step (y_t, h_{t-1}).  impl: the tanh flavour, as
    lstm_forward's (no effect with relu); rounding: as lstm_forward's."""
    q = _roundings(rounding)
    tanh = _cell_activations(impl)[1]
    x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (x, w_ih, w_hh))
    b = np.asarray(b_ih, np.float64) + np.asarray(b_hh, np.float64)
    h = np.asarray(h0, np.float64)
    qx, qw_ih, qw_hh = q["x"](x), q["w_ih"](w_ih), q["w_hh"](w_hh)
    ys, steps = [], []
    for t in range(x.shape[0]):
        pre = qx[t] @ qw_ih.T + q["h"](h) @ qw_hh.T + b
        h_prev, h = h, (np.maximum(pre, 0) if relu else tanh(pre))
        steps.append((h, h_prev))
        ys.append(h)
    return np.stack(ys), h, steps


def rnn_backward(dy, x, w_ih, w_hh, steps, dh_T, relu=False):
    dy, x, w_ih, w_hh = (np.asarray(a, np.float64) for a in (dy, x, w_ih, w_hh))
    dh = np.asarray(dh_T, np.float64).copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(w_ih.shape[0])
    for t in reversed(range(x.shape[0])):
        y, h_prev = steps[t]
        dh = dh + dy[t]
        dpre = dh * (y > 0) if relu else dh * (1 - y * y)
        dx[t] = dpre @ w_ih
        dw_ih += dpre.T @ x[t]
        dw_hh += dpre.T @ h_prev
        db += dpre.sum(axis=0)
        dh = dpre @ w_hh
    return dx, dw_ih, dw_hh, db, db, dh


# -- fault models (dlcpu.faults.bitflip) ---------------------------------------------------------
def bit_flip(array, flat_index, bit):
    """A copy of `array` with bit `bit` of element `flat_index` flipped, done on the raw bytes
    (little-endian x86: bit b of an element lives in byte b // 8 of it)."""
    a = np.ascontiguousarray(array)
    raw = bytearray(a.tobytes())
    raw[flat_index * a.dtype.itemsize + bit // 8] ^= 1 << (bit % 8)
    return np.frombuffer(bytes(raw), dtype=a.dtype).reshape(a.shape).copy()


def fixed_point_flip(value, bit, value_range, total_bits=8):
    """PyTorchFI's single_bit_flip_signed on one value, step by step as it does it (with Python
    ints and a bit string, bit 0 the least significant), plus saturation of out-of-range values
    (where PyTorchFI stops with an AssertionError)."""
    half = 2 ** (total_bits - 1)
    q = value / value_range * half
    q = 0 if math.isnan(q) else (half - 1 if q >= half else (-half if q <= -half else int(q)))
    twos = q + (1 << total_bits) if q < 0 else q
    bits = list(format(twos, f"0{total_bits}b"))
    pos = total_bits - 1 - bit
    bits[pos] = "1" if bits[pos] == "0" else "0"
    new = int("".join(bits), 2)
    if new & (1 << (total_bits - 1)):
        new -= 1 << total_bits
    return new * 2.0 ** -(total_bits - 1) * value_range


# -- Taylor softmax and its relatives (dlcpu.nn.losses; papers.md section 2) ---------------------
def softmax(z):
    """Softmax of each row of a 2-D array, in float64 (max subtracted: exp is shift-invariant)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def taylor_exp(z, n):
    """f_n(z) = sum_{k=0}^{n} z^k / k! element-wise in float64, term by term."""
    z = np.asarray(z, dtype=np.float64)
    return sum(z ** k / math.factorial(k) for k in range(n + 1))


def taylor_softmax(z, n):
    """Taylor softmax of each row of a 2-D array: f_n(z_i) / sum_j f_n(z_j), float64.  No max is
    subtracted: unlike softmax it is not shift-invariant."""
    f = taylor_exp(z, n)
    return f / f.sum(axis=1, keepdims=True)


def taylor_softmax_backward(dp, z, n, gradient="exact"):
    """The vector-Jacobian product of taylor_softmax: dz given dp = dL/dp, row by row.
    With S = sum_j f_n(z_j) and p = f_n(z)/S:  dz_i = g_i / S * (dp_i - sum_j dp_j p_j), where
    g = f_{n-1} = f_n' ('exact') or g = f_n (the 'softmax' form, f_n treated as exp)."""
    if gradient not in ("exact", "softmax"):
        raise ValueError(f"gradient must be 'exact' or 'softmax', got {gradient!r}")
    z = np.asarray(z, dtype=np.float64)
    dp = np.asarray(dp, dtype=np.float64)
    f = taylor_exp(z, n)
    s = f.sum(axis=1, keepdims=True)
    p = f / s
    g = taylor_exp(z, n - 1) if gradient == "exact" else f
    return g / s * (dp - (dp * p).sum(axis=1, keepdims=True))


# -- K-TanH and the activation flavours (dlcpu.approx) ----------------------------------------------
# tanh three ways ("exact" float64, "fast" = the rational 7/8 Pade of LIBXSMM, "ktanh" = the K-TanH
# bit recipe on the bf16 truncation of a float32), and sigmoid / swish / GELU derived from each by
# the identities sigmoid(x) = 0.5 + 0.5 tanh(x/2), swish(x) = x sigmoid(beta x),
# gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  K-TanH spec: papers.md section 1.
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715
_TANH_FLAVOURS = ("exact", "fast", "ktanh")


def _ktanh_bf16_table(table):
    if table is None:
        from .approx.ktanh_table import PUBLISHED_TABLE
        return PUBLISHED_TABLE
    if getattr(table, "mantissa_bits", None) != 7:
        raise ValueError("table must be a bf16 KTanhTable (mantissa_bits=7)")
    return table


def _ktanh_bf16_one(bits, table):
    """K-TanH of one bf16 bit pattern (a Python int), step by step as the spec says."""
    sign, magnitude = bits & 0x8000, bits & 0x7FFF
    if magnitude > 0x7F80:                  # NaN: returned unchanged (compares would send it to +/-1)
        return bits
    ax = struct.unpack("<f", struct.pack("<I", magnitude << 16))[0]  # |x|, exactly
    low, high = table.thresholds
    if ax < low:                            # tanh(x) ~ x; also +/-0 and denormals
        return bits
    if ax > high:                           # saturation, also +/-Inf
        return sign | 0x3F80
    e, r, b = table.row((bits >> 4) & 31)   # t: low 2 exponent bits, top 3 mantissa bits
    return sign | ((e << 7) + ((bits & 0x7F) >> r) + b)


def ktanh_bf16_bits(bits, table=None):
    """K-TanH on bf16 bit patterns (uint16 in, uint16 out), one element at a time.
    `table`: a bf16 KTanhTable, by default the published one."""
    table = _ktanh_bf16_table(table)
    a = np.asarray(bits)
    if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 0xFFFF)):
        raise ValueError("ktanh_bf16_bits: bits must be integers in [0, 0xFFFF]")
    out = [_ktanh_bf16_one(int(v), table) for v in a.ravel().tolist()]
    return np.array(out, dtype=np.uint16).reshape(a.shape)


def ktanh_f32(x, table=None):
    """K-TanH on float32 (other dtypes are cast to float32 first), one element at a time: NaN
    unchanged, |x| < 0.25 unchanged, |x| > 3.75 (on the float32 value) -> +/-1, otherwise the table
    applied to the bf16 truncation of x (its top 16 bits), the result in the top 16 bits."""
    table = _ktanh_bf16_table(table)
    x = np.array(x, dtype=np.float32)
    low, high = table.thresholds
    out = []
    for u in x.reshape(-1).view(np.uint32).tolist():
        v = struct.unpack("<f", struct.pack("<I", u))[0]
        if math.isnan(v) or abs(v) < low:
            out.append(u)
        elif abs(v) > high:
            out.append((u & 0x80000000) | 0x3F800000)
        else:
            out.append(_ktanh_bf16_one(u >> 16, table) << 16)
    return np.array(out, dtype=np.uint32).view(np.float32).reshape(x.shape)


def tanh_pade(x):
    """The rational 7/8 Pade tanh in float64, sign(x) for |x| > 4.97; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    x2 = x * x
    with np.errstate(over="ignore", invalid="ignore"):
        p = x * (((36.0 * x2 + 6930.0) * x2 + 270270.0) * x2 + 2027025.0)
        q = (((x2 + 630.0) * x2 + 51975.0) * x2 + 945945.0) * x2 + 2027025.0
        y = p / q
    return np.where(np.abs(x) > 4.97, np.sign(x), y)


def sigmoid(x):
    """1 / (1 + exp(-x)) in float64, without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_grad(x):
    s = sigmoid(x)
    return s * (1.0 - s)


def swish(x, beta=1.0):
    x = np.asarray(x, dtype=np.float64)
    return x * sigmoid(beta * x)


def swish_grad(x, beta=1.0):
    x = np.asarray(x, dtype=np.float64)
    s = sigmoid(beta * x)
    return s + beta * x * s * (1.0 - s)


def gelu_tanh(x):
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + _GELU_A * x ** 3)))


def gelu_tanh_grad(x):
    x = np.asarray(x, dtype=np.float64)
    th = np.tanh(_GELU_C * (x + _GELU_A * x ** 3))
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)


def tanh_flavour(x, impl):
    """float64 tanh by `impl`: "exact" (np.tanh), "fast" (tanh_pade) or "ktanh" (ktanh_f32 on
    float32(x)).  The derived flavours below form their tanh argument in float64; for float32
    inputs and the scale 0.5 that equals the float32 product a kernel computes."""
    if impl == "exact":
        return np.tanh(np.asarray(x, dtype=np.float64))
    if impl == "fast":
        return tanh_pade(x)
    if impl == "ktanh":
        return ktanh_f32(np.asarray(x, dtype=np.float32)).astype(np.float64)
    raise ValueError(f"impl must be one of {_TANH_FLAVOURS}, got {impl!r}")


def sigmoid_flavour(x, impl):
    if impl == "exact":
        return sigmoid(x)
    return 0.5 + 0.5 * tanh_flavour(0.5 * np.asarray(x, dtype=np.float64), impl)


def swish_flavour(x, impl, beta=1.0):
    if impl == "exact":
        return swish(x, beta)
    x = np.asarray(x, dtype=np.float64)
    return x * (0.5 + 0.5 * tanh_flavour(0.5 * beta * x, impl))


def gelu_flavour(x, impl):
    if impl == "exact":
        return gelu_tanh(x)
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + tanh_flavour(_GELU_C * (x + _GELU_A * x ** 3), impl))


# ------------------------------------------- the flavours fed the kernels' float32 inner arguments
# K-TanH truncates its argument to bf16, so a float64 twin that forms beta*x or GELU's
# x (C1 x^2 + C0) in float64 can index another table row than the kernel, one step away.  These
# twins form the inner argument exactly as the kernels do in float32, then compute in float64.
_GELU_C0_32 = np.float32(0.7978845608)
_GELU_C1_32 = np.float32(_GELU_C0_32 * np.float32(0.044715))


def _product32(x32, b):
    """float32 x * b for a b that is exactly a float32: exact in float64, then one rounding."""
    return (np.asarray(x32, np.float64) * b).astype(np.float32)


def _gelu_inner32(x32):
    """The kernels' float32 GELU argument x * fmaf(C1, x^2, C0) (the fmaf exact in float64)."""
    t = (np.float64(_GELU_C1_32) * (x32 * x32).astype(np.float64) + np.float64(_GELU_C0_32)).astype(np.float32)
    return x32 * t


def kernel_flavour(op, x, impl, beta=1.0):
    """op ('tanh', 'sigmoid', 'swish', 'gelu') of float32 x in flavour `impl`, in float64, with the
    kernels' float32 inner arguments."""
    x32 = np.asarray(x, np.float32)
    x64 = x32.astype(np.float64)
    if op == "tanh":
        return tanh_flavour(x64, impl)
    if op == "sigmoid":
        return sigmoid_flavour(x64, impl)
    if op == "swish":
        return x64 * sigmoid_flavour(_product32(x32, float(np.float32(beta))), impl)
    if impl == "exact":
        return gelu_tanh(x64)
    return 0.5 * x64 * (1.0 + tanh_flavour(_gelu_inner32(x32), impl))


def kernel_flavour_grad(op, x, impl, beta=1.0):
    """d op/dx of 'swish' or 'gelu' by the analytic formula at the flavour's values (the kernels'
    convention), with the kernels' float32 inner arguments."""
    x32 = np.asarray(x, np.float32)
    x64 = x32.astype(np.float64)
    if op == "swish":
        b32 = float(np.float32(beta))
        if impl == "exact":
            return swish_grad(x64, b32)
        bx = _product32(x32, b32).astype(np.float64)
        s = sigmoid_flavour(bx, impl)
        return s + bx * s * (1.0 - s)
    if impl == "exact":
        return gelu_tanh_grad(x64)
    t = tanh_flavour(_gelu_inner32(x32), impl)
    return 0.5 * (1.0 + t) + 0.5 * x64 * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x64 * x64)


# ------------------------------------------------------------------------ number formats (precision)
def bf16_bits_one(u):
    """One fp32 bit pattern (a Python int) -> its bf16 pattern, VCVTNEPS2BF16's pseudocode step by
    step (papers.md §5.3): zero/denormal -> signed zero, Inf kept, NaN quietened, else RNE."""
    exponent = (u >> 23) & 0xFF
    if exponent == 0:
        return (u >> 16) & 0x8000
    if exponent == 0xFF:
        return (u >> 16) | 0x40 if u & 0x7FFFFF else u >> 16
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def bf16_bits(u):
    """bf16_bits_one over a uint32 array with numpy integer masks, for the exhaustive sweep.  The
    rounding add wraps only for exponent-0xFF patterns, which the NaN/Inf rule replaces."""
    u = np.asarray(u, np.uint32)
    top = u >> np.uint32(16)
    out = u + np.uint32(0x7FFF)
    out += top & np.uint32(1)
    out >>= np.uint32(16)
    exponent = u & np.uint32(0x7F800000)
    special = exponent == np.uint32(0x7F800000)
    nan = special & ((u & np.uint32(0x7FFFFF)) != 0)
    np.copyto(out, top, where=special)
    np.copyto(out, top | np.uint32(0x40), where=nan)
    np.copyto(out, top & np.uint32(0x8000), where=exponent == 0)
    return out.astype(np.uint16)


def dfp16_quantize(x, exponent, limit, rounding="nearest", draws=None):
    """Mantissas of x (float32 values) at shared exponent E, in Python arithmetic: v = x * 2**-E
    (exact as a Python float), nearest-even with round(), or stochastic: floor(|v|) + 1 when
    draw < frac(|v|) * 2**32, sign restored; clamped to [-limit, limit]."""
    out = []
    for i, value in enumerate(np.asarray(x, np.float64).ravel().tolist()):
        v = math.ldexp(value, -exponent)
        if rounding == "nearest":
            r = round(v)
        else:
            a = abs(v)
            r = math.floor(a) + (1 if int(draws[i]) < (a - math.floor(a)) * 2.0 ** 32 else 0)
            r = -r if v < 0 else r
        out.append(max(-limit, min(limit, r)))
    return np.array(out, np.int64).reshape(np.shape(x))


def mix32(h):
    """The 32-bit hash of kernels/convert.h (for the stochastic-rounding draws), on uint32 arrays."""
    h = np.asarray(h, np.uint64) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def stochastic_draws(seed, n):
    """The draw of every element index < n (< 2**32) for `seed`, as the kernels make them."""
    key = mix32(mix32(np.uint64(seed ^ 0x9E3779B9)) ^ 0)     # run 0 of 2**32 indices
    return mix32(key ^ mix32(np.arange(n, dtype=np.uint64)))


def ternary_brute_force(w):
    """min over every t in {-1, 0, 1}^N (N <= 8) and alpha >= 0 of ||w - alpha*t||^2, float64:
    for a fixed t the best alpha is max(0, w.t / t.t), leaving ||w||^2 - max(0, w.t)^2 / t.t."""
    w = np.asarray(w, np.float64)
    n = w.size
    if n > 8:
        raise ValueError("ternary_brute_force: 3**N assignments; N must be <= 8")
    grid = np.array(np.meshgrid(*([[-1.0, 0.0, 1.0]] * n), indexing="ij")).reshape(n, -1).T
    dots = grid @ w
    counts = (grid != 0).sum(axis=1)
    gain = np.where((counts > 0) & (dots > 0), dots ** 2 / np.maximum(counts, 1), 0.0)
    return float(w @ w - gain.max())
