"""nn.resnet18 / nn.resnet50 against their PyTorch twin (torchvision's architecture and names):
state dicts both ways, one training step (loss, every gradient, post-step logits), eval logits,
the fused block end, save/load, and bad input."""
import numpy as np
import pytest
from conftest import needs_torch, randomize_batch_norms

import dlcpu
from dlcpu import _peers, nn

MODELS = {"resnet18": nn.resnet18, "resnet50": nn.resnet50}


def images(rng, n=2, size=64, channels=3):
    return rng.standard_normal((n, channels, size, size)).astype(np.float32)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@needs_torch
@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_matches_torch(rng, name):
    """One step at 64x64, batch 2, against the twin in float64 (the exact answer) and in float32
    (PyTorch's own rounding): loss, every gradient (grad_dict, PyTorch's names and layouts), the
    SGD update (momentum, weight decay) and the logits after it, in training mode.

    An untrained ResNet-50's backward is ill-conditioned (BatchNorm over 2x2 maps of two images,
    sixteen blocks deep): PyTorch's own fp32 gradients differ from float64 by about 1.3% there,
    against 6e-6 for ResNet-18.  So each result must be as close to float64 as PyTorch's fp32
    one is, within a factor of 3, plus the fp32 kernel bound."""
    import torch

    model = MODELS[name](num_classes=10, seed=3)
    t32 = _peers.resnet_from(torch, model)
    t64 = _peers.resnet_from(torch, model).double()
    x, labels = images(rng), np.array([3, 7])
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    twins = []
    for twin, xt in ((t32, torch.from_numpy(x)), (t64, torch.from_numpy(x).double())):
        logits = twin(xt)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        loss.backward()
        twins.append((twin, torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
                      logits.detach().numpy(), loss.item()))
    (_, opt32, logits32, loss32), (_, opt64, logits64, loss64) = twins

    def check(ours, fp32, exact, what):
        assert _rel(ours, exact) <= 3 * _rel(fp32, exact) + 1e-5, (what, _rel(ours, exact), _rel(fp32, exact))

    logits = model(x)
    loss, dlogits = nn.softmax_cross_entropy(logits, labels)
    assert model.backward(dlogits) is None
    check(logits, logits32, logits64, "logits")
    check(np.array([loss]), np.array([loss32]), np.array([loss64]), "loss")
    grads = model.grad_dict()
    g32 = {k: p.grad.numpy() for k, p in t32.named_parameters()}
    g64 = {k: p.grad.numpy() for k, p in t64.named_parameters()}
    assert set(grads) == set(g64)
    for k, exact in g64.items():
        check(grads[k], g32[k], exact, k)
    opt.step()
    opt32.step()
    opt64.step()
    after, a32, a64 = model.state_dict(), t32.state_dict(), t64.state_dict()
    for k, v in a64.items():
        if k.endswith("num_batches_tracked"):
            assert int(after[k]) == int(v) == 1
        else:
            check(after[k], a32[k].numpy(), v.numpy(), k)
    with torch.no_grad():
        check(model(x), t32(torch.from_numpy(x)).numpy(), t64(torch.from_numpy(x).double()).numpy(), "logits after")


@needs_torch
@pytest.mark.parametrize("name", list(MODELS))
def test_eval_logits_after_loading_a_torch_state_dict(rng, name):
    """A state dict made by the twin (trained statistics included) loads as it is; eval logits
    agree within 1e-4 relative."""
    import torch

    torch.manual_seed(0)
    a = MODELS[name](num_classes=10)
    twin = _peers.resnet(torch, a.args["block"], a.args["layers"], 10)
    randomize_batch_norms(torch, twin, 0.1)
    twin.eval()
    model = MODELS[name](num_classes=10, seed=9)
    result = model.load_state_dict(twin.state_dict())
    assert result == {"missing_keys": [], "unexpected_keys": []}
    model.eval()
    x = images(rng, 3)
    with torch.inference_mode():
        want = twin(torch.from_numpy(x)).numpy()
    got = model(x)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    # and back: this model's state dict loads into the twin and gives the same logits
    again = _peers.resnet_from(torch, model)
    with torch.inference_mode():
        assert np.max(np.abs(again(torch.from_numpy(x)).numpy() - want)) <= 1e-4 * np.max(np.abs(want))


def test_names_are_torchvisions():
    sd = nn.resnet50().state_dict()
    assert len(sd) == 320          # torchvision's resnet50().state_dict() has 320 entries
    for key, shape in (("conv1.weight", (64, 3, 7, 7)), ("bn1.running_var", (64,)),
                       ("layer1.0.conv1.weight", (64, 64, 1, 1)), ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
                       ("layer1.0.downsample.1.num_batches_tracked", ()), ("layer2.0.conv2.weight", (128, 128, 3, 3)),
                       ("layer4.2.bn3.bias", (2048,)), ("fc.weight", (1000, 2048)), ("fc.bias", (1000,))):
        assert sd[key].shape == shape, key
    assert len(nn.resnet18().state_dict()) == 122
    params = sum(p.size for k, p in sd.items() if "running" not in k and "num_batches" not in k)
    assert params == 25_557_032    # torchvision's parameter count for resnet50


def test_fused_block_end_equals_the_separate_steps(rng):
    """relu(bn3(h) + shortcut) in one pass gives what the three layers give one by one (the
    path taken when bn3 carries an output hook), forward and backward; the block's ReLU hooks
    still see its output."""
    x = images(rng, 2, 16)
    seen = []
    runs = []
    for hooked in (False, True):
        model = nn.resnet18(num_classes=4, seed=1)
        block = model.layer2[0] if hasattr(model.layer2, "__getitem__") else model.layer2.modules[0]
        if hooked:
            block.bn2.register_output_hook(lambda m, y: y)
        block.relu_out.register_output_hook(lambda m, y: (seen.append(y.shape), y)[1])
        logits = model(x)
        _, g = nn.softmax_cross_entropy(logits, np.array([1, 2]))
        model.backward(g)
        runs.append((logits, model.grad_dict()))
    assert len(seen) == 2
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    for k in runs[0][1]:
        np.testing.assert_allclose(runs[0][1][k], runs[1][1][k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_save_load_round_trip(tmp_path, rng):
    model = nn.resnet18(num_classes=5, seed=2).eval()
    path = tmp_path / "r18.npz"
    nn.save(model, str(path))
    back = nn.load(str(path)).eval()
    x = images(rng, 1, 32)
    assert np.array_equal(model(x), back(x))
    assert isinstance(back, nn.ResNet) and back.args == model.args


def test_bad_input(rng):
    model = nn.resnet18(num_classes=5)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) images, got ndarray of shape \(2, 4, 32, 32\)"):
        model(images(rng, 2, 32, channels=4))
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) images, got ndarray of shape \(3, 32, 32\)"):
        model(images(rng, 1, 32)[0])
    with pytest.raises(TypeError, match="images must be float32, got float64"):
        model(images(rng, 1, 32).astype(np.float64))
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) images, got list"):
        model([[1.0]])
    with pytest.raises(ValueError, match="input has 16 channels"):
        model(dlcpu.to_blocked(images(rng, 1, 32, channels=16)))
    # state dicts: another architecture, truncated, wrong shapes, wrong dtypes
    other = nn.resnet50(num_classes=5).state_dict()
    with pytest.raises(ValueError, match=r"does not match this model \(unexpected keys \['layer1.0.conv3.weight'"):
        model.load_state_dict(other)
    sd = model.state_dict()
    truncated = dict(list(sd.items())[:10])
    with pytest.raises(ValueError, match=r"missing keys \['layer1"):
        model.load_state_dict(truncated)
    with pytest.raises(ValueError, match=r"wrong shapes: fc.weight: \(6, 512\), expected \(5, 512\)"):
        model.load_state_dict({**sd, "fc.weight": np.zeros((6, 512), np.float32)})
    with pytest.raises((TypeError, ValueError), match="conv1.weight"):
        model.load_state_dict({**sd, "conv1.weight": sd["conv1.weight"].astype(np.int32)})
    before = model.state_dict()
    for bad in (truncated, other):
        with pytest.raises(ValueError):
            model.load_state_dict(bad)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())   # nothing written
    with pytest.raises(ValueError, match="ResNet: block must be one of basic, bottleneck"):
        nn.ResNet("dense")
    with pytest.raises(ValueError, match="ResNet: layers must be four block counts"):
        nn.ResNet("basic", [2, 2, 2])
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        nn.resnet50(num_classes=0)


def test_inference_mode_keeps_nothing(rng):
    """Under nn.inference_mode() the logits are the same, no layer holds a saved tensor after
    the call (an inference holds only the activations in use), a backward is refused naming
    the reason, and the mode ends with the block (nested blocks restore the outer one)."""
    from dlcpu.nn.module import _SAVED_STATE

    model = nn.resnet18(num_classes=4).eval()
    x = images(rng, 2, 32)
    want = model(x)
    with nn.inference_mode():
        assert not nn.grad_enabled()
        with nn.inference_mode():
            pass
        assert not nn.grad_enabled()
        got = model(x)
    assert nn.grad_enabled()
    assert np.array_equal(got, want)

    def modules(m):
        yield m
        for c in m.children():
            yield from modules(c)

    held = [(type(m).__name__, a) for m in modules(model) for a in _SAVED_STATE if getattr(m, a, None) is not None]
    assert held == []
    with pytest.raises(RuntimeError, match=r"the last forward ran under nn.inference_mode\(\)"):
        model.backward(np.ones((2, 4), np.float32))
    lstm = nn.LSTM(3, 4)
    with nn.inference_mode():
        lstm(rng.standard_normal((2, 1, 3)).astype(np.float32))
    with pytest.raises(RuntimeError, match="inference_mode"):
        lstm.backward(np.ones((2, 1, 4), np.float32))
    model(x)                                  # a normal forward keeps state again
    assert model.fc._x is not None


@needs_torch
@pytest.mark.parametrize("path", ["pt2e", "fx"])
def test_the_pytorch_int8_peer_runs_either_path(monkeypatch, path):
    """_peers.quantized_model, the int8 model peer: PT2E compiled by inductor (torchao installed)
    or FX, on a small ResNet twin with batch norms that are not the identity: logits near the
    fp32 twin's, and the path is named."""
    import torch

    if path == "pt2e" and _peers.pt2e_or_none() is None:
        pytest.skip("torchao is not installed (pip install 'dlcpu[compare]')")
    if path == "fx":
        monkeypatch.setattr(_peers, "pt2e_or_none", lambda: None)
    torch.manual_seed(0)
    twin = _peers.resnet_from(torch, nn.ResNet("bottleneck", [1, 1, 1, 1], num_classes=10, seed=2),
                              memory_format=torch.channels_last).eval()
    randomize_batch_norms(torch, twin, 0.3)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = twin(x).numpy()
    quantized, name = _peers.quantized_model(torch, twin, x, reduce_range=True)
    with torch.inference_mode():
        got = np.asarray(quantized(x))
    assert ("PT2E" if path == "pt2e" else "FX") in name
    # 7-bit codes on a small random twin: FX's error was 4-8% over six seeds, PT2E's 5.5% here
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.15
