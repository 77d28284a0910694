"""Slow, obviously-correct float64 twins of every fast kernel, for tests and `--check`.

Plain NumPy, written for clarity, never for speed.  Nothing here is used by the fast paths.
"""
import numpy as np


def conv2d_forward(x, w, bias=None, stride=(1, 1), padding=(0, 0), relu=False):
    """NCHW x KCRS -> NKPQ in float64: y[n,k,p,q] = sum_{c,r,s} x[n,c,p*sh+r-ph,q*sw+s-pw] w[k,c,r,s]."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    sh, sw = stride
    ph, pw = padding
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
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    sh, sw = stride
    ph, pw = padding
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
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
