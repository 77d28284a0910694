"""dlcpu.nn: layer gradients, a whole block against PyTorch, SGD, save/load, argument checks,
training on digits."""
import hashlib
import json
import os
import re

import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

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


@pytest.mark.slow
def test_train_digits_reaches_97_percent(tmp_path):
    out = str(tmp_path / "digits.npz")
    result = train.train_digits(epochs=12, out=out)
    assert result.test_accuracy >= 0.97
    data = train.load_digits_split(0)
    assert train.evaluate(nn.load(out), data.x_test, data.y_test) == pytest.approx(result.test_accuracy)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def small_digits(n=256):
    data = train.load_digits_split(0)
    return train.DigitsData(data.x_train[:n], data.y_train[:n], data.x_test[:64], data.y_test[:64])


def test_divergence_stops_cleanly_and_keeps_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 is saved; the loss turns NaN in epoch 2: TrainingDiverged, and the file is still
    byte for byte epoch 1's checkpoint, with no temporary file beside it."""
    out = str(tmp_path / "digits.npz")
    saved = {}
    calls = {"n": 0}
    real_loss = nn.softmax_cross_entropy
    steps_per_epoch = 256 // 64

    def loss_turning_nan(logits, labels):
        calls["n"] += 1
        loss, grad = real_loss(logits, labels)
        return (float("nan") if calls["n"] > steps_per_epoch + 1 else loss), grad

    def on_epoch(stats):
        saved[stats.epoch] = _digest(out)

    monkeypatch.setattr(train.nn, "softmax_cross_entropy", loss_turning_nan)
    with pytest.raises(train.TrainingDiverged, match=r"loss is nan at epoch 2, step 2.*last good model is in"):
        train.train_digits(epochs=3, out=out, data=small_digits(), on_epoch=on_epoch)
    assert list(saved) == [1]
    assert _digest(out) == saved[1]
    assert os.listdir(tmp_path) == ["digits.npz"]
    nn.load(out)  # still a readable model


def test_diverging_first_epoch_leaves_an_existing_file_untouched(tmp_path):
    out = str(tmp_path / "digits.npz")
    nn.save(nn.digits_resnet(), out)
    before = _digest(out)
    with pytest.raises(train.TrainingDiverged, match="loss is nan|loss is inf"):
        train.train_digits(epochs=3, lr=1e6, out=out)  # diverges within the first epoch
    assert _digest(out) == before and os.listdir(tmp_path) == ["digits.npz"]


def test_train_refuses_an_unwritable_out_before_training(tmp_path):
    calls = []
    for bad, match in ((str(tmp_path / "missing" / "m.npz"), "does not exist"), (str(tmp_path), "is a directory")):
        with pytest.raises(ValueError, match=match):
            train.train_digits(epochs=1, out=bad, data=small_digits(), on_step=lambda *a: calls.append(a))
    assert calls == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_save_leaves_no_temporary_file(tmp_path, monkeypatch, interrupt):
    out = str(tmp_path / "m.npz")
    model = nn.Sequential(nn.Linear(3, 2))
    nn.save(model, out)
    before = _digest(out)

    def savez_interrupted(f, **arrays):
        f.write(b"partial")
        raise interrupt("interrupted mid-write")

    monkeypatch.setattr(np, "savez", savez_interrupted)
    with pytest.raises(interrupt):
        nn.save(nn.Sequential(nn.Linear(3, 2, seed=1)), out)
    assert os.listdir(tmp_path) == ["m.npz"] and _digest(out) == before


# ------------------------------------------------------------------------------ recurrent layers
@needs_torch
@pytest.mark.parametrize("cls,cell", [("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn")])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_layers_match_torch(rng, cls, cell, bidirectional, batch_first):
    import torch

    layer = getattr(nn, cls)(6, 10, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, seed=3)
    tlayer = _peers.recurrent(torch, cell, layer.state(),
                              num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
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
        assert_close(layer.to_torch_layout(name, p.grad), getattr(tlayer, name).grad.numpy())


def test_recurrent_save_load_and_errors(tmp_path, rng):
    model = nn.Sequential(nn.GRU(8, 12, num_layers=2, bidirectional=True), nn.LastTimeStep(), nn.Linear(24, 3))
    x = rng.uniform(-1, 1, (7, 2, 8)).astype(np.float32)
    path = str(tmp_path / "r.npz")
    nn.save(model, path)
    assert np.array_equal(nn.load(path).eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match=r"layer 0 \(GRU\(8->12, layers=2, bidirectional\)\).*expected a \(T, N, 8\) array, got shape \(7, 2, 5\)"):
        model(x[:, :, :5])
    lstm = nn.LSTM(3, 4).eval()
    lstm(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(RuntimeError, match="backward needs a forward in training mode"):
        lstm.backward(np.zeros((2, 1, 4), np.float32))


@pytest.mark.slow
def test_train_digits_rnn_reaches_95_percent(tmp_path):
    out = str(tmp_path / "rnn.npz")
    result = train.train_digits(epochs=20, lr=0.1, weight_decay=0.0, model="rnn", out=out)
    assert result.test_accuracy >= 0.95
    data = train.load_digits_split(0)
    assert train.evaluate(nn.load(out), data.x_test, data.y_test, inputs=train.row_sequence) == pytest.approx(result.test_accuracy)


# ------------------------------------------------------------------------------ argument checks
BAD_LAYERS = [
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "Conv2d: in_channels must be >= 1, got 0"),
    (lambda: nn.Conv2d(3, 0, 3), ValueError, "Conv2d: out_channels must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 0), ValueError, "Conv2d: kernel_size must be >= 1"),
    (lambda: nn.Conv2d(3, 4, (3, 0)), ValueError, "Conv2d: kernel_size must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 3.0), TypeError, "Conv2d: kernel_size must be an int or an"),
    (lambda: nn.Conv2d(3, 4, 3, stride=0), ValueError, "Conv2d: stride must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 3, stride=(1, 2, 3)), TypeError, "Conv2d: stride must be an int or an"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, "Conv2d: padding must be >= 0"),
    (lambda: nn.Conv2d(3, 4, 3, bias="yes"), TypeError, "Conv2d: bias must be True or False"),
    (lambda: nn.Conv2d(True, 4, 3), TypeError, "Conv2d: in_channels must be an int"),
    (lambda: nn.BatchNorm2d(0), ValueError, "BatchNorm2d: num_features must be >= 1"),
    (lambda: nn.BatchNorm2d(4, eps=0), ValueError, "BatchNorm2d: eps must be > 0"),
    (lambda: nn.BatchNorm2d(4, momentum=1.5), ValueError, "BatchNorm2d: momentum must be >= 0.0 and <= 1.0"),
    (lambda: nn.MaxPool2d(0), ValueError, "MaxPool2d: kernel_size must be >= 1"),
    (lambda: nn.MaxPool2d(2, stride=0), ValueError, "MaxPool2d: stride must be >= 1"),
    (lambda: nn.AvgPool2d(2, padding=2), ValueError, "AvgPool2d: padding must be at most half the kernel size"),
    (lambda: nn.Linear(0, 3), ValueError, "Linear: in_features must be >= 1, got 0"),
    (lambda: nn.Linear(3, 0), ValueError, "Linear: out_features must be >= 1"),
    (lambda: nn.Linear("3", 2), TypeError, "Linear: in_features must be an int"),
    (lambda: nn.BasicBlock(0, 16), ValueError, "BasicBlock: in_channels must be >= 1"),
    (lambda: nn.BasicBlock(16, 16, stride=0), ValueError, "BasicBlock: stride must be >= 1"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "Sequential: layer 1 must be a dlcpu.nn Module, got str"),
    (lambda: nn.LSTM(0, 4), ValueError, "LSTM: input_size must be >= 1"),
    (lambda: nn.GRU(3, 0), ValueError, "GRU: hidden_size must be >= 1"),
    (lambda: nn.RNN(3, 4, num_layers=0), ValueError, "RNN: num_layers must be >= 1"),
    (lambda: nn.RNN(3, 4, nonlinearity="sigmoid"), ValueError, "RNN: nonlinearity must be 'tanh' or 'relu'"),
    (lambda: nn.LSTM(3, 4, bidirectional=2), TypeError, "LSTM: bidirectional must be True or False"),
    (lambda: nn.LastTimeStep(batch_first=None), TypeError, "LastTimeStep: batch_first must be True or False"),
    (lambda: nn.SGD([np.zeros(3)]), TypeError, "SGD: params must be dlcpu.nn Parameters"),
]


@pytest.mark.parametrize("make,exc,match", BAD_LAYERS, ids=[b[2] for b in BAD_LAYERS])
def test_constructors_name_the_rule(make, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        make()


@pytest.mark.parametrize("layer,name", [
    (nn.Conv2d(3, 4, 3), "Conv2d"), (nn.BatchNorm2d(4), "BatchNorm2d"), (nn.ReLU(), "ReLU"),
    (nn.MaxPool2d(2), "MaxPool2d"), (nn.AvgPool2d(2), "AvgPool2d"), (nn.GlobalAvgPool(), "GlobalAvgPool"),
    (nn.Linear(3, 2), "Linear"), (nn.LSTM(3, 4), "LSTM"), (nn.GRU(3, 4), "GRU"), (nn.RNN(3, 4), "RNN"),
    (nn.LastTimeStep(), "LastTimeStep"), (nn.BasicBlock(16, 16), "BasicBlock"), (nn.digits_resnet(), "Linear"),
    (nn.Bottleneck(16, 4), "Bottleneck"), (nn.resnet18(), "Linear"),
], ids=str)
def test_backward_before_forward_is_a_clear_error(layer, name):
    with pytest.raises(RuntimeError, match=f"^{name}.backward called before forward$"):
        layer.backward(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_backward_checks_dy_shape(rng, cls, batch_first):
    layer = getattr(nn, cls)(3, 5, bidirectional=True, batch_first=batch_first)
    x = rng.uniform(-1, 1, (2, 4, 3)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 4, 10)
    for bad in ((2, 4, 5), (2, 3, 10), (4, 2, 10), (2, 4, 10, 1)):
        with pytest.raises(ValueError, match=re.escape(f"dy has shape {bad}, but the forward output has shape (2, 4, 10)")):
            layer.backward(np.zeros(bad, np.float32))
    assert layer.backward(np.zeros(y.shape, np.float32)).shape == x.shape


def test_linear_and_last_step_backward_check_dy_shape(rng):
    lin = nn.Linear(4, 3)
    lin(rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=re.escape("dy has shape (5, 4), but the forward output has shape (5, 3)")):
        lin.backward(np.zeros((5, 4), np.float32))
    last = nn.LastTimeStep()
    last(np.zeros((7, 2, 3), np.float32))
    with pytest.raises(ValueError, match=re.escape("dy has shape (7, 3), but the forward output has shape (2, 3)")):
        last.backward(np.zeros((7, 3), np.float32))


BAD_CONFIGS = [
    ([1, 2], "a layer must be described by a dict"),
    ({"type": "Transformer", "args": {}}, "unknown layer type 'Transformer'"),
    ({"type": 3}, "unknown layer type 3"),
    ({"type": "Linear", "args": [3, 2]}, "'args' of Linear must be a dict, got list"),
    ({"type": "Linear", "args": {"in_features": 3}}, "cannot build Linear from args"),
    ({"type": "Linear", "args": {"in_features": 0, "out_features": 2}}, "Linear: in_features must be >= 1"),
    ({"type": "Linear", "args": {"in_features": 3, "out_features": 2, "colour": 1}}, "unexpected keyword argument 'colour'"),
    ({"type": "Sequential", "args": {}}, "Sequential needs args {'modules': [layer configurations]}"),
    ({"type": "Sequential", "args": {"modules": [{"type": "ReLU"}, {"type": "Conv2d", "args": {}}]}}, "Sequential layer 1"),
]


@pytest.mark.parametrize("config,match", BAD_CONFIGS, ids=[b[1] for b in BAD_CONFIGS])
def test_malformed_configs_are_value_errors(config, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        nn.build(config)


def _rewrite(src, dst, **changes):
    with np.load(src) as f:
        files = dict(f.items())
    files.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del files[k]
    np.savez(dst, **files)
    return dst


def test_load_refuses_malformed_and_foreign_files(tmp_path):
    good = str(tmp_path / "m.npz")
    nn.save(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), good)
    cases = [
        (_rewrite(good, str(tmp_path / "cfg.npz"), __config__=np.array('{"type": "Sequential", "args": {"modules": 5}}')),
         "model configuration: Sequential needs args"),
        (_rewrite(good, str(tmp_path / "json.npz"), __config__=np.array("{not json")), "corrupt model configuration"),
        (_rewrite(good, str(tmp_path / "ver.npz"), __format_version__=np.array("one")), "format version is"),
        (_rewrite(good, str(tmp_path / "extra.npz"), **{"param:9.weight": np.zeros(3, np.float32)}),
         "entries the model does not use: 9.weight"),
        (_rewrite(good, str(tmp_path / "missing.npz"), **{"param:0.bias": None}), "no entry '0.bias' for Linear(3->2)"),
        (_rewrite(good, str(tmp_path / "noconfig.npz"), __config__=None), "no format version or configuration"),
    ]
    np.save(str(tmp_path / "plain.npy"), np.zeros(3))
    cases.append((str(tmp_path / "plain.npy"), "a single .npy array"))
    np.savez(str(tmp_path / "other.npz"), weights=np.zeros(3))
    cases.append((str(tmp_path / "other.npz"), "not a dlcpu model file"))
    for path, match in cases:
        with pytest.raises(ValueError, match=re.escape(match)):
            nn.load(path)
    nn.load(good)


def test_files_of_the_previous_layout_still_load(tmp_path):
    """A file written as the one-module nn.py wrote it (same format version 1, same keys)."""
    path = str(tmp_path / "old.npz")
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4, relu=True), nn.GlobalAvgPool(),
                          nn.Linear(4, 2))
    config = {"type": "Sequential", "args": {"modules": [
        {"type": "Conv2d", "args": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
                                    "bias": False, "seed": 0}},
        {"type": "BatchNorm2d", "args": {"num_features": 4, "eps": 1e-5, "momentum": 0.1, "relu": True}},
        {"type": "GlobalAvgPool", "args": {}},
        {"type": "Linear", "args": {"in_features": 4, "out_features": 2, "bias": True, "seed": 0}}]}}
    np.savez(path, __format_version__=np.int64(1), __config__=np.array(json.dumps(config)),
             **{f"param:{k}": v for k, v in model.state().items()})
    x = dlcpu.to_blocked(np.ones((2, 1, 5, 5), np.float32))
    assert np.array_equal(nn.load(path).eval()(x), model.eval()(x))


def test_sgd_rechecks_arrays_replaced_between_steps(rng):
    """SGD remembers which parameters' arrays it checked for its fused step; arrays replaced
    after a step (a strided gradient, a float64 velocity, read-only weights) are checked again
    and take the NumPy update, or its error, instead of the kernel."""
    w0 = rng.standard_normal(40).astype(np.float32)
    g = rng.standard_normal(40).astype(np.float32)
    p = nn.Parameter(w0.copy())
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    w, v = w0.astype(np.float64), np.zeros(40)

    def expect():
        nonlocal w, v
        v = 0.9 * v + g + 0.01 * w
        w = w - 0.1 * v
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)

    p.grad[...] = g
    opt.step()
    expect()
    p.grad = np.repeat(g, 2)[::2]              # a strided gradient: the NumPy loop
    opt.step()
    expect()
    opt.velocity[0] = opt.velocity[0].astype(np.float64)
    opt.step()
    expect()
    # the same arrays, fused and remembered, then made read-only: NumPy's error, not the kernel's
    p.grad, opt.velocity[0] = g.copy(), opt.velocity[0].astype(np.float32)
    opt.step()
    expect()
    assert opt._fusable_arrays[0] is not None
    p.data.flags.writeable = False
    with pytest.raises(ValueError, match="output array is read-only"):
        opt.step()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("size", [1, 17, 65536, 140000])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_sgd_fused_step_matches_the_formula(monkeypatch, rng, isa, size, weight_decay):
    """The fused update (pyx/kernels/optim_f32.h) on every ISA path against PyTorch's formula in
    float64, over sizes around its vector width and its 64K chunk; 1 and all threads give the
    same bits."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setenv("DLCPU_ISA", isa)

    p0 = rng.standard_normal(size).astype(np.float32)
    g = rng.standard_normal(size).astype(np.float32)
    results = []
    for threads in (1, max_threads()):
        p = nn.Parameter(p0.copy())
        opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=weight_decay)
        v64 = np.zeros(size)
        w64 = p0.astype(np.float64)
        with threadpool_limits(limits=threads, user_api="openmp"):
            for _ in range(3):
                p.grad[...] = g
                opt.step()
                v64 = 0.9 * v64 + g + weight_decay * w64
                w64 = w64 - 0.1 * v64
        np.testing.assert_allclose(p.data, w64, rtol=1e-5, atol=1e-6)
        results.append(p.data.copy())
    assert np.array_equal(results[0], results[1])
    if weight_decay == 0.0 and size > 1:   # an Inf weight keeps its update finite-sign, not NaN
        p = nn.Parameter(np.array([np.inf, 1.0] + [0.0] * (size - 2), np.float32))
        p.grad[...] = 1.0
        nn.SGD([p], lr=0.1, momentum=0.9).step()
        assert p.data[0] == np.inf and p.data[1] == np.float32(0.9)
