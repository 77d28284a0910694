"""Winograd F(2x2,3x3) and F(4x4,3x3): accuracy contract, shapes, prepared weights, errors."""
import numpy as np
import pytest
from conftest import CONV_F32, ISAS, max_threads, needs_torch, rel_l2

import dlcpu
from dlcpu import _reference as ref
from dlcpu.conv import choose_algorithm, conv_shape, prepare_winograd

# The accuracy contract (relative L2 error vs the float64 reference, inputs in [-1, 1]).
CONTRACT = CONV_F32

SHAPES = [  # n, c, k, h, w, padding
    (2, 3, 5, 9, 9, 1),
    (1, 17, 33, 10, 7, 0),
    (2, 64, 64, 14, 14, 1),
    (1, 16, 32, 7, 7, 1),
    (1, 20, 18, 5, 12, 2),
    (3, 8, 40, 3, 3, 1),
    (1, 1, 1, 3, 3, 0),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize("case", SHAPES, ids=str)
def test_accuracy_contract(rng, isa, algorithm, case):
    n, c, k, h, w, pad = case
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, k).astype(np.float32)
    want = ref.conv2d_forward(x, wt, b, (1, 1), (pad, pad), relu=True)
    got = dlcpu.conv2d(x, wt, b, padding=pad, activation="relu", algorithm=algorithm, isa=isa)
    assert rel_l2(got, want) <= CONTRACT[algorithm]


@pytest.mark.parametrize("c", [64, 128, 256])
def test_contract_on_resnet_style_layers(rng, c):
    x = rng.uniform(-1, 1, (2, c, 14, 14)).astype(np.float32)
    wt = rng.uniform(-1, 1, (c, c, 3, 3)).astype(np.float32)
    want = ref.conv2d_forward(x, wt, None, (1, 1), (1, 1))
    for algorithm, bound in CONTRACT.items():
        assert rel_l2(dlcpu.conv2d(x, wt, padding=1, algorithm=algorithm), want) <= bound, algorithm


def test_prepared_weights_and_blocked_path(rng):
    x = rng.uniform(-1, 1, (2, 32, 12, 12)).astype(np.float32)
    wt = rng.uniform(-1, 1, (40, 32, 3, 3)).astype(np.float32)
    xb = dlcpu.to_blocked(x)
    u = prepare_winograd(dlcpu.block_weights(wt), "winograd4")
    y1 = dlcpu.conv2d(xb, u, padding=1)                  # 'auto' follows the prepared weights
    y2 = dlcpu.conv2d(xb, wt, padding=1, algorithm="winograd4")
    assert np.array_equal(y1.data, y2.data)
    assert not y1.data[:, 2, :, :, 8:].any(), "padded output channels must stay zero"
    with pytest.raises(ValueError, match="prepared for winograd4, not winograd2"):
        dlcpu.conv2d(xb, u, padding=1, algorithm="winograd2")


def test_thread_count_bitwise(rng):
    x = rng.uniform(-1, 1, (3, 40, 13, 11)).astype(np.float32)
    wt = rng.uniform(-1, 1, (36, 40, 3, 3)).astype(np.float32)
    for algorithm in ("winograd2", "winograd4"):
        ys = [dlcpu.conv2d(x, wt, padding=1, algorithm=algorithm, n_threads=t) for t in (1, max_threads(), 3)]
        assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])


@needs_torch
def test_against_torch(rng):
    import torch

    x = rng.uniform(-1, 1, (2, 24, 10, 10)).astype(np.float32)
    wt = rng.uniform(-1, 1, (20, 24, 3, 3)).astype(np.float32)
    yt = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt), padding=1).numpy()
    assert rel_l2(dlcpu.conv2d(x, wt, padding=1, algorithm="winograd4"), yt) <= CONTRACT["winograd4"]


def test_auto_rule():
    assert choose_algorithm(conv_shape((4, 128, 28, 28), (128, 128, 3, 3), 1, 1), "avx512") == "winograd4"
    assert choose_algorithm(conv_shape((4, 512, 7, 7), (512, 512, 3, 3), 1, 1), "avx512") == "direct"
    assert choose_algorithm(conv_shape((4, 128, 56, 56), (128, 128, 3, 3), 2, 1), "avx512") == "direct"
    assert choose_algorithm(conv_shape((4, 128, 28, 28), (128, 128, 1, 1), 1, 0), "avx512") == "direct"


def test_errors(rng):
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="needs a 3x3 filter and stride 1"):
        dlcpu.conv2d(x, np.zeros((4, 4, 3, 3), np.float32), stride=2, algorithm="winograd4")
    with pytest.raises(ValueError, match="needs 3x3 filters"):
        prepare_winograd(np.zeros((4, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        dlcpu.conv2d(x, np.zeros((4, 4, 3, 3), np.float32), algorithm="fft")


def _nonfinite_case(rng, where):
    """A 128 -> 128 3x3 layer that 'auto' runs by Winograd F(4x4), with Inf/NaN planted."""
    x = rng.uniform(-1, 1, (2, 128, 14, 14)).astype(np.float32)
    wt = rng.uniform(-1, 1, (128, 128, 3, 3)).astype(np.float32)
    if where == "inf":
        x[0, 5, 7, 7] = np.inf
    elif where == "-inf+nan":
        x[1, 100, 0, 13] = -np.inf
        x[0, 17, 3, 4] = np.nan
    else:   # weights
        wt[3, 7, 1, 1] = np.inf
    return x, wt


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("where", ["inf", "-inf+nan", "weights"])
def test_auto_propagates_nonfinite_like_direct(rng, isa, where):
    """'auto' falls back to direct when Winograd's transforms see Inf/NaN: the same positions of
    Inf, -Inf and NaN as direct convolution, finite values close (issue 8)."""
    x, wt = _nonfinite_case(rng, where)
    b = rng.uniform(-1, 1, 128).astype(np.float32)
    direct = dlcpu.conv2d(x, wt, b, padding=1, algorithm="direct", isa=isa)
    auto = dlcpu.conv2d(x, wt, b, padding=1, isa=isa)
    for mask in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(mask(auto), mask(direct)), mask.__name__
    assert np.isinf(direct).any()
    fin = np.isfinite(direct)
    assert rel_l2(auto[fin], direct[fin]) <= CONTRACT["winograd4"]


def test_auto_picks_winograd_and_explicit_winograd_makes_nan(rng):
    """The case above really runs Winograd under 'auto' (so the fallback is what keeps Inf), and
    an explicit algorithm='winograd4' documents its NaN."""
    x, wt = _nonfinite_case(rng, "inf")
    shape = conv_shape(x.shape, wt.shape, 1, 1)
    assert choose_algorithm(shape, "avx512") == "winograd4"
    y = dlcpu.conv2d(x, wt, padding=1, algorithm="winograd4")
    assert np.isnan(y).sum() > 0


def test_finite_auto_is_winograd_bitwise(rng):
    """With finite input the fallback never fires: 'auto' equals the Winograd result bitwise."""
    x, wt = _nonfinite_case(rng, "none")
    wt[3, 7, 1, 1] = 0.5
    assert np.array_equal(dlcpu.conv2d(x, wt, padding=1), dlcpu.conv2d(x, wt, padding=1, algorithm="winograd4"))


@pytest.mark.parametrize("pad", [0, 1])
def test_nonfinite_detected_at_every_input_pixel(rng, pad):
    """Tiles overlap and each checks only the corner no later tile reloads (the whole patch at the
    edges): one Inf at each input pixel in turn must still send 'auto' to the direct result."""
    x0 = rng.uniform(-1, 1, (1, 128, 16, 16)).astype(np.float32)
    wt = dlcpu.block_weights(rng.uniform(-1, 1, (128, 128, 3, 3)).astype(np.float32))
    assert choose_algorithm(conv_shape(x0.shape, (128, 128, 3, 3), 1, pad), "avx512") == "winograd4"
    for h in range(16):
        for w in range(16):
            x = x0.copy()
            x[0, 3, h, w] = np.inf
            xb = dlcpu.to_blocked(x)
            auto = dlcpu.conv2d(xb, wt, padding=pad).data
            assert not np.isnan(auto).any(), (h, w)
            assert np.array_equal(np.isinf(auto), np.isinf(dlcpu.conv2d(xb, wt, padding=pad, algorithm="direct").data))
