"""Blocked layouts: exact round trips, zero padding, agreement with the index-by-index twin."""
import numpy as np
import pytest

import dlcpu
from dlcpu import _reference as ref


@pytest.mark.parametrize("c", [1, 3, 15, 16, 17, 33])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_activation_round_trip(rng, c, n_threads):
    x = rng.standard_normal((3, c, 5, 7)).astype(np.float32)
    t = dlcpu.to_blocked(x, n_threads=n_threads)
    assert t.shape == x.shape and t.data.shape == (3, -(-c // 16), 5, 7, 16)
    assert np.array_equal(t.data, ref.to_blocked(x))
    assert np.array_equal(dlcpu.from_blocked(t, n_threads=n_threads), x)
    assert np.array_equal(t.numpy(), x)


@pytest.mark.parametrize("k,c", [(1, 1), (16, 3), (17, 33), (64, 16), (5, 40)])
def test_weight_round_trip(rng, k, c):
    w = rng.standard_normal((k, c, 3, 2)).astype(np.float32)
    t = dlcpu.block_weights(w)
    assert t.kind == "weight" and t.data.shape == (-(-k // 16), -(-c // 16), 3, 2, 16, 16)
    assert np.array_equal(t.data, ref.block_weights(w))
    assert np.array_equal(dlcpu.unblock_weights(t), w)


def test_special_values_survive(rng):
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32).reshape(1, 5, 1, 1)
    back = dlcpu.from_blocked(dlcpu.to_blocked(x))
    assert np.array_equal(back.view(np.uint32), x.view(np.uint32))


def test_non_contiguous_is_copied(rng):
    x = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    view = x[:, ::2, :, ::2]
    assert np.array_equal(dlcpu.from_blocked(dlcpu.to_blocked(view)), view)


def test_errors():
    with pytest.raises(TypeError, match="float32"):
        dlcpu.to_blocked(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="4-d"):
        dlcpu.to_blocked(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="activation BlockedTensor"):
        dlcpu.from_blocked(np.zeros((1, 1, 1, 1, 16), np.float32))
    with pytest.raises(ValueError, match="does not match logical"):
        dlcpu.BlockedTensor(np.zeros((1, 1, 2, 2, 16), np.float32), (1, 17, 2, 2))
    with pytest.raises(TypeError, match="weight BlockedTensor"):
        dlcpu.unblock_weights(dlcpu.to_blocked(np.zeros((1, 1, 1, 1), np.float32)))
