"""PyTorch-compatible state dicts (Module.state_dict / load_state_dict): PyTorch's names and
layouts, both directions against a PyTorch twin built with the same module names, and the
refusals (missing, unexpected, wrong shape, wrong dtype)."""
import numpy as np
import pytest
from conftest import needs_torch, randomize_batch_norms

from dlcpu import nn, to_blocked


def small_resnet(seed=0):
    """Conv-BN-ReLU, a BasicBlock with a strided 1x1 shortcut, pooling, Linear."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False, seed=seed), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.BasicBlock(8, 16, 2, seed=seed + 1), nn.GlobalAvgPool(), nn.Linear(16, 10, seed=seed + 2))


EXPECTED_KEYS = {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                 "3.conv1.weight", "3.bn1.weight", "3.bn1.bias", "3.bn1.running_mean", "3.bn1.running_var",
                 "3.bn1.num_batches_tracked", "3.conv2.weight", "3.bn2.weight", "3.bn2.bias", "3.bn2.running_mean",
                 "3.bn2.running_var", "3.bn2.num_batches_tracked", "3.downsample.0.weight", "3.downsample.1.weight",
                 "3.downsample.1.bias", "3.downsample.1.running_mean", "3.downsample.1.running_var",
                 "3.downsample.1.num_batches_tracked", "5.weight", "5.bias"}


def torch_twin(torch):
    """The same network with PyTorch's (torchvision's) module names."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(8, 16, 3, 2, 1, bias=False), tnn.BatchNorm2d(16)
            self.conv2, self.bn2 = tnn.Conv2d(16, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16)
            self.downsample = tnn.Sequential(tnn.Conv2d(8, 16, 1, 2, 0, bias=False), tnn.BatchNorm2d(16))

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + self.downsample(x))

    class Pool(tnn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    return tnn.Sequential(tnn.Conv2d(3, 8, 3, 1, 1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(), Block(), Pool(),
                          tnn.Linear(16, 10))


def trained_a_little(model, rng):
    """A few training-mode forwards, so BatchNorm's running statistics are not the defaults."""
    for _ in range(3):
        model(to_blocked(rng.standard_normal((4, 3, 8, 8)).astype(np.float32)))
    return model


def test_names_and_layouts(rng):
    model = trained_a_little(small_resnet(), rng)
    sd = model.state_dict()
    assert set(sd) == EXPECTED_KEYS
    assert sd["0.weight"].shape == (8, 3, 3, 3) and sd["1.running_mean"].shape == (8,)   # logical: no channel padding
    assert sd["3.downsample.0.weight"].shape == (16, 8, 1, 1)
    assert int(sd["1.num_batches_tracked"]) == 3
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))


def test_round_trip_and_save_files_unchanged(rng, tmp_path):
    a = trained_a_little(small_resnet(seed=0), rng)
    b = small_resnet(seed=5)
    b.load_state_dict(a.state_dict())
    x = to_blocked(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    nn.save(a, str(tmp_path / "m.npz"))                  # nn.save keeps its own format
    np.testing.assert_array_equal(nn.load(str(tmp_path / "m.npz")).eval()(x), a(x))


@needs_torch
def test_torch_loads_dlcpu_and_dlcpu_loads_torch(rng):
    import torch

    model = trained_a_little(small_resnet(), rng).eval()
    twin = torch_twin(torch)
    twin.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()}, strict=True)
    twin.eval()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(to_blocked(x)), want, rtol=1e-4, atol=1e-5)

    torch.manual_seed(3)
    other = torch_twin(torch)
    randomize_batch_norms(torch, other, 0.5)
    other.eval()
    mine = small_resnet(seed=9)
    mine.load_state_dict(other.state_dict())            # torch tensors, num_batches_tracked included
    mine.eval()
    with torch.no_grad():
        want = other(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mine(to_blocked(x)), want, rtol=1e-4, atol=1e-5)


def test_recurrent_names_follow_torch():
    model = nn.digits_rnn(hidden=16, seed=0)
    sd = model.state_dict()
    assert set(sd) == {"0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0", "0.bias_hh_l0", "2.weight", "2.bias"}
    assert sd["0.weight_ih_l0"].shape == (64, 8)
    other = nn.digits_rnn(hidden=16, seed=1)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_refusals_name_the_problem():
    model = small_resnet()
    sd = model.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"missing keys \['5.bias'\]"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "5.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['fc.weight'\]"):
        model.load_state_dict({**sd, "fc.weight": np.zeros((10, 16), np.float32)})
    with pytest.raises(ValueError, match=r"wrong shapes: 5.weight: \(10, 8\), expected \(10, 16\)"):
        model.load_state_dict({**sd, "5.weight": np.zeros((10, 8), np.float32)})
    with pytest.raises(TypeError, match="0.weight holds int64 values"):
        model.load_state_dict({**sd, "0.weight": np.zeros((8, 3, 3, 3), np.int64)})
    with pytest.raises(TypeError, match="expected a mapping"):
        model.load_state_dict([1, 2])
    with pytest.raises(ValueError, match="does not match this model"):
        model.load_state_dict(nn.digits_rnn(seed=0).state_dict())      # another architecture
    for k, v in model.state_dict().items():                             # nothing was written
        np.testing.assert_array_equal(v, before[k])


def test_non_strict_loads_what_matches():
    model = small_resnet(seed=0)
    donor = small_resnet(seed=4)
    result = model.load_state_dict({"5.weight": donor.state_dict()["5.weight"], "extra": np.zeros(1)}, strict=False)
    assert result["unexpected_keys"] == ["extra"] and "0.weight" in result["missing_keys"]
    np.testing.assert_array_equal(model.state_dict()["5.weight"], donor.state_dict()["5.weight"])
    assert not np.array_equal(model.state_dict()["0.weight"], donor.state_dict()["0.weight"])
