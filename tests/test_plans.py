"""Plans: one typed object per family backed by its C struct, constants from tiles.h, tiles
checked when a plan is made, --show-plan text."""
import numpy as np
import pytest

import dlcpu
from dlcpu import cpu
from dlcpu.conv import (
    ConvPlan,
    WeightGradPlan,
    WinogradPlan,
    choose_conv_blocking,
    choose_weight_grad_blocking,
    choose_winograd_blocking,
    conv_shape,
    pass_plans,
)

RES3 = conv_shape((4, 128, 28, 28), (128, 128, 3, 3), 1, 1)
STRIDED = conv_shape((2, 64, 15, 15), (32, 64, 3, 3), 2, 1)


def test_constants_come_from_the_header():
    tc = cpu.TILE_CONSTANTS
    assert tc["channel_block"] == cpu.CHANNEL_BLOCK == 16
    assert set(tc["max_acc"]) == {"scalar", "avx2", "avx512"}
    assert cpu.ISA_CODES == tc["isa_codes"]
    # The budgets are what the tables hold: every mv x nc tile within the budget is built.
    for isa, budget in tc["max_acc"].items():
        code = cpu.ISA_CODES[isa]
        for mv in (1, 2):
            assert all(cpu.has_tile(code, mv, 1, nc) for nc in range(1, budget // mv + 1)), (isa, mv)
        assert not cpu.has_tile(code, 1, 1, tc["br_max_nc"] + 1)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_plans_read_back_from_the_struct(isa):
    plan = choose_conv_blocking(RES3, isa, 2)
    assert isinstance(plan, ConvPlan)
    assert plan.as_dict()["s"]["Kb"] == RES3.Kb and plan.s["P"] == RES3.P
    assert plan.nc <= cpu.max_accumulators(isa) // plan.mv
    assert plan.rules and all(":" in r for r in plan.rules)
    with pytest.raises(AttributeError, match="read-only"):
        plan.nc = 3
    wu = choose_weight_grad_blocking(RES3, isa, 2)
    assert isinstance(wu, WeightGradPlan) and wu.max_acc == cpu.max_accumulators(isa)
    wino = choose_winograd_blocking(RES3, 6, isa, 2)
    assert isinstance(wino, WinogradPlan) and wino.alpha == 6


def test_missing_tile_fails_when_the_plan_is_made():
    fields = choose_conv_blocking(RES3, "avx2", 1).as_dict()
    fields["nc"] = cpu.max_accumulators("avx2")   # 6 pixels x mv=2: beyond AVX2's 6 accumulators
    with pytest.raises(ValueError, match=r"tile mv=2 nr=1 nc=4 that this build lacks"):
        ConvPlan(**fields)
    wfields = choose_winograd_blocking(RES3, 6, "avx512", 1).as_dict()
    wfields["nc"] = 29
    with pytest.raises(ValueError, match="mv=1 nr=1 nc=29"):
        WinogradPlan(**wfields)
    ufields = choose_weight_grad_blocking(RES3, "avx512", 1).as_dict()
    ufields["nc"] = 17
    with pytest.raises(ValueError, match="max_acc"):
        WeightGradPlan(**{**ufields, "max_acc": 8})
    with pytest.raises(ValueError, match="transposed BRGEMM tile"):
        WeightGradPlan(**{**ufields, "max_acc": 28})


def test_plan_fields_are_checked():
    fields = choose_conv_blocking(RES3, "avx512", 1).as_dict()
    with pytest.raises(TypeError, match="unknown plan field"):
        ConvPlan(**fields, bogus=1)
    del fields["tile_rows"]
    with pytest.raises(ValueError, match="tile_rows"):
        ConvPlan(**fields)


def test_pass_plans_cover_every_pass():
    assert [t for t, _ in pass_plans(RES3, "fwd")] == ["forward"]
    assert isinstance(pass_plans(RES3, "fwd", "winograd4")[0][1], WinogradPlan)
    if "avx512" in cpu.supported_isas():          # its crossover; another ISA's plan needs that ISA
        assert isinstance(pass_plans(RES3, "fwd", "auto", "avx512")[0][1], WinogradPlan)
    assert isinstance(pass_plans(RES3, "bwd_w")[0][1], WeightGradPlan)
    phases = pass_plans(STRIDED, "bwd_d")
    assert len(phases) == 4 and all(isinstance(p, ConvPlan) for _, p in phases)
    text = "\n".join(p.describe() for _, p in phases)
    assert "phase" in phases[0][0] and "rows/item" in text


def test_plans_are_the_ones_that_run(rng):
    """The cached plan conv2d runs is the one pass_plans reports (same object)."""
    x = rng.uniform(-1, 1, (1, 20, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 20, 3, 3)).astype(np.float32)
    dlcpu.conv2d(x, w, padding=1, algorithm="direct", n_threads=1)
    shape = conv_shape(x.shape, w.shape, 1, 1)
    assert pass_plans(shape, "fwd", n_threads=1)[0][1] is pass_plans(shape, "fwd", n_threads=1)[0][1]


def test_integer_kernels_take_their_own_avx2_tile():
    """AVX2's integer kernels run one output block by 6 pixels (mv=2 x 3 spilled accumulators);
    fp32 and bf16 on AVX2, and every precision on the other paths, keep the shared tile."""
    fp32, integer = choose_conv_blocking(RES3, "avx2", 1), choose_conv_blocking(RES3, "avx2", 1, integer=True)
    assert (fp32.mv, fp32.nc) == (2, 3)
    assert (integer.mv, integer.nr, integer.nc) == (1, 1, 6) and "AVX2 integer" in integer.describe()
    for isa in ("scalar", "avx512"):
        assert choose_conv_blocking(RES3, isa, 1, integer=True).as_dict() == choose_conv_blocking(RES3, isa, 1).as_dict()
    if "avx2" not in cpu.supported_isas():
        return                                 # the cached plans below are those of a path this CPU runs
    for precision in ("int8", "ternary", "dfp16"):
        plan = dlcpu.conv.get_plan(RES3, "avx2", 1, precision=precision)
        assert plan.as_dict() == integer.as_dict()
        assert pass_plans(RES3, "fwd", isa="avx2", n_threads=1, precision=precision)[0][1] is plan
    assert dlcpu.conv.get_plan(RES3, "avx2", 1, precision="bf16").mv == 2
    assert all(p.mv == 1 for _, p in pass_plans(STRIDED, "bwd_d", isa="avx2", n_threads=1, precision="dfp16"))
    # an int8 conv2d runs that plan: asking for it afterwards is a cache hit, not a new plan
    x = np.random.default_rng(0).uniform(0, 1, (4, 128, 28, 28)).astype(np.float32)
    w = np.random.default_rng(1).uniform(-1, 1, (128, 128, 3, 3)).astype(np.float32)
    dlcpu.conv._cached_plan.cache_clear()
    dlcpu.conv2d(x, w, None, 1, 1, precision="int8", isa="avx2", n_threads=1)
    before = dlcpu.conv._cached_plan.cache_info()
    dlcpu.conv.get_plan(RES3, "avx2", 1, precision="int8")
    after = dlcpu.conv._cached_plan.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    assert dlcpu.conv.get_plan(RES3, "avx2", 1, precision="INT8") is dlcpu.conv.get_plan(RES3, "avx2", 1, precision="int8")
    with pytest.raises(ValueError, match="get_plan: unknown precision 'fp8'"):
        dlcpu.conv.get_plan(RES3, "avx2", 1, precision="fp8")
    with pytest.raises(ValueError, match="pass_plans: unknown precision None"):
        pass_plans(RES3, "fwd", isa="avx2", n_threads=1, precision=None)


@pytest.mark.skipif("avx2" not in cpu.supported_isas(), reason="needs the AVX2 path")
@pytest.mark.parametrize("hw,stride", [((12, 12), 1), ((6, 6), 2), ((8, 1), 1), ((20, 20), 1)], ids=str)
def test_integer_avx2_tiles_give_the_scalar_bits(rng, hw, stride):
    """The integer tile's pixel blocks at the widths that make its odd calls: 6 + 6 pixels (12
    columns), 3 pixels x 2 rows (stride 2 on 6), 1 pixel x 4 rows (1 column), 5 + 5 + 5 + 5 (20)."""
    from dlcpu import quantized as Q

    x = rng.uniform(0, 1, (2, 24, *hw)).astype(np.float32)
    w = rng.uniform(-1, 1, (40, 24, 3, 3)).astype(np.float32)
    for bits in (7, 8):
        xq, wq = Q.to_int8_blocked(x, bits=bits), Q.block_weights_int8(w)
        got = [dlcpu.conv2d(xq, wq, None, stride, 1, precision="int8", isa=isa, n_threads=1).numpy()
               for isa in ("avx2", "scalar")]
        assert np.array_equal(got[0], got[1]), bits


def test_gemm_plan():
    from dlcpu.gemm import GemmPlan, choose_gemm_split

    plan = choose_gemm_split(64, 512, 256, "avx512", 2)
    assert isinstance(plan, GemmPlan) and plan.rows == cpu.max_accumulators("avx512") // 2
    assert plan.split_rows == 0   # 5 row tiles on 2 threads: split the column pairs instead
    assert choose_gemm_split(4096, 512, 256, "avx512", 2).split_rows == 1
    with pytest.raises(ValueError, match="mv=2 nr=1 nc=4 that this build lacks"):
        GemmPlan(**{**choose_gemm_split(64, 64, 64, "avx2", 1).as_dict(), "rows": 4})


def test_recurrent_plan():
    from dlcpu.rnn import RecurrentPlan, choose_recurrent_tiles

    plan = choose_recurrent_tiles("lstm", 5, 16, 3, cpu.ISA_CODES["avx512"], 2)
    assert isinstance(plan, RecurrentPlan) and plan.gates == 4
    assert plan.rows == 8 and plan.n_tiles == 2   # N=16: 8 + 8, not 14 + 2
    assert plan.fwd_items == 3 * 2 and plan.pair_items == 2 * 2
    rnn = choose_recurrent_tiles("rnn_relu", 5, 16, 3, cpu.ISA_CODES["avx512"], 2)
    assert rnn.fwd_items == 2 * 2 and rnn.gates == 1
    with pytest.raises(ValueError, match="mv=2 nr=1 nc=4 that this build lacks"):
        RecurrentPlan(**{**choose_recurrent_tiles("gru", 2, 8, 1, cpu.ISA_CODES["avx2"], 1).as_dict(), "rows": 4})
