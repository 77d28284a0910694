"""Non-finite values propagate as in PyTorch: padded lanes never turn a finite result into NaN.

Hidden sizes and channel counts that are not multiples of 16 are padded inside dlcpu; the padded
lanes multiply zero weights, and 0 * Inf = NaN.  These tests put one Inf (or NaN) into the input
and check that every output PyTorch computes as finite is finite here too, on every ISA path.
"""
import numpy as np
import pytest
from conftest import ISAS, needs_torch

from dlcpu import rnn

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


def _torch_cell(torch, cell, C, K, w_ih, w_hh, b_ih, b_hh):
    if cell == "lstm":
        m = torch.nn.LSTM(C, K)
    elif cell == "gru":
        m = torch.nn.GRU(C, K)
    else:
        m = torch.nn.RNN(C, K, nonlinearity="tanh")
    with torch.no_grad():
        for p, v in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(torch.from_numpy(v))
    return m


def _ours(cell, x, w_ih, w_hh, b_ih, b_hh, isa):
    if cell == "lstm":
        return rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, isa=isa)[0]
    if cell == "gru":
        return rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, isa=isa)[0]
    return rnn.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, isa=isa)[0]


@needs_torch
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", sorted(GATES))
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_recurrent_inf_input_matches_torch(rng, isa, cell, bad):
    """One Inf in x with K=18 (two padded blocks' worth of padded units): the issue's case gave
    36 of 144 NaN outputs for the LSTM where PyTorch gives none."""
    import torch

    T, N, C, K = 4, 2, 5, 18
    g = GATES[cell]
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    x[1, 0, 2] = bad
    w_ih = rng.uniform(-0.4, 0.4, (g * K, C)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (g * K, K)).astype(np.float32)
    b_ih = rng.uniform(-0.4, 0.4, g * K).astype(np.float32)
    b_hh = rng.uniform(-0.4, 0.4, g * K).astype(np.float32)
    y = _ours(cell, x, w_ih, w_hh, b_ih, b_hh, isa)
    with torch.no_grad():
        yt = _torch_cell(torch, cell, C, K, w_ih, w_hh, b_ih, b_hh)(torch.from_numpy(x))[0].numpy()
    # PyTorch's own pattern of non-finite outputs is reproduced exactly ...
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(yt))
    # ... and the test is not vacuous: the finite outputs of sample 0 after the Inf exist.
    finite = np.isfinite(yt)
    assert finite[2:, 0].any()
    np.testing.assert_allclose(y[finite], yt[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_recurrent_nan_input_stays_in_its_sample(rng, isa):
    """A NaN in sample 0 reaches every unit of sample 0 from that step on (W_hh is dense, as in
    PyTorch), and never sample 1."""
    T, N, C, K = 3, 2, 4, 21
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    x[1, 0, 0] = np.nan
    w = [rng.uniform(-0.4, 0.4, s).astype(np.float32) for s in ((4 * K, C), (4 * K, K), (4 * K,), (4 * K,))]
    y, _ = rnn.lstm_forward(x, *w, isa=isa)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[0]).all() and np.isfinite(y[:, 1]).all()
