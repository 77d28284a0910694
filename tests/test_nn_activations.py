"""nn.Tanh / Sigmoid / Swish / GELU: every flavour on blocked and plain inputs, against the
float64 flavour twins and PyTorch, backward by finite differences, padded channels, save/load."""
import numpy as np
import pytest
from conftest import needs_torch

from dlcpu import _reference as ref
from dlcpu import nn
from dlcpu.layout import BlockedTensor, from_blocked, to_blocked

LAYERS = {
    "Tanh": (lambda impl: nn.Tanh(impl), lambda x, impl: ref.tanh_flavour(x, impl)),
    "Sigmoid": (lambda impl: nn.Sigmoid(impl), lambda x, impl: ref.sigmoid_flavour(x, impl)),
    "Swish": (lambda impl: nn.Swish(1.5, impl), lambda x, impl: ref.swish_flavour(x, impl, 1.5)),
    "GELU": (lambda impl: nn.GELU(impl), lambda x, impl: ref.gelu_flavour(x, impl)),
}
IMPLS = ("exact", "fast", "ktanh")


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [5, 16, 20])
def test_blocked_forward_matches_twin_and_keeps_padding_zero(rng, name, impl, channels):
    make, twin = LAYERS[name]
    x = rng.uniform(-4, 4, (2, channels, 3, 4)).astype(np.float32)
    layer = make(impl)
    y = layer(to_blocked(x))
    assert isinstance(y, BlockedTensor) and y.shape == x.shape
    # ktanh indexes by the bf16 truncation of the inner argument: a float32 vs float64 argument can
    # fall on either side of a truncation boundary, one table step (< 0.02) apart
    tol = 2e-2 if impl == "ktanh" else 1e-5
    np.testing.assert_allclose(from_blocked(y), twin(x, impl), atol=tol)
    if impl == "ktanh":
        assert np.mean(np.abs(from_blocked(y) - twin(x, impl)) > 1e-5) < 0.01
    pad = channels % 16
    if pad:
        assert np.all(y.data[:, -1, ..., pad:] == 0.0), "padded channels must stay zero"


@pytest.mark.parametrize("name", LAYERS)
def test_backward_finite_differences_on_plain_arrays(rng, name):
    make, _ = LAYERS[name]
    layer = make("exact")
    x = rng.uniform(-3, 3, (4, 6)).astype(np.float64)
    dy = rng.standard_normal((4, 6))
    layer(x.astype(np.float32))
    dx = layer.backward(dy.astype(np.float32))
    eps = 1e-3
    num = (make("exact")((x + eps).astype(np.float32)).astype(np.float64)
           - make("exact")((x - eps).astype(np.float32)).astype(np.float64)) / (2 * eps) * dy
    np.testing.assert_allclose(dx, num, atol=2e-3)


@pytest.mark.parametrize("name", LAYERS)
def test_blocked_backward_matches_plain(rng, name):
    make, _ = LAYERS[name]
    x = rng.uniform(-3, 3, (2, 20, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    blocked = make("fast")
    blocked(to_blocked(x))
    dxb = from_blocked(blocked.backward(to_blocked(dy)))
    flat = make("fast")
    flat(x.reshape(2, -1))
    np.testing.assert_array_equal(dxb.reshape(2, -1), flat.backward(dy.reshape(2, -1)))


@needs_torch
@pytest.mark.parametrize("name", LAYERS)
def test_exact_flavour_against_torch(rng, name):
    import torch

    fns = {"Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Swish": lambda t: t * torch.sigmoid(1.5 * t),
           "GELU": lambda t: torch.nn.functional.gelu(t, approximate="tanh")}
    x = rng.uniform(-5, 5, (8, 33)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = LAYERS[name][0]("exact")
    y = layer(x)
    dx = layer.backward(dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = fns[name](xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_keeps_flavour(tmp_path, rng):
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU("ktanh"), nn.Linear(5, 4), nn.Swish(0.5, "fast"), nn.Sigmoid())
    x = rng.standard_normal((3, 6)).astype(np.float32)
    path = str(tmp_path / "m.npz")
    nn.save(model, path)
    loaded = nn.load(path)
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(loaded(x), model(x))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: nn.Tanh("bogus"), ValueError, "activation_impl must be one of 'exact', 'fast', 'ktanh'"),
    (lambda: nn.Swish(float("nan")), ValueError, "beta"),
    (lambda: nn.Swish("1"), TypeError, "beta must be a number"),
    (lambda: nn.Sigmoid()(np.ones((2, 3), np.int32)), TypeError, "float array"),
    (lambda: nn.GELU().backward(np.ones(3, np.float32)), RuntimeError, "before forward"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_dy_must_match_forward(rng):
    layer = nn.Tanh()
    layer(to_blocked(rng.standard_normal((1, 3, 2, 2)).astype(np.float32)))
    with pytest.raises(ValueError, match="dy must match the forward's output"):
        layer.backward(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="dy must match"):
        layer.backward(to_blocked(np.ones((1, 4, 2, 2), np.float32)))


def test_nonfinite_inputs_follow_the_twins():
    x = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 3.0]], np.float32)
    for impl in IMPLS:
        y = nn.Tanh(impl)(x)
        assert np.isnan(y[0, 0]) and y[0, 1] == 1.0 and y[0, 2] == -1.0
        assert np.signbit(y[0, 4]) and y[0, 3] == 0.0
        s = nn.Sigmoid(impl)(x)
        assert np.isnan(s[0, 0]) and s[0, 1] == 1.0 and s[0, 2] == 0.0 and s[0, 3] == 0.5


def test_zero_dim_input_keeps_its_shape():
    """A 0-d input gave a (1,) output (np.ascontiguousarray makes 0-d arrays 1-d), unlike
    dlcpu.approx and NumPy; backward likewise."""
    for name, (make, _) in LAYERS.items():
        layer = make("fast")
        y = layer(np.float32(0.5))
        assert y.shape == () and layer(0.5).shape == (), name
        assert layer.backward(np.float32(1.0)).shape == (), name


def test_swish_beta_must_stay_finite_in_float32():
    """nn.Swish(1e39) was accepted: the kernels' float beta is then inf (NaN outputs and gradients)."""
    for bad in (1e39, -1e39):
        with pytest.raises(ValueError, match=r"Swish: beta must be a finite number with \|beta\| <= 3\.4"):
            nn.Swish(bad)
    assert nn.Swish(-3e38).beta == -3e38


def test_impossible_input_size_is_refused():
    huge = np.broadcast_to(np.float32(1), (1 << 40,))
    for name, (make, _) in LAYERS.items():
        with pytest.raises(ValueError, match=rf"^{name}\(.*\): input of shape \(1099511627776,\).*would need"):
            make("exact")(huge)


def test_changed_flavour_is_saved(tmp_path):
    layer = nn.Sequential(nn.Linear(3, 4), nn.GELU())
    layer.children()[1].activation_impl = "ktanh"
    path = str(tmp_path / "g.npz")
    nn.save(layer, path)
    assert nn.load(path).children()[1].activation_impl == "ktanh"
    with pytest.raises(ValueError, match="activation_impl must be one of"):
        layer.children()[1].activation_impl = "slow"
