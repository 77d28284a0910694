"""conv2d forward against the float64 reference, PyTorch, across ISAs and thread counts."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import dlcpu
from dlcpu import _reference as ref
from dlcpu.conv import conv_shape, get_plan


def make(rng, n, c, k, h, w, r, s):
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    b = rng.uniform(-1, 1, k).astype(np.float32)
    return x, wt, b


BOUNDARY = [1, 3, 15, 16, 17, 33]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", BOUNDARY)
@pytest.mark.parametrize("k", BOUNDARY)
def test_channel_block_boundaries(rng, isa, c, k):
    x, w, b = make(rng, 2, c, k, 7, 6, 3, 3)
    y = dlcpu.conv2d(x, w, b, stride=1, padding=1, isa=isa)
    assert_close(y, ref.conv2d_forward(x, w, b, (1, 1), (1, 1)))


GEOMETRY = [
    # n, c, k, h, w, r, s, stride, padding
    (1, 8, 16, 9, 9, 3, 3, 2, 1),
    (2, 5, 20, 11, 7, 3, 1, (1, 2), (0, 1)),
    (1, 16, 32, 10, 13, 2, 3, 3, 3),
    (3, 4, 4, 5, 5, 5, 5, 1, 2),
    (1, 3, 32, 30, 30, 7, 7, 2, 3),      # first-layer shape: C=3, 7x7 stride 2
    (1, 32, 48, 14, 14, 1, 1, 2, 0),     # strided 1x1
    (2, 32, 64, 7, 7, 1, 1, 1, 0),       # flat 1x1, pixels across rows
    (1, 48, 32, 29, 3, 1, 3, 1, (0, 1)), # R != S, tall image
    (1, 17, 17, 1, 40, 1, 3, (1, 3), 0), # one-row image, stride 3 in w
    (1, 2, 3, 4, 4, 4, 4, 1, 3),         # filter bigger than input, rescued by padding
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", GEOMETRY, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_geometry(rng, isa, case, relu):
    n, c, k, h, w, r, s, stride, pad = case
    x, wt, b = make(rng, n, c, k, h, w, r, s)
    y = dlcpu.conv2d(x, wt, b, stride=stride, padding=pad, activation="relu" if relu else None, isa=isa)
    st2 = stride if isinstance(stride, tuple) else (stride, stride)
    pd2 = pad if isinstance(pad, tuple) else (pad, pad)
    assert_close(y, ref.conv2d_forward(x, wt, b, st2, pd2, relu))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("pad", [0, 1, 2, 3])
def test_strides_and_paddings(rng, stride, pad):
    x, w, _b = make(rng, 1, 17, 33, 12, 10, 3, 2)
    y = dlcpu.conv2d(x, w, None, stride=stride, padding=pad)
    assert_close(y, ref.conv2d_forward(x, w, None, (stride, stride), (pad, pad)))


def test_small_batch_many_threads(rng):
    """N smaller than the thread count: work splits over rows and K blocks instead."""
    x, w, b = make(rng, 1, 16, 64, 5, 5, 3, 3)
    for n_threads in (2, 3, 8):
        plan = get_plan(conv_shape(x.shape, w.shape, 1, 1), n_threads=n_threads)
        assert plan.row_blocks * plan.k_groups >= min(n_threads, 4)
        y = dlcpu.conv2d(x, w, b, padding=1, n_threads=n_threads)
        assert_close(y, ref.conv2d_forward(x, w, b, (1, 1), (1, 1)))


@pytest.mark.parametrize("case", [(2, 16, 32, 12, 12, 3, 3, 1, 1), (1, 3, 64, 23, 23, 7, 7, 2, 3),
                                  (3, 64, 32, 7, 7, 1, 1, 1, 0)])
def test_thread_count_bitwise(rng, case):
    n, c, k, h, w, r, s, stride, pad = case
    x, wt, b = make(rng, n, c, k, h, w, r, s)
    y1 = dlcpu.conv2d(x, wt, b, stride=stride, padding=pad, n_threads=1)
    yn = dlcpu.conv2d(x, wt, b, stride=stride, padding=pad, n_threads=max_threads())
    assert np.array_equal(y1, yn)
    with threadpool_limits(limits=1, user_api="openmp"):
        y_limited = dlcpu.conv2d(x, wt, b, stride=stride, padding=pad)
    assert np.array_equal(y1, y_limited)


def test_threadpoolctl_limits_threads():
    with threadpool_limits(limits=1, user_api="openmp"):
        assert dlcpu.cpu.resolve_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, 1025, 10**9])
def test_thread_count_out_of_range_is_refused(bad):
    """OpenMP sets up every requested thread before a region runs: 10**9 aborted the process."""
    from dlcpu import rnn

    x = np.ones((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="between 1 and 1024"):
        dlcpu.conv2d(x, np.ones((4, 3, 3, 3), np.float32), n_threads=bad)
    with pytest.raises(ValueError, match="between 1 and 1024"):
        rnn.prepare_lstm(np.ones((8, 3), np.float32), np.ones((8, 2), np.float32), n_threads=bad)


def test_blocked_path_keeps_layout_and_padding_zero(rng):
    x, w, b = make(rng, 2, 20, 24, 8, 9, 3, 3)
    xb, wb = dlcpu.to_blocked(x), dlcpu.block_weights(w)
    yb = dlcpu.conv2d(xb, wb, b, padding=1, activation="relu")
    assert isinstance(yb, dlcpu.BlockedTensor)
    assert yb.shape == (2, 24, 8, 9) and yb.data.shape == (2, 2, 8, 9, 16)
    assert not yb.data[:, 1, :, :, 8:].any(), "padded output channels must stay zero"
    assert_close(dlcpu.from_blocked(yb), ref.conv2d_forward(x, w, b, (1, 1), (1, 1), True))
    # out= reuses the buffer and gives the same numbers
    again = dlcpu.conv2d(xb, wb, b, padding=1, activation="relu", out=yb)
    assert again is yb


def test_isa_env_variable(rng):
    """DLCPU_ISA forces a path for a whole process (checked in a subprocess)."""
    code = ("import dlcpu, numpy as np; from dlcpu import _reference as r;"
            "x=np.ones((1,3,5,5),np.float32); w=np.ones((4,3,3,3),np.float32);"
            "y=dlcpu.conv2d(x,w,padding=1); assert np.allclose(y, r.conv2d_forward(x,w,None,(1,1),(1,1)));"
            "print(dlcpu.info()['isa'])")
    for isa in ISAS:
        env = dict(os.environ, DLCPU_ISA=isa)
        res = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, cwd="/")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == isa
    env = dict(os.environ, DLCPU_ISA="sse9")
    res = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, cwd="/")
    assert res.returncode != 0 and "DLCPU_ISA" in res.stderr


def test_nan_and_inf_pass_through(rng):
    x, w, _b = make(rng, 1, 16, 16, 4, 4, 1, 1)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 2] = np.inf
    y = dlcpu.conv2d(x, np.abs(w), activation="relu")
    assert np.isnan(y[0, :, 1, 1]).all()
    assert np.isinf(y[0, :, 2, 2]).all()


def test_non_contiguous_input_is_copied(rng):
    x, w, b = make(rng, 2, 8, 8, 10, 10, 3, 3)
    xs = np.asfortranarray(x)[:, :, ::2, :]
    y = dlcpu.conv2d(xs, w, b, padding=1)
    assert_close(y, ref.conv2d_forward(np.ascontiguousarray(xs), w, b, (1, 1), (1, 1)))


@needs_torch
@pytest.mark.parametrize("case", GEOMETRY, ids=str)
def test_against_torch(rng, case):
    import torch

    n, c, k, h, w, r, s, stride, pad = case
    x, wt, b = make(rng, n, c, k, h, w, r, s)
    yt = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b),
                                    stride=stride, padding=pad).numpy()
    assert_close(dlcpu.conv2d(x, wt, b, stride=stride, padding=pad), yt)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 40), k=st.integers(1, 40), h=st.integers(1, 12),
       w=st.integers(1, 12), r=st.integers(1, 4), s=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3), relu=st.booleans())
def test_random_shapes(n, c, k, h, w, r, s, sh, sw, ph, pw, relu):
    assume(r <= h + 2 * ph and s <= w + 2 * pw)
    rng = np.random.default_rng(n * 1000 + c * 10 + k)
    x, wt, b = make(rng, n, c, k, h, w, r, s)
    y = dlcpu.conv2d(x, wt, b, stride=(sh, sw), padding=(ph, pw), activation="relu" if relu else None)
    assert_close(y, ref.conv2d_forward(x, wt, b, (sh, sw), (ph, pw), relu))


BAD = [
    ({"x": np.zeros((1, 3, 5), np.float32)}, ValueError, "4-d NCHW"),
    ({"w": np.zeros((4, 2, 3, 3), np.float32)}, ValueError, "C=3 channels but weights expect C=2"),
    ({"x": np.zeros((1, 3, 5, 5), np.float64)}, TypeError, "float32"),
    ({"x": [[1.0]]}, TypeError, "numpy array"),
    ({"w": np.zeros((4, 3, 9, 9), np.float32)}, ValueError, "output size would be <= 0"),
    ({"padding": -1}, ValueError, "padding must be >= 0"),
    ({"stride": 0}, ValueError, "stride must be >= 1"),
    ({"stride": (1, 2, 3)}, TypeError, "stride must be an int or an"),
    ({"stride": 1.5}, TypeError, "stride must be an int"),
    ({"bias": np.zeros(5, np.float32)}, ValueError, r"bias must have shape \(4,\)"),
    ({"bias": np.zeros(4, np.float64)}, TypeError, "bias must be float32"),
    ({"activation": "gelu"}, ValueError, "activation must be None or 'relu'"),
    ({"x": np.zeros((0, 3, 5, 5), np.float32)}, ValueError, "every dimension must be >= 1"),
    ({"n_threads": 0}, ValueError, "n_threads=0 must be between 1 and 1024"),
    ({"isa": "neon"}, ValueError, "isa='neon' is not one of"),
]


@pytest.mark.parametrize("change,exc,match", BAD, ids=[b[2] for b in BAD])
def test_bad_input(change, exc, match):
    args = {"x": np.zeros((1, 3, 5, 5), np.float32), "w": np.zeros((4, 3, 3, 3), np.float32), "bias": None,
                "stride": 1, "padding": 0, "activation": None}
    extra = {k: change.pop(k) for k in ("n_threads", "isa") if k in change}
    args.update(change)
    with pytest.raises(exc, match=match):
        dlcpu.conv2d(args.pop("x"), args.pop("w"), **args, **extra)


def test_conv_shape_cache_answers_only_what_the_checks_would():
    """conv_shape caches geometries of plain ints; a bool (equal to 1 and hashed alike), numpy
    ints and lists take the checks, and an invalid geometry fails every time it is asked."""
    from dlcpu import conv

    x, w = (1, 3, 8, 8), (4, 3, 3, 3)
    plain = conv.conv_shape(x, w, 1, 1)
    assert conv.conv_shape(x, w, 1, 1) is plain                      # cached
    assert conv.conv_shape(x, w, np.int64(1), [1, 1]) == plain       # checked, the same answer
    for stride, padding in ((True, 1), ((1, True), 1), (1, False), (1, (True, 1))):
        with pytest.raises(TypeError, match="must be an int or an \\(h, w\\) pair of ints"):
            conv.conv_shape(x, w, stride, padding)
    for _ in range(2):
        with pytest.raises(ValueError, match="padding must be >= 0"):
            conv.conv_shape(x, w, 1, -1)
