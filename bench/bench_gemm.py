"""asv-shaped suite: dlcpu.matmul (BRGEMM over packed operands, packing included) at square sizes.

time_matmul is timed by asv (or by bench/run.py with dlcpu.benchmarks.time_interleaved);
track_gflops is the median GFLOP/s of dlcpu.benchmarks.bench_gemm, the harness behind
`dlcpu bench gemm`.
"""
from typing import ClassVar

import numpy as np

import dlcpu
from dlcpu import benchmarks

SIZES = [256, 1024, 2048]


class TimeMatmul:
    params = (SIZES, [1, 2])
    param_names: ClassVar[list] = ["size", "threads"]

    def setup(self, size, threads):
        rng = np.random.default_rng(0)
        self.x = rng.uniform(-1, 1, (size, size)).astype(np.float32)
        self.y = rng.uniform(-1, 1, (size, size)).astype(np.float32)
        dlcpu.matmul(self.x, self.y, n_threads=threads)

    def time_matmul(self, size, threads):
        dlcpu.matmul(self.x, self.y, n_threads=threads)


class TrackMatmul:
    params = (SIZES, [1, 2])
    param_names: ClassVar[list] = ["size", "threads"]
    timeout = 300

    def track_gflops(self, size, threads):
        return benchmarks.bench_gemm(size, size, size, threads, float("nan"), compare_numpy=False)["gflops"]

    track_gflops.unit = "GFLOP/s"
