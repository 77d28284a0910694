"""The sequence model: Embedding, the blocked vocabulary cross-entropy and nn.GNMT against their
PyTorch twins (one training step: loss, every gradient, the loss after the step), the float64
loss, block boundaries, save/load, and bad input (token ids out of range above all)."""
import numpy as np
import pytest
from conftest import assert_close, needs_torch

from dlcpu import _peers, nn
from dlcpu.nn import sequence


def tokens(rng, vocab, shape):
    return rng.integers(0, vocab, shape)


@needs_torch
@pytest.mark.parametrize("layers", [2, 3, 4])
def test_training_step_matches_torch(rng, layers):
    import torch

    model = nn.gnmt(vocab=300, hidden=32, layers=layers, seed=1)
    twin = _peers.gnmt_from(torch, model)
    assert set(model.state_dict()) == set(twin.state_dict())
    opt = nn.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        ids, targets = tokens(rng, 300, (6, 4)), tokens(rng, 300, (6, 4))
        loss = model.loss(ids, targets)
        model.backward()
        tloss = twin.loss(torch.from_numpy(ids), torch.from_numpy(targets))
        topt.zero_grad()
        tloss.backward()
        assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
        grads = model.grad_dict()
        for k, p in twin.named_parameters():
            assert_close(grads[k], p.grad.numpy(), "model_f32")
        opt.step()
        opt.zero_grad()
        topt.step()
    model.eval()
    twin.eval()
    ids = tokens(rng, 300, (5, 3))
    with torch.no_grad():
        assert_close(model(ids), twin(torch.from_numpy(ids)).numpy(), "model_f32")


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 100])
def test_blocked_loss_equals_the_dense_one(rng, rows):
    """The fused loss over blocks of BLOCK_ROWS tokens against softmax_cross_entropy on the
    dense logits (float64), with its gradients, and a dloss scale."""
    layer = nn.LinearCrossEntropy(24, 97, seed=2)
    h = rng.standard_normal((rows, 24)).astype(np.float32)
    t = rng.integers(0, 97, rows)
    loss = layer.loss(h, t)
    logits = h.astype(np.float64) @ layer.weight.data.T + layer.bias.data
    want, dlogits = nn.softmax_cross_entropy(logits, t)
    assert abs(loss - want) <= 1e-6 * abs(want)
    dh = layer.backward(2.0)
    assert_close(dh, 2.0 * dlogits.astype(np.float64) @ layer.weight.data)
    assert_close(layer.weight.grad, 2.0 * dlogits.T.astype(np.float64) @ h)
    assert_close(layer.bias.grad, 2.0 * dlogits.sum(axis=0))
    assert sequence.BLOCK_ROWS == 32


def test_eval_loss_keeps_nothing(rng):
    layer = nn.LinearCrossEntropy(8, 10).eval()
    layer.loss(rng.standard_normal((5, 8)).astype(np.float32), np.arange(5))
    with pytest.raises(RuntimeError, match="backward called before a training-mode loss"):
        layer.backward()


def test_embedding_scatters_repeated_ids(rng):
    emb = nn.Embedding(10, 4, seed=3)
    ids = np.array([[1, 1], [9, 1]])
    y = emb(ids)
    assert np.array_equal(y, emb.weight.data[ids])
    dy = rng.standard_normal((2, 2, 4)).astype(np.float32)
    assert emb.backward(dy) is None
    want = np.zeros((10, 4), np.float32)
    for (i, j), tok in np.ndenumerate(ids):
        want[tok] += dy[i, j]
    np.testing.assert_allclose(emb.weight.grad, want, rtol=1e-6)


def test_save_load_round_trip(tmp_path, rng):
    model = nn.gnmt(vocab=50, hidden=16, layers=3, seed=4).eval()
    nn.save(model, str(tmp_path / "g.npz"))
    back = nn.load(str(tmp_path / "g.npz")).eval()
    ids = tokens(rng, 50, (4, 2))
    assert np.array_equal(model(ids), back(ids))
    assert model.loss(ids, ids) == back.loss(ids, ids)


def test_bad_input(rng):
    model = nn.gnmt(vocab=50, hidden=16, layers=2)
    ids = tokens(rng, 50, (4, 2))
    bad = ids.copy()
    bad[2, 1] = 50
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 50\) \(the vocabulary size\), got 50 at index \(2, 1\)"):
        model(bad)
    bad[2, 1] = -1
    with pytest.raises(ValueError, match=r"got -1 at index \(2, 1\)"):
        model.loss(bad, ids)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 50\)"):
        model.loss(ids, ids + 49)
    with pytest.raises(TypeError, match="ids must be an integer array of token ids, got dtype float64"):
        model(ids.astype(np.float64))
    with pytest.raises(ValueError, match=r"ids must be 2-d, got shape \(8,\)"):
        model(ids.reshape(-1))
    with pytest.raises(ValueError, match=r"targets have shape \(4, 1\), ids \(4, 2\)"):
        model.loss(ids, ids[:, :1])
    with pytest.raises(ValueError, match="ids is empty"):
        model(np.zeros((0, 2), np.int64))
    emb = nn.Embedding(5, 3)
    with pytest.raises(ValueError, match=r"got 7 at index \(1,\)"):
        emb(np.array([0, 7, 9]))
    emb(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4\), but the forward output has shape \(2, 3\)"):
        emb.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="call loss"):
        nn.LinearCrossEntropy(3, 4)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="hidden must be even"):
        nn.gnmt(hidden=15)
    with pytest.raises(ValueError, match="layers must be >= 2"):
        nn.gnmt(layers=1)
    layer = nn.LinearCrossEntropy(3, 4)
    layer.loss(np.zeros((2, 3), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="dloss must be finite"):
        layer.backward(float("nan"))


def test_backward_once_per_loss(rng):
    """backward() belongs to the loss() just before it: a forward() in between (the layers now
    hold another batch) or a second backward is refused, as PyTorch frees its graph."""
    model = nn.gnmt(vocab=20, hidden=8, layers=3)
    ids = tokens(rng, 20, (3, 2))
    model.loss(ids, ids)
    model(tokens(rng, 20, (3, 2)))
    with pytest.raises(RuntimeError, match="needs a training-mode loss"):
        model.backward()
    model.loss(ids, ids)
    model.backward()
    with pytest.raises(RuntimeError, match="needs a training-mode loss"):
        model.backward()
    layer = nn.LinearCrossEntropy(3, 4)
    layer.loss(np.zeros((2, 3), np.float32), np.array([0, 1]))
    for bad in ("abc", None, True, np.array([2.0])):
        with pytest.raises(TypeError, match="dloss must be a real number"):
            layer.backward(bad)
    layer.backward(2)
    with pytest.raises(RuntimeError, match="or twice after one"):
        layer.backward()
