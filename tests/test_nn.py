"""dlcpu.nn: layer gradients, a whole block against PyTorch, SGD, save/load, training on digits."""
import json
import os

import numpy as np
import pytest
from conftest import assert_close, needs_torch

import dlcpu
from dlcpu import _peers, nn, train


def test_linear_matches_numpy(rng):
    lin = nn.Linear(20, 7, seed=3)
    x = rng.standard_normal((5, 20)).astype(np.float32)
    y = lin(x)
    assert_close(y, x.astype(np.float64) @ lin.weight.data.T + lin.bias.data)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = lin.backward(dy)
    assert_close(dx, dy.astype(np.float64) @ lin.weight.data)
    assert_close(lin.weight.grad, dy.T.astype(np.float64) @ x)
    assert_close(lin.bias.grad, dy.sum(0))


def test_softmax_cross_entropy(rng):
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 5
    labels = rng.integers(0, 10, 6)
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert abs(loss + np.log(p[np.arange(6), labels]).mean()) < 1e-6
    onehot = np.eye(10)[labels]
    assert_close(grad, (p - onehot) / 6)
    with pytest.raises(ValueError, match="labels must lie in"):
        nn.softmax_cross_entropy(logits, np.full(6, 10))


def make_block_net(seed=0):
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False, seed=seed), nn.BatchNorm2d(16, relu=True),
                         nn.BasicBlock(16, 32, 2, seed=seed + 5), nn.MaxPool2d(2), nn.AvgPool2d(1),
                         nn.GlobalAvgPool(), nn.Linear(32, 4, seed=seed + 9))


def test_network_gradient_by_finite_differences(rng):
    """Directional derivative of the loss along a random input direction."""
    net = make_block_net()
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 4)

    def loss_at(xv):
        return nn.softmax_cross_entropy(net(dlcpu.to_blocked(xv)), labels)[0]

    _, g = nn.softmax_cross_entropy(net(dlcpu.to_blocked(x)), labels)
    dx = net.backward(g).numpy()
    v = rng.standard_normal(x.shape).astype(np.float32)
    eps = 1e-2
    fd = (loss_at(x + eps * v) - loss_at(x - eps * v)) / (2 * eps)
    analytic = float((dx.astype(np.float64) * v).sum())
    assert abs(fd - analytic) <= 2e-2 * abs(analytic) + 1e-4, (fd, analytic)


@needs_torch
def test_network_against_torch(rng):
    """The same network and weights in PyTorch: logits, input gradient and parameter gradients."""
    import torch

    net = make_block_net()
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 4)
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        _peers.basic_block(torch, 16, 32, 2),
        torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 4))
    tparams = list(tnet.parameters())
    ours = net.parameters()
    assert len(ours) == len(tparams)
    with torch.no_grad():
        for p, tp in zip(ours, tparams):
            if p.data.ndim == 6:  # blocked conv weight
                tp.copy_(torch.from_numpy(dlcpu.unblock_weights(dlcpu.BlockedTensor(p.data, tuple(tp.shape), "weight"))))
            else:
                tp.copy_(torch.from_numpy(p.data[: tp.numel()].reshape(tp.shape)))
    logits = net(dlcpu.to_blocked(x))
    xt = torch.from_numpy(x).requires_grad_()
    tl = tnet(xt)
    assert_close(logits, tl.detach().numpy())
    _, g = nn.softmax_cross_entropy(logits, labels)
    dx = net.backward(g)
    torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels)).backward()
    assert_close(dx.numpy(), xt.grad.numpy())
    for p, tp in zip(ours, tparams):
        grad = p.grad
        if grad.ndim == 6:
            grad = dlcpu.unblock_weights(dlcpu.BlockedTensor(grad, tuple(tp.shape), "weight"))
        else:
            grad = grad[: tp.numel()].reshape(tp.shape)
        assert_close(grad, tp.grad.numpy())


@needs_torch
def test_sgd_matches_torch(rng):
    import torch

    w0 = rng.standard_normal(5).astype(np.float32)
    p = nn.Parameter(w0.copy())
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        g = rng.standard_normal(5).astype(np.float32)
        p.grad[:] = g
        opt.step()
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    assert_close(p.data, tp.detach().numpy())


def test_layer_shape_errors_name_the_layer():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2d\(4->8.*input has 8 channels .* expects 4"):
        net(dlcpu.to_blocked(np.zeros((1, 3, 9, 9), np.float32)))
    with pytest.raises(ValueError, match=r"Linear\(16->2\): expected a \(N, 16\) array"):
        nn.Linear(16, 2)(np.zeros((1, 8), np.float32))


def test_save_load_round_trip(tmp_path, rng):
    net = make_block_net(seed=4)
    net.train()
    net(dlcpu.to_blocked(rng.standard_normal((4, 3, 8, 8)).astype(np.float32)))  # move BN stats
    path = str(tmp_path / "m.npz")
    nn.save(net, path)
    again = nn.load(path)
    x = dlcpu.to_blocked(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    assert np.array_equal(net.eval()(x), again.eval()(x))
    assert json.dumps(again.config()) == json.dumps(net.config())


def test_load_errors(tmp_path):
    path = str(tmp_path / "m.npz")
    nn.save(nn.Sequential(nn.Linear(3, 2)), path)
    with np.load(path) as f:
        files = dict(f.items())
    files["__format_version__"] = np.int64(99)
    np.savez(str(tmp_path / "v99.npz"), **files)
    with pytest.raises(ValueError, match="format version 99, this dlcpu reads version 1"):
        nn.load(str(tmp_path / "v99.npz"))
    files["__format_version__"] = np.int64(1)
    files["param:0.weight"] = np.zeros((5, 5), np.float32)
    np.savez(str(tmp_path / "shape.npz"), **files)
    with pytest.raises(ValueError, match=r"'0.weight' for Linear\(3->2\) has shape \(5, 5\), expected \(2, 3\)"):
        nn.load(str(tmp_path / "shape.npz"))
    with open(tmp_path / "junk.npz", "wb") as f:
        f.write(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable dlcpu model file"):
        nn.load(str(tmp_path / "junk.npz"))
    with pytest.raises(ValueError, match="not a readable dlcpu model file"):
        nn.load(str(tmp_path / "missing.npz"))


def test_train_digits_reaches_97_percent(tmp_path):
    out = str(tmp_path / "digits.npz")
    result = train.train_digits(epochs=12, out=out)
    assert result.test_accuracy >= 0.97
    data = train.load_digits_split(0)
    assert train.evaluate(nn.load(out), data.x_test, data.y_test) == pytest.approx(result.test_accuracy)


def test_divergence_stops_cleanly_and_keeps_checkpoint(tmp_path):
    out = str(tmp_path / "digits.npz")
    train.train_digits(epochs=1, out=out)
    before = os.path.getmtime(out)
    with pytest.raises(train.TrainingDiverged, match="loss is nan|loss is inf"):
        train.train_digits(epochs=3, lr=1e6, out=out)
    nn.load(out)  # still a readable model
    assert os.path.getmtime(out) >= before


# ------------------------------------------------------------------------------ recurrent layers
@needs_torch
@pytest.mark.parametrize("cls,tcls", [("LSTM", "LSTM"), ("GRU", "GRU"), ("RNN", "RNN")])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_layers_match_torch(rng, cls, tcls, bidirectional, batch_first):
    import torch

    layer = getattr(nn, cls)(6, 10, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, seed=3)
    tlayer = getattr(torch.nn, tcls)(6, 10, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    with torch.no_grad():
        for name, p in layer.own_parameters().items():
            getattr(tlayer, name).copy_(torch.from_numpy(p.data))
    x = rng.uniform(-1, 1, (4, 5, 6) if batch_first else (5, 4, 6)).astype(np.float32)
    y = layer(x)
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = tlayer(xt)
    assert_close(y, yt.detach().numpy())
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    dx = layer.backward(dy)
    yt.backward(torch.from_numpy(dy))
    assert_close(dx, xt.grad.numpy())
    for name, p in layer.own_parameters().items():
        assert_close(p.grad, getattr(tlayer, name).grad.numpy())


def test_recurrent_save_load_and_errors(tmp_path, rng):
    model = nn.Sequential(nn.GRU(8, 12, num_layers=2, bidirectional=True), nn.LastTimeStep(), nn.Linear(24, 3))
    x = rng.uniform(-1, 1, (7, 2, 8)).astype(np.float32)
    path = str(tmp_path / "r.npz")
    nn.save(model, path)
    assert np.array_equal(nn.load(path).eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match=r"layer 0 \(GRU\(8->12, layers=2, bidirectional\)\).*expected a \(T, N, 8\) array, got shape \(7, 2, 5\)"):
        model(x[:, :, :5])
    with pytest.raises(ValueError, match="backward needs a forward in training mode"):
        nn.LSTM(3, 4).eval().backward(np.zeros((2, 1, 4), np.float32))


def test_train_digits_rnn_reaches_95_percent(tmp_path):
    out = str(tmp_path / "rnn.npz")
    result = train.train_digits(epochs=20, lr=0.1, weight_decay=0.0, model="rnn", out=out)
    assert result.test_accuracy >= 0.95
    data = train.load_digits_split(0)
    assert train.evaluate(nn.load(out), data.x_test, data.y_test, inputs=train.row_sequence) == pytest.approx(result.test_accuracy)
