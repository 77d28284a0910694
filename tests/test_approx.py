"""dlcpu.approx (pyx/approx.pyx, pyx/kernels/approx_f32.h) and the recurrent cells' activation_impl.

K-TanH bf16/fp32 bit for bit against dlcpu._reference on every ISA path; the exact/fast/ktanh
flavours of tanh, sigmoid, swish and GELU forward and backward against their float64 twins,
finite differences and PyTorch; exp and Taylor softmax rows; LSTM/GRU/RNN with activation_impl
against flavour twins.

Tolerances used below, measured on the installed kernels (max over the inputs here):
  * element-wise forward, |got - twin| / max(1, |twin|): exact 2.2e-7, fast 1.1e-6 (the Pade's
    float32 evaluation near the clamp), ktanh 6e-8 once the twin is given the kernel's float32 inner
    argument -> asserted 1e-6 / 3e-6 / 1e-6;
  * fast tanh AVX-512 (rcp14 + one Newton step) vs scalar/AVX2 (true division): 2 ulp;
  * softmax rows, |p - twin| / max(twin in the row): 2.8e-7 -> 1e-6.
"""

import numpy as np
import pytest
from conftest import ISAS, assert_close, needs_torch, rel_l2

from dlcpu import _reference as ref
from dlcpu import approx, rnn
from dlcpu.approx.ktanh_table import PUBLISHED_TABLE, fit_ktanh_table

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
FLT_MAX = float(np.finfo(np.float32).max)
IMPLS = ("exact", "fast", "ktanh")
OPS = ("tanh", "sigmoid", "swish", "gelu")
#: a call that splits across two threads: the drivers' chunks are at least approx MIN_CHUNK = 8192
BIG = 3 * 8192 + 77
#: forward tolerance per flavour, |got - twin| / max(1, |twin|) (see the module docstring)
FWD_TOL = {"exact": 1e-6, "fast": 3e-6, "ktanh": 1e-6}
#: the largest step between neighbouring K-TanH outputs: one bf16 ulp of [0.5, 1) is 2^-8; the
#: steepest rows (shift 0, slope 1 in [0.25, 0.5) and t=16/24) step by at most 2^-7
KTANH_STEP = 2.0 ** -7


def f32_from_bits(bits):
    return np.asarray(bits, np.uint32).view(np.float32)


def bits_of(x):
    return np.asarray(x, np.float32).view(np.uint32)


def random_bits(rng, n):
    return rng.integers(0, 1 << 16, n).astype(np.uint16)


@pytest.fixture(scope="module")
def all_want():
    """ref.ktanh_bf16_bits over every bf16 pattern: out[p] is the twin's answer for pattern p."""
    return ref.ktanh_bf16_bits(ALL_BITS)


@pytest.fixture(scope="module")
def inputs():
    """float32 test points: wide uniform, standard normal, tiny magnitudes and the K-TanH
    thresholds with their float32 neighbours."""
    rng = np.random.default_rng(7)
    edges = np.array([0.25, 3.75, 4.97, 0.5, 1.0, 2.0], np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(10))])
    tiny = np.logspace(-30, -1, 200).astype(np.float32)
    x = np.concatenate([rng.uniform(-10, 10, 30000), rng.standard_normal(30000), tiny, near]).astype(np.float32)
    return np.concatenate([x, -x])


# ============================================================================ K-TanH, bf16 bits
@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_bf16_every_pattern(isa, all_want):
    got = approx.ktanh(ALL_BITS, isa=isa)
    assert got.dtype == np.uint16 and got.shape == ALL_BITS.shape
    assert np.array_equal(got, all_want)
    # the same patterns in other vector lanes (and a tail that is not a multiple of 32)
    rolled = np.roll(ALL_BITS, 7)[:-5]
    assert np.array_equal(approx.ktanh(rolled, isa=isa), all_want[rolled])


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_bfloat16_dtype(isa, all_want):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = ALL_BITS.view(ml_dtypes.bfloat16)
    y = approx.ktanh(x, isa=isa)
    assert y.dtype == ml_dtypes.bfloat16 and y.shape == x.shape
    assert np.array_equal(y.view(np.uint16), all_want)
    # papers.md 1.4: max abs error 8.92e-3 against float64 tanh over the finite inputs
    finite = np.isfinite(x.astype(np.float32))
    xv = x[finite].astype(np.float64)
    err = np.abs(y[finite].astype(np.float64) - np.tanh(xv))
    assert 8.9e-3 < err.max() < 8.93e-3


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 65, 100003])
def test_ktanh_bf16_lengths(isa, n, all_want, rng):
    """Lengths around the 16/32/64-lane loops; the output is a prefix of a larger buffer so that
    a tail store past n is seen."""
    x = random_bits(rng, n)
    buf = np.full(n + 67, 0xABCD, np.uint16)
    y = approx.ktanh(x, out=buf[:n], isa=isa)
    assert y.shape == (n,) and np.array_equal(y, all_want[x])
    assert np.all(buf[n:] == 0xABCD), "K-TanH wrote past the end of its output"
    xf = f32_from_bits(rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32))
    fbuf = np.full(n + 17, 7.0, np.float32)
    approx.ktanh(xf, out=fbuf[:n], isa=isa)
    assert np.array_equal(bits_of(fbuf[:n]), bits_of(ref.ktanh_f32(xf)))
    assert np.all(fbuf[n:] == 7.0)


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_bf16_strided_and_2d(isa, all_want, rng):
    x = random_bits(rng, 64 * 257).reshape(64, 257)
    for view in (x, x[:, ::3], x.T, x[::-1, 5:], x[7]):
        y = approx.ktanh(view, isa=isa)
        assert y.shape == view.shape and y.flags.c_contiguous
        assert np.array_equal(y, all_want[view])
    xf = rng.uniform(-5, 5, (33, 17)).astype(np.float32)
    for view in (xf, xf.T, xf[:, ::2]):
        y = approx.ktanh(view, isa=isa)
        assert y.shape == view.shape and np.array_equal(bits_of(y), bits_of(ref.ktanh_f32(view)))


def test_ktanh_threads_bitwise(rng, all_want):
    x = random_bits(rng, BIG)
    one = approx.ktanh(x, n_threads=1)
    two = approx.ktanh(x, n_threads=2)
    assert np.array_equal(one, two) and np.array_equal(one, all_want[x])
    xf = rng.uniform(-5, 5, BIG).astype(np.float32)
    assert np.array_equal(bits_of(approx.ktanh(xf, n_threads=1)), bits_of(approx.ktanh(xf, n_threads=2)))


def test_ktanh_out_reused(rng, all_want):
    x1, x2 = random_bits(rng, 1000), random_bits(rng, 1000)
    out = np.empty(1000, np.uint16)
    # (the bits path returns a view of `out`, not `out` itself as the float32 path and NumPy do)
    for x in (x1, x2):
        y = approx.ktanh(x, out=out)
        assert np.shares_memory(y, out) and np.array_equal(out, all_want[x])
    xf = rng.uniform(-5, 5, (10, 100)).astype(np.float32)
    outf = np.empty((10, 100), np.float32)
    assert approx.ktanh(xf, out=outf) is outf
    assert np.array_equal(bits_of(outf), bits_of(ref.ktanh_f32(xf)))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    xb, outb = x1.view(ml_dtypes.bfloat16), np.empty(1000, ml_dtypes.bfloat16)
    y = approx.ktanh(xb, out=outb)
    assert y.dtype == ml_dtypes.bfloat16 and np.shares_memory(y, outb)
    assert np.array_equal(outb.view(np.uint16), all_want[x1])


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_ktanh_bad_out(dtype, rng):
    x = random_bits(rng, 100) if dtype == np.uint16 else rng.uniform(-1, 1, 100).astype(np.float32)
    other = np.float32 if dtype == np.uint16 else np.uint16
    read_only = np.empty(100, dtype)
    read_only.setflags(write=False)
    bad = {"dtype": np.empty(100, other), "int16": np.empty(100, np.int16), "shape": np.empty(99, dtype),
           "2-D": np.empty((10, 10), dtype), "strided": np.empty(200, dtype)[::2], "read-only": read_only,
           "list": [0] * 100}
    for what, out in bad.items():
        with pytest.raises(ValueError, match="out"):
            approx.ktanh(x, out=out)
        if what != "list":
            assert not np.shares_memory(out, x)


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_fitted_table(isa, all_want, rng):
    fitted = fit_ktanh_table()
    got = approx.ktanh(ALL_BITS, table=fitted, isa=isa)
    assert np.array_equal(got, ref.ktanh_bf16_bits(ALL_BITS, fitted))
    assert not np.array_equal(got, all_want), "the fitted table differs from the published one on 5 rows"
    assert np.array_equal(approx.ktanh(ALL_BITS, table=PUBLISHED_TABLE, isa=isa), all_want)
    xf = rng.uniform(-4, 4, 5000).astype(np.float32)
    assert np.array_equal(bits_of(approx.ktanh(xf, table=fitted, isa=isa)), bits_of(ref.ktanh_f32(xf, fitted)))


def test_ktanh_table_and_dtype_errors():
    with pytest.raises(ValueError, match="mantissa_bits=10"):
        approx.ktanh(ALL_BITS, table=fit_ktanh_table(mantissa_bits=10))
    with pytest.raises(ValueError, match="thresholds"):
        approx.ktanh(ALL_BITS, table=fit_ktanh_table(thresholds=(0.25, 3.5)))
    with pytest.raises(TypeError, match="KTanhTable"):
        approx.ktanh(ALL_BITS, table=PUBLISHED_TABLE.combined())
    for bad in (np.zeros(3, np.float64), np.zeros(3, np.int16), np.zeros(3, np.int32), np.zeros(3, bool)):
        with pytest.raises(TypeError, match=str(bad.dtype)):
            approx.ktanh(bad)
    assert approx.ktanh(np.zeros(0, np.uint16)).shape == (0,)
    assert approx.ktanh(np.zeros((3, 0), np.float32)).shape == (3, 0)


#: papers.md 1.4 regression vectors: x -> K-TanH(x) with the published table
VECTORS = [(0.5, 0.46875), (2.0, 0.96484375), (1.0, 0.75390625), (3.75, 0.99609375), (0.2, 0.2), (8.5, 1.0)]


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_regression_vectors(isa):
    xs = np.array([s * v for v, _ in VECTORS for s in (1, -1)], np.float32)
    want = np.array([s * w for _, w in VECTORS for s in (1, -1)], np.float32)
    # float32 path: 0.2 is in the identity region and comes back exactly
    assert np.array_equal(approx.ktanh(xs, isa=isa), want)
    assert np.array_equal(approx.tanh(xs, "ktanh", isa=isa), want)
    # bits path: the bf16 truncation of each x (0.2 truncates to 0.19921875, still identity)
    xb = (bits_of(xs) >> 16).astype(np.uint16)
    wb = (bits_of(np.where(np.abs(xs) == np.float32(0.2), f32_from_bits(xb.astype(np.uint32) << 16), want))
          >> 16).astype(np.uint16)
    assert np.array_equal(approx.ktanh(xb, isa=isa), wb)
    assert approx.ktanh(np.array([0x3F00], np.uint16), isa=isa)[0] == 0x3EF0  # 0.5 -> Et=125, Mo=112


# ============================================================================ K-TanH, fp32
def special_f32():
    """Special float32 bit patterns and the boundaries of K-TanH's three regions."""
    pos = np.array([0.25, 3.75, FLT_MAX, 1e-45, 1e-40, 1.1754942e-38, 1.17549435e-38, 1.0, 2.0, 4.0, 0.5,
                    np.inf], np.float32)
    nb = np.concatenate([np.nextafter(pos[:2], np.float32(0)), np.nextafter(pos[:2], np.float32(np.inf))])
    vals = bits_of(np.concatenate([pos, nb, [0.0]]).astype(np.float32))
    nans = np.array([0x7FC00000, 0x7FC12345, 0x7F800001, 0x7FBFFFFF, 0x7FFFFFFF], np.uint32)
    u = np.concatenate([vals, nans])
    return np.concatenate([u, u | 0x80000000]).astype(np.uint32)


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_f32_random_and_special(isa, rng):
    u = np.concatenate([special_f32(), rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32),
                        bits_of(rng.uniform(-5, 5, 20000).astype(np.float32))])
    x = f32_from_bits(u)
    got = bits_of(approx.ktanh(x, isa=isa))
    assert np.array_equal(got, bits_of(ref.ktanh_f32(x)))
    # the spec, spelled out on the special values
    s = special_f32()
    y = bits_of(approx.ktanh(f32_from_bits(s), isa=isa))
    by = dict(zip(s.tolist(), y.tolist()))
    assert by[0x00000000] == 0x00000000 and by[0x80000000] == 0x80000000            # +-0 bitwise
    assert by[0x7F800000] == 0x3F800000 and by[0xFF800000] == 0xBF800000            # +-Inf -> +-1
    for nan in (0x7FC12345, 0x7F800001, 0xFFBFFFFF, 0xFFFFFFFF):                     # payload kept
        assert by[nan] == nan
    below = int(bits_of(np.nextafter(np.float32(0.25), np.float32(0))))
    assert by[below] == below                                                       # identity
    above = int(bits_of(np.nextafter(np.float32(3.75), np.float32(4))))
    assert by[above] == 0x3F800000 and by[above | 0x80000000] == 0xBF800000         # saturation
    assert by[int(bits_of(np.float32(3.75)))] == int(bits_of(np.float32(0.99609375)))
    assert by[int(bits_of(np.float32(FLT_MAX)))] == 0x3F800000
    assert by[1] == 1 and by[0x80000001] == 0x80000001                              # denormals


@pytest.mark.parametrize("isa", ISAS)
def test_ktanh_f32_identity_and_table_regions(isa, rng):
    small = np.concatenate([rng.uniform(-0.25, 0.25, 10000), np.logspace(-45, -1, 300)]).astype(np.float32)
    small = small[np.abs(small) < 0.25]
    small = np.concatenate([small, -small])
    assert np.array_equal(bits_of(approx.ktanh(small, isa=isa)), bits_of(small))
    assert np.array_equal(bits_of(approx.tanh(small, "ktanh", isa=isa)), bits_of(small))
    mid = rng.uniform(0.25, 3.75, 10000).astype(np.float32)
    mid = np.concatenate([mid, -mid])
    y = bits_of(approx.ktanh(mid, isa=isa))
    assert np.all(y & 0xFFFF == 0), "a table-region result is a bf16 value"
    # the fp32 path reads the bf16 truncation: the same as the bits path
    table_bits = approx.ktanh((bits_of(mid) >> 16).astype(np.uint16), isa=isa)
    assert np.array_equal(y >> 16, table_bits)
    assert np.array_equal(bits_of(approx.tanh(mid, "ktanh", isa=isa)), y)


# ============================================================================ flavours: twins
def call(op, x, impl, isa, beta=1.0, **kw):
    if op == "swish":
        return approx.swish(x, beta, impl=impl, isa=isa, **kw)
    return getattr(approx, op)(x, impl=impl, isa=isa, **kw)


def scaled_err(got, want):
    return np.abs(np.asarray(got, np.float64) - want) / np.maximum(1.0, np.abs(want))


CASES = [(op, 1.0) for op in OPS] + [("swish", 1.7)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op, beta", CASES, ids=["tanh", "sigmoid", "swish", "gelu", "swish-1.7"])
def test_forward_vs_twin(isa, impl, op, beta, inputs):
    y = call(op, inputs, impl, isa, beta)
    assert y.dtype == np.float32 and y.shape == inputs.shape
    err = scaled_err(y, ref.kernel_flavour(op, inputs, impl, beta))
    assert err.max() < FWD_TOL[impl], f"max scaled error {err.max():.2e}"
    # the plain float64 twins of dlcpu._reference (inner argument formed in float64): for ktanh a
    # few arguments land on the other side of a bf16 truncation boundary, each off by at most one
    # K-TanH step times the outer factor (1/2 for sigmoid, |x|/2 for swish/GELU)
    x64 = inputs.astype(np.float64)
    plain = {"tanh": lambda: ref.tanh_flavour(x64, impl), "sigmoid": lambda: ref.sigmoid_flavour(x64, impl),
             "swish": lambda: ref.swish_flavour(x64, impl, beta), "gelu": lambda: ref.gelu_flavour(x64, impl)}[op]()
    diff = np.abs(y - plain)
    if impl == "ktanh":
        off = scaled_err(y, plain) > FWD_TOL[impl]
        assert off.mean() < 1e-3, f"{off.sum()} of {off.size} differ"
        outer = {"tanh": 1.0, "sigmoid": 0.5}.get(op, None)
        bound = KTANH_STEP * (outer if outer else 0.5 * np.abs(x64)) + 1e-6 * np.maximum(1, np.abs(plain))
        assert np.all(diff <= bound)
    else:
        assert scaled_err(y, plain).max() < FWD_TOL[impl] * (2 if op == "swish" and beta != 1.0 else 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_flavours_really_differ(impl, inputs):
    """Each flavour is what it says: its error against exact tanh is that of the method (K-TanH on
    float32 inputs: the table's 8.92e-3 at bf16 points plus the truncation of x to bf16, 1.18e-2
    measured here)."""
    err = np.abs(approx.tanh(inputs, impl).astype(np.float64) - np.tanh(inputs.astype(np.float64))).max()
    lo, hi = {"exact": (0, 3e-7), "fast": (9e-5, 1e-4), "ktanh": (8.9e-3, 1.3e-2)}[impl]
    assert lo <= err < hi, err


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op, beta", CASES, ids=["tanh", "sigmoid", "swish", "gelu", "swish-1.7"])
def test_backward_vs_analytic_twin(isa, impl, op, beta, inputs, rng):
    dy = rng.uniform(-1, 1, inputs.shape).astype(np.float32)
    d64 = dy.astype(np.float64)
    if op in ("tanh", "sigmoid"):
        y = call(op, inputs, impl, isa)
        bwd = getattr(approx, f"{op}_backward")
        dx = bwd(dy, y, isa=isa)
        y64 = y.astype(np.float64)
        want = d64 * ((1 - y64 * y64) if op == "tanh" else y64 * (1 - y64))
        assert scaled_err(dx, want).max() < 1e-6
        if impl == "exact":  # against the derivative of x itself (y's own error ~2e-7 enters)
            x64 = inputs.astype(np.float64)
            dt = (1 - np.tanh(x64) ** 2) if op == "tanh" else ref.sigmoid_grad(x64)
            assert np.abs(dx - d64 * dt).max() < 1e-6
        return
    if op == "swish":
        dx = approx.swish_backward(dy, inputs, beta, impl=impl, isa=isa)
    else:
        dx = approx.gelu_backward(dy, inputs, impl=impl, isa=isa)
    assert dx.dtype == np.float32 and dx.shape == inputs.shape
    want = d64 * ref.kernel_flavour_grad(op, inputs, impl, beta)
    err = scaled_err(dx, want)
    assert err.max() < 3 * FWD_TOL[impl], f"max scaled error {err.max():.2e}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("op, beta", CASES, ids=["tanh", "sigmoid", "swish", "gelu", "swish-1.7"])
def test_backward_finite_differences(isa, op, beta, rng):
    """Central differences of the exact flavour's forward (float32, step 1e-2 measured between
    the float32 neighbours actually used) against the backward."""
    x = np.concatenate([rng.uniform(-6, 6, 2000), rng.standard_normal(2000)]).astype(np.float32)
    h = 1e-2
    xp, xm = (x + np.float32(h)).astype(np.float32), (x - np.float32(h)).astype(np.float32)
    fd = ((call(op, xp, "exact", isa, beta).astype(np.float64) - call(op, xm, "exact", isa, beta))
          / (xp.astype(np.float64) - xm))
    dy = np.ones_like(x)
    if op in ("tanh", "sigmoid"):
        dx = getattr(approx, f"{op}_backward")(dy, call(op, x, "exact", isa), isa=isa)
    elif op == "swish":
        dx = approx.swish_backward(dy, x, beta, isa=isa)
    else:
        dx = approx.gelu_backward(dy, x, isa=isa)
    assert np.abs(dx - fd).max() < 2e-4


@pytest.mark.parametrize("isa", ISAS)
def test_fast_tanh_accuracy(isa):
    x = np.linspace(-9, 9, 1_000_001).astype(np.float32)
    y = approx.tanh(x, "fast", isa=isa)
    err = np.abs(y - np.tanh(x.astype(np.float64)))
    assert err.max() < 1.0e-4
    assert np.abs(y - ref.tanh_pade(x)).max() < 5e-7
    assert np.all(np.abs(y[np.abs(x) > 4.97]) == 1.0) and np.all(np.abs(y) <= 1.0)


def test_fast_tanh_paths_agree():
    """The scalar and AVX2 fast tanh divide and use the same FMA order: bitwise equal.  AVX-512
    multiplies by rcp14 + one Newton step instead: within 2 ulp of them (measured max: 2)."""
    x = np.linspace(-6, 6, 400_001).astype(np.float32)
    base = approx.tanh(x, "fast", isa="scalar")
    if "avx2" in ISAS:
        assert np.array_equal(approx.tanh(x, "fast", isa="avx2"), base)
    if "avx512" not in ISAS:
        pytest.skip("no AVX-512 on this CPU")
    y = approx.tanh(x, "fast", isa="avx512")
    ulps = np.abs(bits_of(y).view(np.int32).astype(np.int64) - bits_of(base).view(np.int32))
    assert ulps.max() <= 2
    assert np.array_equal(np.sign(y), np.sign(base))


def test_ktanh_tanh_same_on_every_isa(inputs):
    ys = [bits_of(approx.tanh(inputs, "ktanh", isa=isa)) for isa in ISAS]
    for y in ys[1:]:
        assert np.array_equal(y, ys[0])


NONFINITE = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, FLT_MAX, -FLT_MAX, 1e-40, -1e-40, 100.0, -100.0,
                      1e30, -1e30], np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_and_extreme_inputs(isa, impl, op):
    """NaN -> NaN; +-Inf and huge values give what the float64 twins give: tanh +-1, sigmoid 0/1,
    swish(+inf) = +inf and swish(-inf) = -inf * 0 = NaN (as torch.nn.functional.silu), gelu the same,
    swish/gelu of -FLT_MAX (-)0."""
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.kernel_flavour(op, NONFINITE, impl)
    y = call(op, NONFINITE, impl, isa)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.isnan(y[0])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", IMPLS)
def test_tanh_keeps_the_sign_of_zero(isa, impl):
    y = approx.tanh(np.array([0.0, -0.0], np.float32), impl, isa=isa)
    assert bits_of(y).tolist() == [0, 0x80000000]


def test_empty_inputs():
    for shape in [(0,), (3, 0), (0, 4, 2)]:
        x = np.zeros(shape, np.float32)
        for op in OPS:
            for impl in IMPLS:
                assert call(op, x, impl, None).shape == shape
        assert approx.tanh_backward(x, x).shape == shape and approx.sigmoid_backward(x, x).shape == shape
        assert approx.swish_backward(x, x, 1.5).shape == shape and approx.gelu_backward(x, x, "ktanh").shape == shape
        assert approx.ktanh(np.zeros(shape, np.uint16)).shape == shape


def test_dtypes(inputs):
    x = inputs[:1000]
    for op in OPS:
        want = call(op, x, "exact", None)
        for dt in (np.float64, np.float16):
            xc = x.astype(dt)
            got = call(op, xc, "exact", None)
            assert got.dtype == np.float32
            assert np.array_equal(got, call(op, xc.astype(np.float32), "exact", None))
        assert np.array_equal(call(op, x.astype(np.float64), "exact", None), want)
        assert np.array_equal(call(op, list(x[:10].astype(float)), "exact", None), want[:10])
        for bad in (np.arange(5, dtype=np.int32), np.ones(5, bool), np.ones(5, np.complex64), np.arange(3, dtype=np.uint16)):
            with pytest.raises(TypeError, match=f"dtype {bad.dtype}"):
                call(op, bad, "exact", None)
    with pytest.raises(TypeError, match="dy must be a floating-point array, got dtype int64"):
        approx.gelu_backward(np.arange(4), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="x must be a floating-point array, got dtype bool"):
        approx.swish_backward(np.zeros(4, np.float32), np.ones(4, bool))


def test_unknown_impl():
    x = np.zeros(4, np.float32)
    calls = [lambda i: approx.tanh(x, i), lambda i: approx.sigmoid(x, i), lambda i: approx.swish(x, impl=i),
             lambda i: approx.gelu(x, i), lambda i: approx.swish_backward(x, x, impl=i),
             lambda i: approx.gelu_backward(x, x, impl=i)]
    for f in calls:
        for bad in ("bogus", "Exact", None, 1):
            with pytest.raises(ValueError, match=r"impl must be one of 'exact', 'fast', 'ktanh', got " + repr(bad)):
                f(bad)
    assert approx.IMPLS == IMPLS


def test_backward_shape_mismatch():
    dy, s = np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float32)
    for name, f in [("tanh_backward", approx.tanh_backward), ("sigmoid_backward", approx.sigmoid_backward),
                    ("swish_backward", approx.swish_backward), ("gelu_backward", approx.gelu_backward)]:
        saved = "y" if name in ("tanh_backward", "sigmoid_backward") else "x"
        with pytest.raises(ValueError, match=rf"{name}: .*dy \(3, 4\) and {saved} \(4, 3\)"):
            f(dy, s)
    with pytest.raises(ValueError, match=r"dy \(12,\) and y \(3, 4\)"):
        approx.tanh_backward(dy.ravel(), dy)


def test_beta():
    x = np.linspace(-3, 3, 101).astype(np.float32)
    for bad in (float("nan"), float("inf"), -float("inf"), np.float32("nan"), "1", None, True):
        with pytest.raises(ValueError, match="beta must be a finite number"):
            approx.swish(x, bad)
        with pytest.raises(ValueError, match="beta must be a finite number"):
            approx.swish_backward(x, x, bad)
    # beta really enters: beta=0 gives x/2, integer beta accepted
    assert np.array_equal(approx.swish(x, 0), 0.5 * x)
    assert np.array_equal(approx.swish(x, 2), approx.swish(x, 2.0))
    assert not np.array_equal(approx.swish(x, 1.7), approx.swish(x, 1.0))


def test_activation_out_and_threads(rng):
    x = rng.uniform(-6, 6, BIG).astype(np.float32)
    dy = rng.uniform(-1, 1, BIG).astype(np.float32)
    for op in OPS:
        for impl in IMPLS:
            one = call(op, x, impl, None, n_threads=1)
            assert np.array_equal(one, call(op, x, impl, None, n_threads=2))
            out = np.empty_like(x)
            assert call(op, x, impl, None, out=out) is out and np.array_equal(out, one)
    assert np.array_equal(approx.gelu_backward(dy, x, "fast", n_threads=1), approx.gelu_backward(dy, x, "fast", n_threads=2))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32"):
        approx.tanh(x, out=np.empty(BIG, np.float64))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32"):
        approx.gelu_backward(dy, x, out=np.empty(2 * BIG, np.float32)[::2])


def test_out_partly_overlapping_an_input_is_refused(rng):
    """out= may be an input itself (in place) but not a shifted view of it: the kernels would read
    elements they already wrote (tanh(buf[:-1], out=buf[1:]) changed 6248 of 10^5 values)."""
    buf = rng.uniform(-3, 3, BIG + 8).astype(np.float32)
    bits = buf.view(np.uint16)
    calls = {"tanh": lambda: approx.tanh(buf[:-1], "fast", out=buf[1:]),
             "swish": lambda: approx.swish(buf[1:], out=buf[:-1]),
             "gelu_backward": lambda: approx.gelu_backward(buf[:-8], buf[8:], out=buf[4:-4]),
             "tanh_backward": lambda: approx.tanh_backward(buf[8:], buf[:-8], out=buf[4:-4]),
             "ktanh": lambda: approx.ktanh(bits[:-1], out=bits[1:]),
             "softmax": lambda: approx.softmax(buf[:4000].reshape(4, 1000), "taylor:4",
                                               out=buf[1000:5000].reshape(4, 1000))}
    before = buf.copy()
    for fn, refused in calls.items():
        with pytest.raises(ValueError, match=rf"{fn}: out partly overlaps"):
            refused()
    assert np.array_equal(buf, before, equal_nan=True), "a refused call wrote to out"
    # in place stays allowed and exact, element-wise and by rows, on two threads
    x = rng.uniform(-5, 5, BIG).astype(np.float32)
    for op in OPS:
        want, y = call(op, x, "ktanh", None), x.copy()
        assert call(op, y, "ktanh", None, out=y, n_threads=2) is y and np.array_equal(y, want)
    d = rng.uniform(-1, 1, BIG).astype(np.float32)
    want, y = approx.gelu_backward(d, x, "fast"), d.copy()
    assert np.array_equal(approx.gelu_backward(y, x, "fast", out=y), want)
    z = rng.standard_normal((40, 1000)).astype(np.float32)
    want, zz = approx.softmax(z, "taylor:6"), z.copy()
    assert np.array_equal(approx.softmax(zz, "taylor:6", out=zz, n_threads=2), want)
    b = random_bits(rng, BIG)
    want, bb = approx.ktanh(b), b.copy()
    assert np.array_equal(approx.ktanh(bb, out=bb), want)


def test_impossible_sizes_are_refused_before_allocating():
    """A 2^40-element np.broadcast_to view costs nothing to make; converting it (or allocating the
    result) used to end in numpy's MemoryError.  Now: a ValueError naming the function and size."""
    huge = np.broadcast_to(np.float32(1), (1 << 40,))
    rows = np.broadcast_to(np.float32(1), (1 << 20, 1 << 20))
    calls = [("tanh", lambda: approx.tanh(huge)), ("gelu", lambda: approx.gelu(np.broadcast_to(1.0, (1 << 40,)))),
             ("ktanh", lambda: approx.ktanh(huge)),
             ("ktanh", lambda: approx.ktanh(np.broadcast_to(np.uint16(0x3F00), (1 << 40,)))),
             ("gelu_backward", lambda: approx.gelu_backward(huge, huge)),
             ("softmax", lambda: approx.softmax(rows)), ("softmax_backward", lambda: approx.softmax_backward(rows, rows))]
    for fn, huge_call in calls:
        with pytest.raises(ValueError, match=rf"^{fn}: .*shape \(.*would need .* GiB, more than this machine"):
            huge_call()


def test_threads_and_isa_errors_name_the_function():
    x = np.zeros((2, 3), np.float32)
    calls = {"tanh": lambda **kw: approx.tanh(x, **kw), "ktanh": lambda **kw: approx.ktanh(x, **kw),
             "gelu_backward": lambda **kw: approx.gelu_backward(x, x, **kw),
             "softmax": lambda **kw: approx.softmax(x, **kw), "softmax_backward": lambda **kw: approx.softmax_backward(x, x, **kw)}
    for fn, f in calls.items():
        for bad, exc in [(0, ValueError), (-1, ValueError), (10**9, ValueError), (True, TypeError), (2.5, TypeError)]:
            with pytest.raises(exc, match=rf"^{fn}: n_threads"):
                f(n_threads=bad)
        for bad in ("avx9", 3):
            with pytest.raises(ValueError, match=rf"^{fn}: isa="):
                f(isa=bad)


def test_beta_must_stay_finite_in_float32():
    """The kernels take a float beta: 1e39 became inf there, swish(0) = 0 * sigmoid(inf * 0) NaN and
    every swish_backward NaN, where the float64 twin gives 0 and finite gradients."""
    x = np.linspace(-3, 3, 11).astype(np.float32)
    for bad in (1e39, -1e39, 10**400, np.float64(3.5e38)):
        for f in (lambda b: approx.swish(x, b), lambda b: approx.swish_backward(x, x, b)):
            with pytest.raises(ValueError, match=r"beta must be a finite number with \|beta\| <= 3\.40282e\+38"):
                f(bad)
    assert np.isfinite(approx.swish(x, 3e38)).all()


def test_bench_act_checks_every_option_with_accuracy():
    """`dlcpu bench act --accuracy` used to run the accuracy tables and ignore bad --sizes,
    --softmax, --layers, --threads and --compare values; now they are exit 2 first."""
    import subprocess
    import sys

    for args, needle in [(["--sizes", "abc"], "'--sizes'"), (["--softmax", "4096"], "'--softmax'"),
                         (["--layers", "nosuchrow"], "'--layers'"), (["--threads", "0"], "'--threads'"),
                         (["--compare", "jax"], "'--compare'")]:
        res = subprocess.run([sys.executable, "-m", "dlcpu", "bench", "act", "--accuracy", *args], cwd="/",
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


# ============================================================================ against PyTorch
@needs_torch
@pytest.mark.parametrize("isa", ISAS)
def test_exact_flavour_against_torch(isa, inputs, rng):
    """float64 torch on the same float32 inputs.  rtol 1e-6 plus an absolute floor: the backward
    reads y (1 - y^2 cancels where |y| ~ 1) and GELU's 1 + tanh cancels for x < 0, so values that
    are tiny come with errors of a few 1e-7 in absolute terms."""
    import torch
    import torch.nn.functional as F

    x = inputs[np.abs(inputs) < 20]
    dy = rng.uniform(-1, 1, x.shape).astype(np.float32)
    peers = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "swish": F.silu,
             "gelu": lambda t: F.gelu(t, approximate="tanh")}
    for op, peer in peers.items():
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        yt = peer(xt)
        yt.backward(torch.from_numpy(dy.astype(np.float64)))
        y = call(op, x, "exact", isa)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=op)
        if op in ("tanh", "sigmoid"):
            dx = getattr(approx, f"{op}_backward")(dy, y, isa=isa)
        else:
            dx = getattr(approx, f"{op}_backward")(dy, x, isa=isa)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"{op} backward")
    # silu(-inf) = -inf * 0 = NaN in torch and in the twin; ours must agree
    inf = torch.tensor([-np.inf, np.inf, np.nan])
    ours = approx.swish(inf.numpy(), isa=isa)
    np.testing.assert_array_equal(ours, F.silu(inf).numpy())


# ============================================================================ softmax family
KINDS = ["softmax"] + [f"taylor:{n}" for n in approx.TAYLOR_ORDERS]
SHAPES = [(1, 1), (3, 15), (3, 16), (3, 17), (64, 1000), (7, 33)]


def softmax_twin(z, kind):
    if kind == "softmax":
        return ref.softmax(z)
    return ref.taylor_softmax(z, int(kind.split(":")[1]))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_softmax_vs_twin(isa, kind, rng):
    for shape in SHAPES:
        z = (rng.standard_normal(shape) * 3).astype(np.float32)
        p = approx.softmax(z, kind, isa=isa)
        want = softmax_twin(z, kind)
        assert p.dtype == np.float32 and p.shape == shape
        err = np.abs(p - want) / want.max(axis=1, keepdims=True)
        assert err.max() < 1e-6, (shape, err.max())
        assert np.all(p > 0) and np.abs(p.sum(axis=1, dtype=np.float64) - 1).max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_softmax_threads_bitwise(kind, rng):
    z = (rng.standard_normal((4096, 64)) * 2).astype(np.float32)
    one = approx.softmax(z, kind, n_threads=1)
    assert np.array_equal(one, approx.softmax(z, kind, n_threads=2))
    out = np.empty_like(z)
    assert approx.softmax(z, kind, out=out, n_threads=2) is out and np.array_equal(out, one)


def test_softmax_kind_errors():
    z = np.zeros((2, 3), np.float32)
    for n in (1, 3, 5, 7, 9):
        with pytest.raises(ValueError, match="odd"):
            approx.softmax(z, f"taylor:{n}")
        with pytest.raises(ValueError, match="odd"):
            approx.softmax_backward(z, z, f"taylor:{n}")
        with pytest.raises(ValueError, match="odd"):
            approx.check_taylor_order(n, "f")
    for kind in ("taylor:12", "taylor:0", "taylor:-2"):
        with pytest.raises(ValueError, match="even integer from 2 to 10"):
            approx.softmax(z, kind)
    for kind in ("taylor:x", "taylor:", "exp", "", None):
        with pytest.raises(ValueError, match="kind"):
            approx.softmax(z, kind)
    for kind in ("sm-taylor:4:0.4", "sm-softmax:0.2"):
        with pytest.raises(ValueError, match="softmax_cross_entropy"):
            approx.softmax(z, kind)
        with pytest.raises(ValueError, match="softmax_cross_entropy"):
            approx.parse_softmax_kind(kind)
    with pytest.raises(TypeError, match="integer"):
        approx.check_taylor_order(4.0, "f")
    assert approx.parse_softmax_kind("taylor:6") == ("taylor", 6)
    assert approx.parse_softmax_kind("softmax") == ("softmax", None)
    with pytest.raises(ValueError, match=r"dp \(2, 4\) and z \(2, 3\)"):
        approx.softmax_backward(np.zeros((2, 4), np.float32), z)
    with pytest.raises(ValueError, match="gradient must be 'exact' or 'softmax'"):
        approx.softmax_backward(z, z, "taylor:2", gradient="taylor")
    with pytest.raises(TypeError, match="dtype int64"):
        approx.softmax(np.zeros((2, 3), np.int64))


def test_softmax_degenerate_shapes():
    """No rows, no classes, no axis: empty results of the input's shape, or a ValueError that says so."""
    assert approx.softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert approx.softmax_backward(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)).shape == (0, 5)
    for kind in ("softmax", "taylor:2"):
        assert approx.softmax(np.zeros((3, 0), np.float32), kind).shape == (3, 0)
        assert approx.softmax(np.zeros((2, 0, 4), np.float32), kind).shape == (2, 0, 4)
    with pytest.raises(ValueError, match="scalar"):
        approx.softmax(np.float32(1.0))


def test_zero_dim_inputs_keep_their_shape():
    """'results have the input's shape': a 0-d input gives a 0-d result."""
    x = np.float32(0.5)
    for op in OPS:
        for impl in IMPLS:
            y = call(op, x, impl, None)
            assert y.shape == (), (op, impl, y.shape)
    assert approx.tanh(0.5).shape == ()
    assert approx.ktanh(x).shape == () and approx.ktanh(np.uint16(0x3F00)).shape == ()
    assert approx.tanh_backward(x, x).shape == () and approx.gelu_backward(x, x).shape == ()


@pytest.mark.parametrize("isa", ISAS)
def test_shift_invariance(isa, rng):
    z = rng.standard_normal((5, 37)).astype(np.float32)
    zs = z + np.float32(5)
    assert np.abs(approx.softmax(z, isa=isa) - approx.softmax(zs, isa=isa)).max() < 1e-6
    for kind in KINDS[1:]:
        a, b = approx.softmax(z, kind, isa=isa), approx.softmax(zs, kind, isa=isa)
        assert np.abs(a - b).max() > 1e-3, kind
        assert np.abs(b - softmax_twin(zs, kind)).max() < 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gradient", ["exact", "softmax"])
def test_softmax_backward_vs_twin(isa, kind, gradient, rng):
    for shape in SHAPES:
        z = (rng.standard_normal(shape) * 2).astype(np.float32)
        dp = rng.uniform(-1, 1, shape).astype(np.float32)
        dz = approx.softmax_backward(dp, z, kind, gradient=gradient, isa=isa)
        assert dz.dtype == np.float32 and dz.shape == shape
        if kind == "softmax":
            p = ref.softmax(z)
            want = p * (dp - (dp * p).sum(axis=1, keepdims=True))
        else:
            want = ref.taylor_softmax_backward(dp, z, int(kind.split(":")[1]), gradient)
        scale = np.abs(want).max(axis=1, keepdims=True) + 1e-30
        assert (np.abs(dz - want) / scale).max() < 2e-5, shape


@pytest.mark.parametrize("kind", KINDS)
def test_softmax_backward_finite_differences(kind, rng):
    """d/dz of sum(dp * softmax(z)) by central differences of the float32 forward.  'exact' is the
    derivative; 'softmax' (f_n treated as exp, the paper's rule) is the derivative only for exp."""
    z = rng.standard_normal((4, 13)).astype(np.float32)
    dp = rng.uniform(-1, 1, z.shape).astype(np.float32)
    v = rng.standard_normal(z.shape).astype(np.float32)
    eps = 1e-2

    def loss(zz):
        return float((approx.softmax(zz.astype(np.float32), kind).astype(np.float64) * dp).sum())

    fd = (loss(z + eps * v) - loss(z - eps * v)) / (2 * eps)
    exact = float((approx.softmax_backward(dp, z, kind, "exact").astype(np.float64) * v).sum())
    rule = float((approx.softmax_backward(dp, z, kind, "softmax").astype(np.float64) * v).sum())
    assert abs(fd - exact) <= 2e-3 * abs(exact) + 2e-4, (fd, exact)
    if kind == "softmax":
        assert abs(fd - rule) <= 2e-3 * abs(rule) + 2e-4
    elif kind in ("taylor:2", "taylor:4"):  # (for higher orders f_n ~ f_(n-1) on these z: too close to tell)
        assert abs(fd - rule) > 1e-2 * abs(fd), "the 'softmax' rule is not f_n's derivative"


@pytest.mark.parametrize("kind", ["softmax", "taylor:4"])
def test_softmax_3d(kind, rng):
    z = rng.standard_normal((2, 3, 17)).astype(np.float32)
    dp = rng.uniform(-1, 1, z.shape).astype(np.float32)
    p = approx.softmax(z, kind)
    assert p.shape == z.shape
    assert np.array_equal(p, approx.softmax(z.reshape(6, 17), kind).reshape(z.shape))
    assert np.array_equal(approx.softmax(z[0, 1], kind), p[0, 1])
    dz = approx.softmax_backward(dp, z, kind)
    assert dz.shape == z.shape
    assert np.array_equal(dz, approx.softmax_backward(dp.reshape(6, 17), z.reshape(6, 17), kind).reshape(z.shape))
    # a non-contiguous view along the last axis
    zt = np.ascontiguousarray(z.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert np.array_equal(approx.softmax(zt, kind), p)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_softmax_nonfinite_rows(isa, kind, rng):
    """Huge logits overflow f_n (Taylor: never shifted) to inf and the row to NaN, without a crash
    and without touching other rows; exp softmax shifts and stays a one-hot; NaN poisons its row only."""
    z = rng.standard_normal((4, 21)).astype(np.float32)
    clean = approx.softmax(z, kind, isa=isa)
    huge = z.copy()
    huge[1, 3] = 1e30
    with np.errstate(all="ignore"):
        p = approx.softmax(huge, kind, isa=isa)
        approx.softmax_backward(np.ones_like(huge), huge, kind)
    if kind == "softmax":
        # (AVX-512's exp is clamped at -88: exp(-1e30) is 6e-39 there, 0 on the scalar path)
        assert p[1, 3] == 1.0 and np.all(np.delete(p[1], 3) < 1e-37)
    else:
        assert not np.isfinite(p[1]).all()
    assert np.array_equal(np.delete(p, 1, axis=0), np.delete(clean, 1, axis=0))
    # NaN: a NaN row.  +Inf, as the twins: exp's shift gives inf - inf = NaN, a NaN row; Taylor's
    # inf / inf is NaN at the Inf and finite / inf = 0 elsewhere
    for poison in (np.nan, np.inf):
        bad = z.copy()
        bad[2, 20] = poison
        with np.errstate(invalid="ignore"):
            p = approx.softmax(bad, kind, isa=isa)
            want = softmax_twin(bad, kind)[2]
        assert np.isnan(want[20]) and np.array_equal(np.isnan(p[2]), np.isnan(want)), (poison, p[2])
        assert np.all(p[2][~np.isnan(want)] == 0)
        assert np.array_equal(np.delete(p, 2, axis=0), np.delete(clean, 2, axis=0))


# ============================================================================ recurrent cells
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELL_SIZES = [(3, 5, 20, 33), (2, 16, 16, 16)]


def cell_problem(rng, cell, T, N, C, K):
    g = GATES[cell]
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    w = [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((g * K, C), (g * K, K), (g * K,), (g * K,))]
    states = [rng.uniform(-1, 1, (N, K)).astype(np.float32) for _ in range(2 if cell == "lstm" else 1)]
    return [x, *w, *states]


def cell_forward(cell, args, **kw):
    """dlcpu forward: (outputs tuple, cache)."""
    if cell == "lstm":
        y, (h, c), cache = rnn.lstm_forward(*args, train=True, **kw)
        return (y, h, c), cache
    fwd = rnn.gru_forward if cell == "gru" else rnn.rnn_forward
    y, h, cache = fwd(*args, train=True, **kw)
    return (y, h), cache


def cell_backward(cell, dy, cache):
    return getattr(rnn, f"{cell}_backward")(dy, cache)


def cell_twin(cell, args, dy, impl):
    """The float64 twin of the same flavour: outputs and (dx, dw_ih, dw_hh, db_ih, db_hh)."""
    x, w_ih, w_hh = args[:3]
    N, K = args[5].shape
    zero = np.zeros((N, K))
    if cell == "lstm":
        y, h, c, steps = ref.lstm_forward(*args, impl=impl)
        dx, dw_ih, dw_hh, db, _, _ = ref.lstm_backward(dy, x, w_ih, w_hh, steps, zero, zero, impl=impl)
        return (y, h, c), (dx, dw_ih, dw_hh, db, db)
    if cell == "gru":
        y, h, steps = ref.gru_forward(*args, impl=impl)
        return (y, h), ref.gru_backward(dy, x, w_ih, w_hh, steps, zero)[:5]
    y, h, steps = ref.rnn_forward(*args, impl=impl)
    return (y, h), ref.rnn_backward(dy, x, w_ih, w_hh, steps, zero)[:5]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", ["fast", "ktanh"])
@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("size", CELL_SIZES, ids=str)
def test_cell_flavour_vs_twin(isa, impl, cell, size, rng):
    """Forward and backward against the float64 twin of the same flavour.  'fast' at the f32
    tolerance.  'ktanh': the twin applies K-TanH to the float32 rounding of its float64
    pre-activation, the kernel to its float32 GEMM sum; where the two land on different sides of
    a bf16 truncation boundary the output jumps by one K-TanH step (<= 2^-7) and the difference is
    carried through the recurrence, so the bound is rtol 1e-3 (relative L2) and at most 1% of the
    outputs may differ by more than 1e-5 (measured: none on these problems, 1e-7 relative L2)."""
    args = cell_problem(rng, cell, *size)
    outs, cache = cell_forward(cell, args, isa=isa, activation_impl=impl)
    dy = rng.uniform(-1, 1, outs[0].shape).astype(np.float32)
    grads = cell_backward(cell, dy, cache)[:5]
    want_outs, want_grads = cell_twin(cell, args, dy, impl)
    if impl == "fast":
        for a, b in zip(outs + grads, want_outs + want_grads):
            assert_close(a, b)
        return
    for a, b in zip(outs, want_outs):
        assert rel_l2(a, b) <= 1e-3
        assert np.mean(np.abs(a - b) > 1e-5) <= 0.01 and np.abs(a - b).max() <= 4 * KTANH_STEP
    for a, b in zip(grads, want_grads):
        assert rel_l2(a, b) <= 1e-3


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", list(GATES))
def test_cell_ktanh_reaches_the_kernel(isa, cell, rng):
    """activation_impl='ktanh' changes the forward (and, through the cache, the backward) on every
    path, and lands near the ktanh twin, far from the exact one; relu RNNs ignore the flavour."""
    args = cell_problem(rng, cell, 3, 5, 20, 33)
    exact, cache_e = cell_forward(cell, args, isa=isa)
    kt, cache_k = cell_forward(cell, args, isa=isa, activation_impl="ktanh")
    dy = rng.uniform(-1, 1, exact[0].shape).astype(np.float32)
    assert not np.array_equal(exact[0], kt[0])
    assert not np.array_equal(cell_backward(cell, dy, cache_e)[2], cell_backward(cell, dy, cache_k)[2])
    twin_e, _ = cell_twin(cell, args, dy, "exact")
    twin_k, _ = cell_twin(cell, args, dy, "ktanh")
    assert rel_l2(kt[0], twin_e[0]) > 1e-3 > 1e2 * rel_l2(kt[0], twin_k[0])
    assert rel_l2(exact[0], twin_k[0]) > 1e-3
    if cell == "rnn":
        y_relu = rnn.rnn_forward(*args, nonlinearity="relu", isa=isa)[0]
        assert np.array_equal(y_relu, rnn.rnn_forward(*args, nonlinearity="relu", isa=isa, activation_impl="ktanh")[0])


@pytest.mark.parametrize("impl", ["fast", "ktanh"])
@pytest.mark.parametrize("cell", list(GATES))
def test_cell_threads_bitwise(impl, cell, rng):
    args = cell_problem(rng, cell, 4, 37, 20, 48)
    dy = rng.uniform(-1, 1, (4, 37, 48)).astype(np.float32)
    runs = []
    for t in (1, 2):
        outs, cache = cell_forward(cell, args, n_threads=t, activation_impl=impl)
        runs.append((*outs, *cell_backward(cell, dy, cache)))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", list(GATES))
def test_cell_exact_is_the_default(isa, cell, rng):
    args = cell_problem(rng, cell, *CELL_SIZES[0])
    dy = rng.uniform(-1, 1, (3, 5, 33)).astype(np.float32)
    default, cache_d = cell_forward(cell, args, isa=isa)
    exact, cache_e = cell_forward(cell, args, isa=isa, activation_impl="exact")
    for a, b in zip(default + cell_backward(cell, dy, cache_d), exact + cell_backward(cell, dy, cache_e)):
        assert np.array_equal(a, b)
    # the twin's default is unchanged too
    assert np.array_equal(cell_twin(cell, args, dy, "exact")[0][0],
                          {"lstm": ref.lstm_forward, "gru": ref.gru_forward, "rnn": ref.rnn_forward}[cell](*args)[0])


@pytest.mark.parametrize("cell", list(GATES))
def test_cell_fast_finite_differences(cell, rng):
    """The 'fast' flavour is smooth: central differences of dlcpu's own forward against its
    backward (which uses 1 - y^2 and s (1 - s) of the Pade values; they differ from the Pade's
    true derivative by < 1e-4 here)."""
    args = cell_problem(rng, cell, 3, 2, 5, 6)
    outs, cache = cell_forward(cell, args, activation_impl="fast")
    dy = rng.uniform(-1, 1, outs[0].shape).astype(np.float32)
    grads = cell_backward(cell, dy, cache)
    eps = 1e-2

    def loss(a):
        return float((cell_forward(cell, a, activation_impl="fast")[0][0].astype(np.float64) * dy).sum())

    for which in range(len(args)):  # x, w_ih, w_hh, b_ih, b_hh, h0 (, c0): the backward's order
        v = rng.standard_normal(args[which].shape).astype(np.float32)
        plus, minus = list(args), list(args)
        plus[which] = (args[which] + eps * v).astype(np.float32)
        minus[which] = (args[which] - eps * v).astype(np.float32)
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = float((grads[which].astype(np.float64) * v).sum())
        assert abs(fd - analytic) <= 2e-3 * abs(analytic) + 2e-3, (which, fd, analytic)


@pytest.mark.parametrize("cell", list(GATES))
def test_cell_unknown_activation_impl(cell, rng):
    args = cell_problem(rng, cell, 2, 3, 4, 5)
    for bad in ("bogus", "EXACT", None, 2):
        with pytest.raises(ValueError, match=rf"{cell}_forward: activation_impl must be one of 'exact', 'fast', "
                                             rf"'ktanh', got {bad!r}"):
            cell_forward(cell, args, activation_impl=bad)
    with pytest.raises(ValueError, match="impl must be one of"):
        ref.lstm_forward(*cell_problem(rng, "lstm", 2, 3, 4, 5), impl="bogus")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("impl", ["exact", "fast", "ktanh"])
def test_backward_flat_beyond_overflow(isa, impl):
    """x^2 and beta x overflowing float32 must not give 0 * inf = NaN in the derivative."""
    one = np.ones(4, np.float32)
    x = np.array([2e19, -2e19, 3.4e38, -3.4e38], np.float32)
    np.testing.assert_array_equal(approx.gelu_backward(one, x, impl, isa=isa), [1, 0, 1, 0])
    np.testing.assert_array_equal(approx.swish_backward(one, x, 2.0, impl, isa=isa), [1, 0, 1, 0])
    np.testing.assert_array_equal(approx.swish_backward(one[:2], np.array([3, -3], np.float32), 3e38, impl, isa=isa),
                                  [1, 0])
    assert np.isnan(approx.gelu_backward(one[:1], np.array([np.nan], np.float32), impl, isa=isa)[0])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["softmax", "taylor:4"])
def test_wide_rows_sum_to_one(isa, kind):
    """The row sum is accumulated in double per block: a float accumulator was 3e-3 off at 2^22."""
    p = approx.softmax(np.full((1, 1 << 22), 0.5, np.float32), kind, isa=isa)
    assert abs(float(p[0, 0]) * (1 << 22) - 1.0) < 1e-5


@pytest.mark.parametrize("isa", ISAS)
def test_exp_softmax_masked_logits_get_zero(isa):
    """-inf (a masked class) gets exactly 0, a logit 102 below the row's maximum at most its
    true 5e-45 (AVX-512 flushes below the exp's clamp at -88 to 0)."""
    z = np.array([[0.0, -np.inf, 1.0, -100.0, 2.0]], np.float32)
    p = approx.softmax(z, isa=isa)
    assert p[0, 1] == 0.0 and 0.0 <= p[0, 3] < 1e-44
    np.testing.assert_allclose(p[0, [0, 2, 4]], ref.softmax(np.array([[0.0, 1.0, 2.0]]))[0], rtol=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "taylor:4"])
def test_softmax_backward_threads_bitwise_and_nonfinite(kind, rng):
    z = rng.standard_normal((4096, 67)).astype(np.float32)
    dp = rng.uniform(-1, 1, z.shape).astype(np.float32)
    one = approx.softmax_backward(dp, z, kind, n_threads=1)
    assert np.array_equal(one, approx.softmax_backward(dp, z, kind, n_threads=2))
    z[3, 5] = np.nan
    dz = approx.softmax_backward(dp, z, kind)
    assert np.isnan(dz[3]).all() and np.isfinite(np.delete(dz, 3, axis=0)).all()
