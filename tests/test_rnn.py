"""LSTM forward/backward against the float64 twin, PyTorch, finite differences, threads, ISAs."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

from dlcpu import _peers, nn, rnn
from dlcpu import _reference as ref


def problem(rng, T, N, C, K, init=True, gates=4):
    """x, w_ih, w_hh, b_ih, b_hh, h0, c0 for a cell with `gates` gates (LSTM 4, GRU 3, RNN 1);
    h0, c0 None with init=False."""
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    w_ih = rng.uniform(-0.4, 0.4, (gates * K, C)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (gates * K, K)).astype(np.float32)
    b_ih = rng.uniform(-0.4, 0.4, gates * K).astype(np.float32)
    b_hh = rng.uniform(-0.4, 0.4, gates * K).astype(np.float32)
    h0 = rng.uniform(-1, 1, (N, K)).astype(np.float32) if init else None
    c0 = rng.uniform(-1, 1, (N, K)).astype(np.float32) if init else None
    return x, w_ih, w_hh, b_ih, b_hh, h0, c0


#: PyTorch's names for one layer's weights, the keys _peers.recurrent takes
WEIGHT_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

SIZES = [(1, 1, 1, 1), (3, 7, 16, 7), (2, 16, 33, 16), (4, 33, 7, 33), (1, 5, 20, 40), (6, 2, 3, 17)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("init", [True, False])
def test_against_reference(rng, isa, size, init):
    T, N, C, K = size
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K, init)
    y, (h, c), cache = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, train=True, isa=isa)
    z = np.zeros((N, K), np.float32)
    y_r, h_r, c_r, steps = ref.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, z if h0 is None else h0, z if c0 is None else c0)
    assert_close(y, y_r)
    assert_close(h, h_r)
    assert_close(c, c_r)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    dh_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    dc_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    got = rnn.lstm_backward(dy, cache, dh_T, dc_T)
    dx, dw_ih, dw_hh, db, dh0, dc0 = ref.lstm_backward(dy, x, w_ih, w_hh, steps, dh_T, dc_T)
    for a, b in zip(got, (dx, dw_ih, dw_hh, db, db, dh0, dc0)):
        assert_close(a, b)


@pytest.mark.parametrize("isa", ISAS)
def test_saturated_gates(rng, isa):
    """Pre-activations of +-100s: the fused AVX-512 tiles (rcp14 + Newton reciprocals, clamped
    exp) must saturate to 0/1 and +-1 exactly like the float64 reference, forward and backward."""
    T, N, C, K = 3, 5, 7, 33
    x = (rng.standard_normal((T, N, C)) * 50).astype(np.float32)
    w_ih = (rng.standard_normal((4 * K, C)) * 5).astype(np.float32)
    w_hh = (rng.standard_normal((4 * K, K)) * 5).astype(np.float32)
    b = np.zeros(4 * K, np.float32)
    z = np.zeros((N, K), np.float32)
    y, (_h, c), cache = rnn.lstm_forward(x, w_ih, w_hh, b, b, train=True, isa=isa)
    with np.errstate(over="ignore"):
        y_r, _h_r, c_r, steps = ref.lstm_forward(x, w_ih, w_hh, b, b, z, z)
    assert np.abs(y - y_r).max() < 1e-4 and np.abs(c - c_r).max() < 1e-4
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    got = rnn.lstm_backward(dy, cache)
    want = ref.lstm_backward(dy, x, w_ih, w_hh, steps, z, z)
    for a, w in zip(got[:3], want[:3]):
        assert np.isfinite(a).all()
        assert np.abs(a - w).max() <= 1e-3 * max(1.0, np.abs(w).max())


def test_finite_differences(rng):
    T, N, C, K = 3, 2, 5, 6
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K)
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    _y, _, cache = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, train=True)
    grads = rnn.lstm_backward(dy, cache)

    def loss(args):
        yy, _ = rnn.lstm_forward(*args)
        return float((yy.astype(np.float64) * dy).sum())

    args = [x, w_ih, w_hh, b_ih, b_hh, h0, c0]
    eps = 1e-2
    for which, grad in ((0, grads[0]), (1, grads[1]), (2, grads[2]), (3, grads[3]), (5, grads[5]), (6, grads[6])):
        v = rng.standard_normal(args[which].shape).astype(np.float32)
        plus, minus = list(args), list(args)
        plus[which] = (args[which] + eps * v).astype(np.float32)
        minus[which] = (args[which] - eps * v).astype(np.float32)
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = float((grad.astype(np.float64) * v).sum())
        assert abs(fd - analytic) <= 2e-3 * abs(analytic) + 2e-3, (which, fd, analytic)


@needs_torch
@pytest.mark.parametrize("size", [(5, 33, 16, 33), (4, 16, 7, 64)], ids=str)
def test_against_torch(rng, size):
    import torch

    T, N, C, K = size
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K)
    m = _peers.recurrent(torch, "lstm", dict(zip(WEIGHT_NAMES, (w_ih, w_hh, b_ih, b_hh))))
    xt = torch.from_numpy(x).requires_grad_()
    yt, (_ht, ct) = m(xt, (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    y, (_h, c), cache = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, train=True)
    assert_close(y, yt.detach().numpy())
    assert_close(c, ct[0].detach().numpy())
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    dx, dw_ih, dw_hh, db_ih, _, _, _ = rnn.lstm_backward(dy, cache)
    assert_close(dx, xt.grad.numpy())
    assert_close(dw_ih, m.weight_ih_l0.grad.numpy())
    assert_close(dw_hh, m.weight_hh_l0.grad.numpy())
    assert_close(db_ih, m.bias_ih_l0.grad.numpy())


def test_thread_count_bitwise(rng):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, 4, 37, 20, 48)
    dy = rng.uniform(-1, 1, (4, 37, 48)).astype(np.float32)
    outs = []
    for t in (1, max_threads(), 3):
        y, (h, c), cache = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, train=True, n_threads=t)
        outs.append((y, h, c, *rnn.lstm_backward(dy, cache)))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


def test_prepared_weights_reused(rng):
    x, w_ih, w_hh, b_ih, b_hh, _h0, _c0 = problem(rng, 3, 4, 5, 6)
    w = rnn.prepare_lstm(w_ih, w_hh, b_ih, b_hh)
    y1, _ = rnn.lstm_forward(x, weights=w)
    y2, _ = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh)
    assert np.array_equal(y1, y2)


@pytest.mark.parametrize("K", [16, 32, 5])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prepared_weights_do_not_alias_the_caller(rng, cell, K):
    """Prepared weights are copies: an optimizer updating w_ih, w_hh and the biases in place after
    prepare must not change them (aligned K skips the padding copy, so this can fail)."""
    gates = 4 if cell == "lstm" else 3
    prepare, forward = (rnn.prepare_lstm, rnn.lstm_forward) if cell == "lstm" else (rnn.prepare_gru, rnn.gru_forward)
    x = rng.uniform(-1, 1, (3, 2, 7)).astype(np.float32)
    w_ih = rng.uniform(-1, 1, (gates * K, 7)).astype(np.float32)
    w_hh = rng.uniform(-1, 1, (gates * K, K)).astype(np.float32)
    b_ih = rng.uniform(-1, 1, gates * K).astype(np.float32)
    b_hh = rng.uniform(-1, 1, gates * K).astype(np.float32)
    w = prepare(w_ih, w_hh, b_ih, b_hh)
    before = forward(x, weights=w)[0]
    for a in (w_ih, w_hh, b_ih, b_hh):
        a += 1.0
    assert np.array_equal(forward(x, weights=w)[0], before)


def test_nan_propagates(rng):
    x, w_ih, w_hh, b_ih, b_hh, _h0, _c0 = problem(rng, 3, 2, 4, 5)
    x[1, 0, 0] = np.nan
    y, _ = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[0]).all() and np.isfinite(y[:, 1]).all()


def test_bad_input(rng):
    x, w_ih, w_hh, b_ih, _b_hh, _h0, _c0 = problem(rng, 3, 2, 4, 5)
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4K, K\)"):
        rnn.lstm_forward(x, w_ih, w_hh[:, :4])
    with pytest.raises(ValueError, match=r"w_ih must have shape \(4K, C\) = \(20, C\) for K=5"):
        rnn.lstm_forward(x, w_ih[:19], w_hh)
    with pytest.raises(ValueError, match="x has C=4 features but w_ih expects C=3"):
        rnn.lstm_forward(x, w_ih[:, :3], w_hh)
    with pytest.raises(ValueError, match=r"need T >= 1"):
        rnn.lstm_forward(x[:0], w_ih, w_hh)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 5\)"):
        rnn.lstm_forward(x, w_ih, w_hh, h0=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"b_ih must have shape \(20,\)"):
        rnn.lstm_forward(x, w_ih, w_hh, b_ih[:3])
    with pytest.raises(TypeError, match="float32"):
        rnn.lstm_forward(x.astype(np.float64), w_ih, w_hh)


# ------------------------------------------------------------------------------------------- GRU
def gru_problem(rng, T, N, C, K, init=True):
    return problem(rng, T, N, C, K, init, gates=3)[:6]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("init", [True, False])
def test_gru_against_reference(rng, isa, size, init):
    T, N, C, K = size
    x, w_ih, w_hh, b_ih, b_hh, h0 = gru_problem(rng, T, N, C, K, init)
    y, h, cache = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, train=True, isa=isa)
    y_r, h_r, steps = ref.gru_forward(x, w_ih, w_hh, b_ih, b_hh, np.zeros((N, K)) if h0 is None else h0)
    assert_close(y, y_r)
    assert_close(h, h_r)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    dh_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    got = rnn.gru_backward(dy, cache, dh_T)
    for a, b in zip(got, ref.gru_backward(dy, x, w_ih, w_hh, steps, dh_T)):
        assert_close(a, b)


def test_gru_finite_differences(rng):
    T, N, C, K = 3, 2, 5, 6
    x, w_ih, w_hh, b_ih, b_hh, h0 = gru_problem(rng, T, N, C, K)
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    _, _, cache = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, train=True)
    grads = rnn.gru_backward(dy, cache)
    args = [x, w_ih, w_hh, b_ih, b_hh, h0]
    eps = 1e-2
    for which, grad in ((0, grads[0]), (1, grads[1]), (2, grads[2]), (3, grads[3]), (4, grads[4]), (5, grads[5])):
        v = rng.standard_normal(args[which].shape).astype(np.float32)
        plus, minus = list(args), list(args)
        plus[which] = (args[which] + eps * v).astype(np.float32)
        minus[which] = (args[which] - eps * v).astype(np.float32)
        fd = (float((rnn.gru_forward(*plus)[0].astype(np.float64) * dy).sum())
              - float((rnn.gru_forward(*minus)[0].astype(np.float64) * dy).sum())) / (2 * eps)
        analytic = float((grad.astype(np.float64) * v).sum())
        assert abs(fd - analytic) <= 2e-3 * abs(analytic) + 2e-3, (which, fd, analytic)


@needs_torch
def test_gru_against_torch(rng):
    import torch

    T, N, C, K = 5, 33, 16, 33
    x, w_ih, w_hh, b_ih, b_hh, h0 = gru_problem(rng, T, N, C, K)
    m = _peers.recurrent(torch, "gru", dict(zip(WEIGHT_NAMES, (w_ih, w_hh, b_ih, b_hh))))
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = m(xt, torch.from_numpy(h0)[None])
    y, _, cache = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, train=True)
    assert_close(y, yt.detach().numpy())
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    dx, _dw_ih, dw_hh, _db_ih, db_hh, _ = rnn.gru_backward(dy, cache)
    assert_close(dx, xt.grad.numpy())
    assert_close(dw_hh, m.weight_hh_l0.grad.numpy())
    assert_close(db_hh, m.bias_hh_l0.grad.numpy())


def test_gru_threads_bitwise_and_errors(rng):
    x, w_ih, w_hh, b_ih, b_hh, h0 = gru_problem(rng, 4, 37, 20, 48)
    dy = rng.uniform(-1, 1, (4, 37, 48)).astype(np.float32)
    outs = []
    for t in (1, max_threads(), 3):
        y, h, cache = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, train=True, n_threads=t)
        outs.append((y, h, *rnn.gru_backward(dy, cache)))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"gru: w_hh must have shape \(3K, K\)"):
        rnn.gru_forward(x, w_ih, w_hh[:, :4])
    with pytest.raises(TypeError, match="must come from dlcpu.rnn.prepare_gru"):
        rnn.gru_forward(x, weights=rnn.prepare_lstm(np.zeros((8, 20), np.float32), np.zeros((8, 2), np.float32)))


# ----------------------------------------------------------------------------------- vanilla RNN
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_against_reference(rng, isa, size, nonlinearity):
    T, N, C, K = size
    x, w_ih, w_hh, b_ih, b_hh, h0, _ = problem(rng, T, N, C, K, gates=1)
    relu = nonlinearity == "relu"
    y, h, cache = rnn.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity=nonlinearity, train=True, isa=isa)
    y_r, h_r, steps = ref.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, relu)
    assert_close(y, y_r)
    assert_close(h, h_r)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    dh_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    for a, b in zip(rnn.rnn_backward(dy, cache, dh_T), ref.rnn_backward(dy, x, w_ih, w_hh, steps, dh_T, relu)):
        assert_close(a, b)


@needs_torch
def test_rnn_against_torch_and_threads(rng):
    import torch

    T, N, C, K = 5, 33, 16, 40
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    m = torch.nn.RNN(C, K, nonlinearity="relu")
    w = [p.detach().numpy().copy() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)]
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = m(xt)
    outs = []
    for t in (1, max_threads(), 3):
        y, _h, cache = rnn.rnn_forward(x, *w, nonlinearity="relu", train=True, n_threads=t)
        dy = np.ones_like(y)
        outs.append((y, *rnn.rnn_backward(dy, cache)))
    assert_close(outs[0][0], yt.detach().numpy())
    yt.backward(torch.ones_like(yt))
    assert_close(outs[0][1], xt.grad.numpy())
    assert_close(outs[0][3], m.weight_hh_l0.grad.numpy())
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        rnn.rnn_forward(x, *w, nonlinearity="gelu")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_need_dx_false_skips_dx_only(rng, cell):
    """need_dx=False: dx is None, every other gradient bitwise the same as with dx."""
    T, N, C, K = 4, 3, 9, 18
    x, w_ih, w_hh, *_ = problem(rng, T, N, C, K, gates={"lstm": 4, "gru": 3, "rnn": 1}[cell])
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    fwd = getattr(rnn, f"{cell}_forward")
    bwd = getattr(rnn, f"{cell}_backward")
    cache = fwd(x, w_ih, w_hh, train=True)[-1]
    full = bwd(dy, cache)
    part = bwd(dy, cache, need_dx=False)
    assert part[0] is None and full[0].shape == x.shape
    for a, b in zip(full[1:], part[1:]):
        assert np.array_equal(a, b)


def test_layer_without_input_grad(rng):
    """A first LSTM layer with needs_input_grad=False returns None from backward and still
    accumulates the same weight gradients."""
    x = rng.uniform(-1, 1, (5, 4, 6)).astype(np.float32)
    dy = rng.uniform(-1, 1, (5, 4, 2 * 8)).astype(np.float32)
    grads = []
    for needs in (True, False):
        m = nn.LSTM(6, 8, num_layers=2, bidirectional=True, seed=3)
        m.needs_input_grad = needs
        m.train()
        m(x)
        dx = m.backward(dy)
        assert (dx is None) == (not needs)
        grads.append({k: p.grad.copy() for k, p in m.params.items()})
    for k in grads[0]:
        assert np.array_equal(grads[0][k], grads[1][k]), k


@pytest.mark.parametrize("isa", ISAS)
def test_activation_relative_accuracy(isa):
    """tanh and sigmoid element by element, relative to float64, over the fp32 range where the
    result is a normal number: the relative-L2 tests above cannot see an error confined to
    small |x| (an exp-based tanh returned 0 for tanh(1e-8))."""
    v = np.concatenate([np.logspace(-30, np.log10(80), 1500), -np.logspace(-30, np.log10(80), 1500)]).astype(np.float32)
    K = v.size
    zeros_k = np.zeros(K, np.float32)
    # vanilla RNN, one step, x = 0, W_hh = 0: h = tanh(b_ih)
    y, _ = rnn.rnn_forward(np.zeros((1, 1, 1), np.float32), np.zeros((K, 1), np.float32),
                           np.zeros((K, K), np.float32), v, zeros_k, isa=isa)
    want = np.tanh(v.astype(np.float64))
    assert np.max(np.abs(y[0, 0] - want) / np.abs(want)) < 1e-6
    # LSTM, one step, c0 = 0, g saturated to 1: c_T = sigmoid(b_i)
    b = np.zeros(4 * K, np.float32)
    b[:K] = v
    b[2 * K:3 * K] = 100.0
    _, (_, c) = rnn.lstm_forward(np.zeros((1, 1, 1), np.float32), np.zeros((4 * K, 1), np.float32),
                                 np.zeros((4 * K, K), np.float32), b, np.zeros(4 * K, np.float32), isa=isa)
    want = 1.0 / (1.0 + np.exp(-v.astype(np.float64)))
    assert np.max(np.abs(c[0] - want) / want) < 1e-6
