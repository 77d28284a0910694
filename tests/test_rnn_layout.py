"""Recurrent weights kept in the kernels' layout: packing, the packed-output GEMM that writes
their gradients, the transposes a backward makes, forward-only preparation, and nn layers whose
parameters live in that layout (eval packs nothing; SGD updates them in place)."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

from dlcpu import _peers, gemm, nn, rnn

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@pytest.mark.parametrize("gates", [1, 3, 4])
@pytest.mark.parametrize("K,inputs", [(1, 1), (16, 16), (17, 5), (20, 33), (48, 32)])
def test_pack_gate_weights_round_trip_and_offsets(rng, gates, K, inputs):
    w = rng.standard_normal((gates * K, inputs)).astype(np.float32)
    packed = rnn.pack_gate_weights(w, gates)
    assert packed.shape == rnn.packed_gate_shape(gates, K, inputs)
    assert np.array_equal(rnn.unpack_gate_weights(packed, gates, K, inputs), w)
    rows, cols = np.indices(w.shape)
    offsets = rnn.packed_gate_offsets(gates, K, inputs, rows.ravel(), cols.ravel())
    assert np.array_equal(packed.reshape(-1)[offsets], w.ravel())
    # everything else is padding, and zero
    rest = np.ones(packed.size, bool)
    rest[offsets] = False
    assert not packed.reshape(-1)[rest].any()
    # it is the packed operand of x @ W^T with each gate padded to 16-unit blocks
    kp = -(-K // 16) * 16
    padded = np.zeros((gates, kp, inputs), np.float32)
    padded[:, :K] = w.reshape(gates, K, inputs)
    want = gemm.pack_matmul_operand(padded.reshape(gates * kp, inputs), transpose=True).data
    assert np.array_equal(packed, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,K,n", [(1, 1, 1), (16, 16, 32), (37, 50, 45), (5, 300, 17)])
def test_matmul_into_packed_output(rng, isa, m, K, n):
    """out= writes x.T @ y in packed form; accumulate=True adds to what is there."""
    x = rng.standard_normal((K, m)).astype(np.float32)
    y = rng.standard_normal((K, n)).astype(np.float32)
    init = rng.standard_normal((m, n)).astype(np.float32)
    exact = x.T.astype(np.float64) @ y
    out = gemm.pack_matmul_operand(init)
    got = gemm.matmul(x, y, transpose_x=True, out=out, accumulate=True, isa=isa)
    assert got is out
    assert np.array_equal(out.data, gemm.pack_matmul_operand(_unpack(out)).data)   # padding still zero
    assert_close(_unpack(out), exact + init)
    fresh = gemm.pack_matmul_operand(np.full((m, n), np.nan, np.float32))
    fresh.data[...] = np.nan                         # overwritten, padding included
    gemm.matmul(x, gemm.pack_matmul_operand(y), transpose_x=True, out=fresh, isa=isa)
    assert_close(_unpack(fresh), exact)
    assert not np.isnan(fresh.data).any()


def _unpack(packed):
    """The (K, n) matrix a PackedMatrix holds."""
    K, n = packed.shape
    d = packed.data
    return np.ascontiguousarray(d.transpose(1, 2, 0, 3).reshape(d.shape[1] * 16, d.shape[0] * 16)[:K, :n])


@pytest.mark.parametrize("K,n", [(1, 1), (16, 48), (33, 20)])
def test_transpose_packed(rng, K, n):
    y = rng.standard_normal((K, n)).astype(np.float32)
    t = gemm.transpose_packed(gemm.pack_matmul_operand(y), n_threads=max_threads())
    assert t.shape == (n, K)
    assert np.array_equal(t.data, gemm.pack_matmul_operand(np.ascontiguousarray(y.T)).data)


def test_matmul_packed_output_bad_input(rng):
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    out = gemm.pack_matmul_operand(np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match="accumulate=True adds to `out`, so out must be given"):
        gemm.matmul(x, y, accumulate=True)
    with pytest.raises(ValueError, match=r"out is a packed \(8, 3\) matrix, the product is \(4, 3\)"):
        gemm.matmul(x[:5, :4], y, transpose_x=True, out=out)
    with pytest.raises(TypeError, match="out must be a PackedMatrix, got ndarray"):
        gemm.matmul(x, y, out=np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match="out= takes one right-hand operand and no bias"):
        gemm.matmul(x, y, out=out, bias=np.zeros(3, np.float32))
    packed_y = gemm.pack_matmul_operand(y)
    with pytest.raises(ValueError, match="out= overlaps y"):
        gemm.matmul(np.eye(5, dtype=np.float32), packed_y, out=packed_y)
    with pytest.raises(TypeError, match="expected a PackedMatrix"):
        gemm.transpose_packed(y)


@pytest.mark.parametrize("cell", list(GATES))
def test_prepare_is_forward_only(rng, cell):
    """Inference never makes the backward operands; a backward makes them once, equal to the
    transposes of the forward operands, and the results do not depend on when they were made."""
    g = GATES[cell]
    T, N, C, K = 3, 4, 7, 20
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    w_ih = rng.uniform(-0.4, 0.4, (g * K, C)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (g * K, K)).astype(np.float32)
    fwd, bwd = getattr(rnn, f"{cell}_forward"), getattr(rnn, f"{cell}_backward")
    w = getattr(rnn, f"prepare_{cell}")(w_ih, w_hh)
    fwd(x, weights=w)
    assert w.w_ih_p is None and w.recurrent_t is None
    cache = fwd(x, weights=w, train=True)[-1]
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    first = bwd(dy, cache)
    w_ih_p, rec_t = w.backward_operands()
    assert w.w_ih_p is w_ih_p and w.backward_operands()[1] is rec_t   # made once
    assert np.array_equal(w_ih_p.data, gemm.transpose_packed(w.w_ih_t).data)
    again = bwd(dy, fwd(x, w_ih, w_hh, train=True)[-1])               # functional path, raw weights
    for a, b in zip(first, again):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (3, 16, 16, 16), (2, 5, 33, 20)], ids=str)
def test_weight_grads_accumulate_in_kernel_layout(rng, isa, cell, size):
    """weight_grads= adds the same gradients as the PyTorch-layout ones, packed, to what is there."""
    T, N, C, K = size
    g = GATES[cell]
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    w_ih = rng.uniform(-0.4, 0.4, (g * K, C)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (g * K, K)).astype(np.float32)
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    fwd, bwd = getattr(rnn, f"{cell}_forward"), getattr(rnn, f"{cell}_backward")
    cache = fwd(x, w_ih, w_hh, train=True, isa=isa)[-1]
    plain = bwd(dy, cache)
    start_ih = rnn.pack_gate_weights(rng.standard_normal(w_ih.shape).astype(np.float32), g)
    start_hh = rnn.pack_gate_weights(rng.standard_normal(w_hh.shape).astype(np.float32), g)
    into = (start_ih.copy(), start_hh.copy())
    got = bwd(dy, cache, weight_grads=into)
    assert got[1] is None and got[2] is None
    for a, b in zip(got[3:], plain[3:]):
        assert np.array_equal(a, b)
    assert_close(rnn.unpack_gate_weights(into[0], g, K, C),
                 plain[1] + rnn.unpack_gate_weights(start_ih, g, K, C))
    assert_close(rnn.unpack_gate_weights(into[1], g, K, K),
                 plain[2] + rnn.unpack_gate_weights(start_hh, g, K, K))
    for a, inputs in zip(into, (C, K)):   # padding stays zero
        assert np.array_equal(a, rnn.pack_gate_weights(rnn.unpack_gate_weights(a, g, K, inputs), g))


def test_weight_grads_bad_input(rng):
    x = rng.uniform(-1, 1, (2, 3, 5)).astype(np.float32)
    w_ih = rng.uniform(-0.4, 0.4, (4 * 7, 5)).astype(np.float32)
    w_hh = rng.uniform(-0.4, 0.4, (4 * 7, 7)).astype(np.float32)
    cache = rnn.lstm_forward(x, w_ih, w_hh, train=True)[-1]
    dy = np.ones((2, 3, 7), np.float32)
    good = (np.zeros(rnn.packed_gate_shape(4, 7, 5), np.float32), np.zeros(rnn.packed_gate_shape(4, 7, 7), np.float32))
    with pytest.raises(ValueError, match=r"weight_grads dW_ih must be a writeable C-contiguous float32 array of shape "
                                         r"\(4, 1, 16, 16\)"):
        rnn.lstm_backward(dy, cache, weight_grads=(np.zeros((28, 5), np.float32), good[1]))
    ro = good[1].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="weight_grads dW_hh must be a writeable"):
        rnn.lstm_backward(dy, cache, weight_grads=(good[0], ro))
    with pytest.raises(ValueError, match="float64"):
        rnn.lstm_backward(dy, cache, weight_grads=(good[0].astype(np.float64), good[1]))
    with pytest.raises(TypeError, match="weight_grads must be a pair"):
        rnn.lstm_backward(dy, cache, weight_grads=good[0])
    with pytest.raises(ValueError, match="overlap"):
        rnn.lstm_backward(dy, cache, weight_grads=(good[1], good[1]))
    with pytest.raises(ValueError, match=r"pack_gate_weights: expected a \(4K, inputs\) array, got \(5, 3\)"):
        rnn.pack_gate_weights(np.zeros((5, 3), np.float32), 4)
    for gates, exc in ((0, ValueError), (-4, ValueError), ("4", TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="pack_gate_weights: gates must be"):
            rnn.pack_gate_weights(np.zeros((8, 5), np.float32), gates)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 8\), got values from 8 to 100"):
        rnn.packed_gate_offsets(4, 2, 5, [8, 100], [0, 0])
    with pytest.raises(ValueError, match=r"cols must lie in \[0, 5\), got values from -1 to -1"):
        rnn.packed_gate_offsets(4, 2, 5, [0], [-1])
    with pytest.raises(TypeError, match="rows must be integers, got dtype float64"):
        rnn.packed_gate_offsets(4, 2, 5, [0.5], [0])
    with pytest.raises(ValueError, match="K must be >= 1"):
        rnn.packed_gate_offsets(4, 0, 5, [0], [0])
    with pytest.raises(ValueError, match="weights_from_packed: cell must be one of lstm, gru, rnn, got 'LSTM'"):
        rnn.weights_from_packed("LSTM", good[0], good[1], np.zeros(28, np.float32), np.zeros(28, np.float32), 5, 7)
    huge = rnn.prepare_lstm(np.zeros((4096, 1), np.float32), np.zeros((4096, 1024), np.float32))
    with pytest.raises(ValueError, match="lstm_forward: the buffers of a sequence x .* would need"):
        rnn.lstm_forward(np.broadcast_to(np.float32(0), (10**7, 1, 1)), weights=huge)
    with pytest.raises(ValueError, match=r"unpack_gate_weights: expected an array of shape \(4, 1, 16, 16\)"):
        rnn.unpack_gate_weights(np.zeros((4, 2, 16, 16), np.float32), 4, 7, 5)
    with pytest.raises(ValueError, match="weights_from_packed: w_hh must be a C-contiguous float32 array"):
        rnn.weights_from_packed("lstm", good[0], np.zeros((4, 2, 16, 16), np.float32), np.zeros(28, np.float32),
                                np.zeros(28, np.float32), 5, 7)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_layer_eval_packs_nothing(monkeypatch, rng, cls):
    """An eval-mode forward wraps the parameters: no packing and no transposes run."""
    layer = getattr(nn, cls)(9, 20, num_layers=2, bidirectional=True, seed=1).eval()
    x = rng.uniform(-1, 1, (4, 3, 9)).astype(np.float32)
    before = layer(x)

    def refuse(*args, **kwargs):
        raise AssertionError("an eval forward re-packed weights")

    monkeypatch.setattr(rnn, "pack_gate_weights", refuse)
    monkeypatch.setattr(rnn, "transpose_packed", refuse)
    monkeypatch.setattr(gemm, "pack_matmul_operand", refuse)
    assert np.array_equal(layer(x), before)


@needs_torch
@pytest.mark.parametrize("cls,cell", [("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn")])
def test_layer_training_steps_match_torch(rng, cls, cell):
    """Three SGD steps (momentum, weight decay) on weights kept in the kernels' layout, against
    torch.nn.LSTM/GRU/RNN + torch.optim.SGD: outputs and updated weights (in PyTorch's layout)."""
    import torch

    layer = getattr(nn, cls)(7, 20, num_layers=2, bidirectional=True, seed=2)
    twin = _peers.recurrent(torch, cell, layer.state(), num_layers=2, bidirectional=True)
    opt = nn.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        x = rng.uniform(-1, 1, (5, 3, 7)).astype(np.float32)
        dy = rng.uniform(-1, 1, (5, 3, 40)).astype(np.float32)
        layer.zero_grad()
        y = layer(x)
        layer.backward(dy)
        opt.step()
        topt.zero_grad()
        ty, _ = twin(torch.from_numpy(x))
        ty.backward(torch.from_numpy(dy))
        topt.step()
        assert_close(y, ty.detach().numpy())
    state = layer.state()
    for name, p in twin.named_parameters():
        assert_close(state[name], p.detach().numpy())
    assert set(layer.state_dict()) == set(twin.state_dict())


def test_layer_fault_and_prune_views_use_logical_indices(rng):
    """Faults and pruning index the weights in PyTorch's layout; the flip or the zero lands on
    that logical element of the packed storage."""
    from dlcpu.faults import sites

    model = nn.Sequential(nn.LSTM(5, 20), nn.LastTimeStep(), nn.Linear(20, 3))
    ref = sites.find_layer(model, "0")
    weights = {w.param: w for w in sites.layer_weights(ref)}
    w = weights["weight_hh_l0"]
    assert w.shape == (80, 20)
    before = model.state()["0.weight_hh_l0"]
    w.storage.reshape(-1)[w.offsets([[45, 17]])] *= -1.0
    after = model.state()["0.weight_hh_l0"]
    changed = np.argwhere(after != before)
    assert changed.tolist() == [[45, 17]]
    report = nn.prune(model, 0.5)
    assert report[0].shape == (80, 5) and report[1].shape == (80, 20)
    assert abs(report[0].zeros / report[0].size - 0.5) < 0.01
