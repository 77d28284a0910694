"""LSTM on the batch-reduce GEMM, with PyTorch's conventions (so results check against
torch.nn.LSTM):

    y, (h_T, c_T) = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0=None, c0=None)
    y, (h_T, c_T), cache = lstm_forward(..., train=True)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0 = lstm_backward(dy, cache, dh_T=None, dc_T=None)

x (T, N, C), w_ih (4K, C), w_hh (4K, K), biases (4K,), gate order i, f, g, o; h0/c0 (N, K).

How it runs (pyx/rnn.pyx, pyx/kernels/rnn_f32.h):
  1. x.W_ih^T + b for all T at once: one large GEMM on the BRGEMM (dlcpu.matmul);
  2. per step, h_{t-1}.W_hh^T as BRGEMM calls written straight onto that step's gate tiles, and
     the cell math finished on each tile while it is in cache; the T steps are one parallel
     region with one barrier per step;
  3. backward: per step (in reverse) the gate gradients on each tile, then dh_{t-1} as BRGEMM
     calls; dx, dW_ih, dW_hh and the biases afterwards as three large GEMMs over all T.
Hidden sizes are padded to whole 16-blocks internally; the padded units stay exactly zero.
Weights are re-blocked by `prepare_lstm` (done per call unless you pass its result as `weights`).
"""
from dataclasses import dataclass

import numpy as np

from . import cpu
from ._ext import rnn as _rnn
from .gemm import PackedMatrix, matmul, pack_matmul_operand
from .layout import CB

GATES = 4


@dataclass(frozen=True, eq=False)
class LSTMWeights:
    """LSTM weights re-blocked once for the kernels (reusable across calls)."""

    C: int
    K: int
    w_ih_t: PackedMatrix   # (C, 4*Kp) packed: x @ w_ih_t gives the gate pre-activations
    w_ih_p: PackedMatrix   # (4*Kp, C) packed: dG @ w_ih_p gives dx
    bias: np.ndarray       # (4*Kp,): b_ih + b_hh, padded
    recurrent: np.ndarray  # [4][Kb][Kb][16][16]: per gate, output block, input block (forward)
    recurrent_t: np.ndarray  # [Kb][4*Kb][16][16]: transposed blocks (backward)
    w_hh_p: np.ndarray     # (4*Kp, Kp) padded w_hh

    @property
    def Kb(self):
        return -(-self.K // CB)


def _f32(a, name, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"lstm: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"lstm: {name} must be float32, got {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"lstm: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def prepare_lstm(w_ih, w_hh, b_ih=None, b_hh=None):
    """Validate and re-block LSTM weights (w_ih (4K, C), w_hh (4K, K), biases (4K,))."""
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or w_hh.shape[0] != GATES * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"lstm: w_hh must have shape (4K, K), got {getattr(w_hh, 'shape', None)}")
    K = w_hh.shape[1]
    if not isinstance(w_ih, np.ndarray) or w_ih.ndim != 2 or w_ih.shape[0] != GATES * K or w_ih.shape[1] < 1:
        raise ValueError(f"lstm: w_ih must have shape (4K, C) = ({GATES * K}, C) for K={K}, got {getattr(w_ih, 'shape', None)}")
    C = w_ih.shape[1]
    w_ih = _f32(w_ih, "w_ih", (GATES * K, C))
    w_hh = _f32(w_hh, "w_hh", (GATES * K, K))
    bias = np.zeros(GATES * K, np.float32)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            bias += _f32(b, name, (GATES * K,))
    kb = -(-K // CB)
    kp = kb * CB
    w_ih_p = np.zeros((GATES, kp, C), np.float32)
    w_ih_p[:, :K] = w_ih.reshape(GATES, K, C)
    w_ih_p = w_ih_p.reshape(GATES * kp, C)
    bias_p = np.zeros((GATES, kp), np.float32)
    bias_p[:, :K] = bias.reshape(GATES, K)
    w_hh_p = np.zeros((GATES, kp, kp), np.float32)
    w_hh_p[:, :K, :K] = w_hh.reshape(GATES, K, K)
    # recurrent[g][kb][cb][kk][m] = w_hh[g*Kp + kb*16 + m][cb*16 + kk]
    rec = np.ascontiguousarray(w_hh_p.reshape(GATES, kb, CB, kb, CB).transpose(0, 1, 3, 4, 2))
    w_hh_p = w_hh_p.reshape(GATES * kp, kp)
    # recurrent_t[kb][j][kk][m] = w_hh[j*16 + kk][kb*16 + m]  (j runs over the 4*Kb gate blocks)
    rec_t = np.ascontiguousarray(w_hh_p.reshape(GATES * kb, CB, kb, CB).transpose(2, 0, 1, 3))
    return LSTMWeights(C, K, pack_matmul_operand(np.ascontiguousarray(w_ih_p.T)), pack_matmul_operand(w_ih_p),
                       bias_p.reshape(-1), rec, rec_t, w_hh_p)


def _state(s, name, N, K, kb):
    out = np.zeros((kb, N, CB), np.float32)
    if s is not None:
        s = _f32(s, name, (N, K))
        out.reshape(kb, N, CB)[:] = np.pad(s, ((0, 0), (0, kb * CB - K))).reshape(N, kb, CB).transpose(1, 0, 2)
    return out


def _unblock_state(s, N, K):
    """[Kb][N][16] -> (N, K)."""
    return np.ascontiguousarray(s.transpose(1, 0, 2).reshape(N, -1)[:, :K])


def lstm_forward(x, w_ih=None, w_hh=None, b_ih=None, b_hh=None, h0=None, c0=None, *, weights=None,
                 train=False, n_threads=None, isa=None):
    """LSTM over a whole sequence; see the module docstring.  With train=True also returns the
    cache lstm_backward needs."""
    if weights is None:
        if w_ih is None or w_hh is None:
            raise ValueError("lstm_forward: pass w_ih and w_hh, or weights=prepare_lstm(...)")
        weights = prepare_lstm(w_ih, w_hh, b_ih, b_hh)
    elif not isinstance(weights, LSTMWeights):
        raise TypeError("lstm_forward: weights must come from dlcpu.rnn.prepare_lstm")
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"lstm_forward: x must be a (T, N, C) array, got {getattr(x, 'shape', None)}")
    T, N, C = x.shape
    if T < 1 or N < 1:
        raise ValueError(f"lstm_forward: need T >= 1 and N >= 1, got x {x.shape}")
    if C != weights.C:
        raise ValueError(f"lstm_forward: x has C={C} features but w_ih expects C={weights.C} (x {x.shape})")
    x = _f32(x, "x", (T, N, C))
    K, kb = weights.K, weights.Kb
    kp = kb * CB
    n_threads = cpu.resolve_threads(n_threads)
    isa_code = cpu.isa_code(isa)
    H = np.empty((T + 1, kb, N, CB), np.float32)
    Cs = np.empty((T + 1, kb, N, CB), np.float32)
    H[0] = _state(h0, "h0", N, K, kb)
    Cs[0] = _state(c0, "c0", N, K, kb)
    x2 = x.reshape(T * N, C)
    G = matmul(x2, weights.w_ih_t, bias=weights.bias, n_threads=n_threads, isa=isa)
    errors = _rnn.lstm_forward_f32(G, weights.recurrent.reshape(-1), H.reshape(-1), Cs.reshape(-1),
                                   T, N, kb, CB, isa_code, n_threads)
    if errors:
        raise RuntimeError(f"lstm_forward: internal error ({errors} kernel calls had no microkernel)")
    y = np.ascontiguousarray(H[1:].transpose(0, 2, 1, 3).reshape(T, N, kp)[:, :, :K])
    out = (y, (_unblock_state(H[T], N, K), _unblock_state(Cs[T], N, K)))
    if train:
        cache = dict(x=x2, G=G, H=H, Cs=Cs, weights=weights, T=T, N=N, isa=isa, n_threads=n_threads)
        return (*out, cache)
    return out


def lstm_backward(dy, cache, dh_T=None, dc_T=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0) from dy (T, N, K) and the forward's cache."""
    w = cache["weights"]
    T, N, K, kb = cache["T"], cache["N"], w.K, w.Kb
    kp = kb * CB
    n_threads, isa = cache["n_threads"], cache["isa"]
    dy = _f32(dy, "dy", (T, N, K))
    dY = np.zeros((T, kb, N, CB), np.float32)
    dY.reshape(T, kb, N, CB)[:] = np.pad(dy, ((0, 0), (0, 0), (0, kp - K))).reshape(T, N, kb, CB).transpose(0, 2, 1, 3)
    dh = _state(dh_T, "dh_T", N, K, kb)
    dc = _state(dc_T, "dc_T", N, K, kb)
    dG = np.empty((T * N, GATES * kp), np.float32)
    dGb = np.empty((GATES * kb, N, CB), np.float32)
    errors = _rnn.lstm_backward_f32(cache["G"], cache["Cs"].reshape(-1), w.recurrent_t.reshape(-1),
                                    dY.reshape(-1), dh.reshape(-1), dc.reshape(-1), dG, dGb.reshape(-1),
                                    T, N, kb, cpu.isa_code(isa), n_threads)
    if errors:
        raise RuntimeError(f"lstm_backward: internal error ({errors} kernel calls had no microkernel)")
    # The three large GEMMs over all T (on the BRGEMM).
    dx = matmul(dG, w.w_ih_p, n_threads=n_threads, isa=isa).reshape(T, N, w.C)
    # dW_ih and dW_hh share the left operand dG^T: one GEMM against [x | h_{t-1}].
    xh = np.empty((T * N, w.C + kp), np.float32)
    xh[:, :w.C] = cache["x"]
    xh[:, w.C:] = cache["H"][:T].transpose(0, 2, 1, 3).reshape(T * N, kp)
    dw_all = matmul(dG, xh, transpose_x=True, n_threads=n_threads, isa=isa)
    dw_ih, dw_hh = dw_all[:, :w.C], dw_all[:, w.C:]
    db = dG.sum(axis=0, dtype=np.float64).astype(np.float32)

    def unpad_rows(a):
        return np.ascontiguousarray(a.reshape(GATES, kp, *a.shape[1:])[:, :K].reshape(GATES * K, *a.shape[1:]))

    dw_ih = unpad_rows(dw_ih)
    dw_hh = unpad_rows(dw_hh)[:, :K].copy()
    db = unpad_rows(db)
    return dx, dw_ih, dw_hh, db, db.copy(), _unblock_state(dh, N, K), _unblock_state(dc, N, K)
