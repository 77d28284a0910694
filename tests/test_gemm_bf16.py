"""matmul(precision='bf16'): the bf16 BRGEMM (VDPBF16PS, or FMAs on widened pairs) against the
float64 product of the bf16-rounded operands, on every ISA path, and against PyTorch's bf16 GEMM."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

import dlcpu
from dlcpu import cpu, gemm
from dlcpu import precision as P

SHAPES = [(1, 1, 1), (13, 17, 31), (14, 16, 16), (15, 33, 48), (29, 600, 33), (100, 40, 70), (3, 1030, 5)]
NATIVE = cpu.features()["avx512_bf16"] and "avx512" in ISAS
# (isa, use VDPBF16PS): the AVX-512 path runs its emulated flavour too where the CPU has the instruction
PATHS = [(isa, isa == "avx512" and NATIVE) for isa in ISAS] + ([("avx512", False)] if NATIVE else [])


def bf16_product(x, y, bias=None):
    """float64 product of the operands rounded to bf16 (the kernels' exact-product target)."""
    out = P.round_to_bf16(x).astype(np.float64) @ P.round_to_bf16(y).astype(np.float64)
    return out if bias is None else out + bias


@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_matmul_against_float64(rng, monkeypatch, isa, native, shape):
    monkeypatch.setattr(P, "native_bf16", lambda name: native)
    m, k, n = shape
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    y = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    got = dlcpu.matmul(x, y, bias=b, precision="bf16", isa=isa)
    assert got.dtype == np.float32
    assert_close(got, bf16_product(x, y, b))                                 # fp32 accumulation only
    assert_close(got, x.astype(np.float64) @ y + b, dtype="bf16")           # and the rounding of bf16


def test_bf16_matmul_paths_agree_bit_for_bit(rng, monkeypatch):
    """The emulated paths take VDPBF16PS's two rounding steps (odd channel, then even) as FMAs,
    so on normal values every path gives the same bits."""
    x = rng.uniform(-1, 1, (29, 600)).astype(np.float32)
    y = rng.uniform(-1, 1, (600, 40)).astype(np.float32)
    results = []
    for isa, native in PATHS:
        monkeypatch.setattr(P, "native_bf16", lambda name, native=native: native)
        results.append(dlcpu.matmul(x, y, precision="bf16", isa=isa))
    assert all(np.array_equal(r, results[0]) for r in results[1:])


def test_bf16_matmul_packed_transposed_and_packed_out(rng):
    x = rng.uniform(-1, 1, (37, 70)).astype(np.float32)
    w = rng.uniform(-1, 1, (45, 70)).astype(np.float32)                      # nn.Linear's (out, in)
    packed = gemm.pack_matmul_operand(w, transpose=True, precision="bf16")
    assert packed.precision == "bf16" and packed.data.dtype == np.uint16
    want = bf16_product(x, w.T)
    assert_close(dlcpu.matmul(x, packed, precision="bf16"), want)
    assert np.array_equal(dlcpu.matmul(x, packed, precision="bf16"),
                          dlcpu.matmul(x, gemm.pack_matmul_operand(np.ascontiguousarray(w.T), precision="bf16"),
                                       precision="bf16"))
    out = gemm.PackedMatrix(np.zeros((3, 3, 16, 16), np.float32), (37, 45))
    dlcpu.matmul(x, packed, precision="bf16", out=out, accumulate=True)
    dlcpu.matmul(x, packed, precision="bf16", out=out, accumulate=True)
    unpacked = out.data.transpose(1, 2, 0, 3).reshape(48, 48)[:37, :45]
    assert_close(unpacked, 2 * want)


def test_bf16_matmul_is_thread_independent(rng):
    x = rng.uniform(-1, 1, (97, 530)).astype(np.float32)
    y = rng.uniform(-1, 1, (530, 300)).astype(np.float32)
    assert np.array_equal(dlcpu.matmul(x, y, precision="bf16", n_threads=1),
                          dlcpu.matmul(x, y, precision="bf16", n_threads=max_threads()))


@needs_torch
def test_bf16_matmul_against_pytorch(rng):
    import torch

    x = rng.uniform(-1, 1, (64, 256)).astype(np.float32)
    y = rng.uniform(-1, 1, (256, 96)).astype(np.float32)
    theirs = (torch.from_numpy(x).bfloat16() @ torch.from_numpy(y).bfloat16()).float().numpy()
    ours = dlcpu.matmul(x, y, precision="bf16")
    # PyTorch rounds its output to bf16; ours stays fp32: they agree to bf16's 8 bits
    assert_close(theirs, ours.astype(np.float64), dtype="bf16")
    assert np.abs(P.round_to_bf16(ours) - theirs).max() <= 2.0 ** -7 * np.abs(theirs).max()


@pytest.mark.parametrize("call,error,match", [
    (lambda x, y: dlcpu.matmul(x, y, precision="fp8"), ValueError, "unknown precision 'fp8'"),
    (lambda x, y: dlcpu.matmul(x, y, precision="bf16", levels=1), ValueError, "levels= chooses"),
    (lambda x, y: dlcpu.matmul(x, gemm.pack_matmul_operand(y), precision="bf16"), ValueError,
     "packed for precision 'fp32'"),
    (lambda x, y: dlcpu.matmul(x, gemm.pack_matmul_operand(y, precision="bf16")), ValueError,
     "packed for precision 'bf16'"),
    (lambda x, y: gemm.transpose_packed(gemm.pack_matmul_operand(y, precision="bf16")), ValueError, "fp32 packed"),
    (lambda x, y: dlcpu.matmul(x, y, precision="bf16", out=gemm.pack_matmul_operand(np.ones((4, 4), np.float32),
                                                                                  precision="bf16")),
     ValueError, "must be an fp32 PackedMatrix"),
    (lambda x, y: gemm.PackedMatrix(np.zeros((1, 1, 16, 16), np.float32), (3, 4), "bf16"), ValueError, "uint16"),
    (lambda x, y: gemm.PackedMatrix(np.zeros((1, 1, 16, 16), np.float32), (3, 4), "int8"), ValueError,
     "C-contiguous int8 array"),
    (lambda x, y: gemm.PackedMatrix(np.zeros((1, 1, 16, 16), np.int8), (3, 4), "int8"), ValueError,
     "needs its scales or exponent"),
    (lambda x, y: gemm.PackedMatrix(np.zeros((1, 1, 16, 16), np.float32), (3, 4), "fp8"), ValueError,
     "precision must be one of fp32, bf16, dfp16, int8"),
])
def test_bf16_matmul_bad_input(call, error, match):
    x = np.ones((4, 3), np.float32)
    y = np.ones((3, 4), np.float32)
    with pytest.raises(error, match=match):
        call(x, y)


@needs_torch
def test_bench_gemm_peer_casts_its_left_operand_inside_the_timed_call(monkeypatch):
    """bench precision's GEMM: dlcpu converts the fp32 left operand in every timed call, so the
    PyTorch peer must cast its own there too, not once before the timer."""
    import torch

    from dlcpu import benchmarks

    casts = []
    real = torch.Tensor.bfloat16
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: casts.append(tuple(self.shape)) or
                        real(self, *a, **k))
    repeats, warmup = 4, 1
    res = benchmarks.bench_precision_gemm(32, 1, 100.0, formats=("bf16",), compare="torch", repeats=repeats,
                                          warmup=warmup)
    # the right operand once before timing and the two operands of the error check; the rest are
    # the left operand's, one in every call of the peer (time_interleaved makes at least one per
    # warm-up and per repeat, more to calibrate and fill its samples).  A peer that cast x once
    # before timing makes 4 in all.
    assert len(casts) - 3 >= repeats + warmup, len(casts)
    assert res["peer"]["rel_l2"] < 1e-2 and res["formats"]["bf16"]["ratio_vs_peer"] > 0
