"""asv-shaped suite: convolution on the ResNet-50 v1.5 layers (blocked in/out), every pass.

time_* methods: asv (benchmark dir = bench/) times them itself; the tiny runner (python
bench/run.py conv) times them with dlcpu.benchmarks.time_interleaved.  track_gflops: the median
GFLOP/s of dlcpu.benchmarks.bench_conv_layer, the harness behind `dlcpu bench conv` (same timed
region, warm-up and FLOP convention: dlcpu.benchmarks.FLOP_CONVENTION).
"""
from typing import ClassVar

import numpy as np

import dlcpu
from dlcpu import benchmarks, workloads

LAYERS = {l.name: l for l in workloads.resnet50_layers()}
BATCH = 4


class TimeConvForward:
    params = (sorted(LAYERS), [1, 2])
    param_names: ClassVar[list] = ["layer", "threads"]
    timeout = 120

    def setup(self, name, threads):
        l = LAYERS[name]
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (BATCH, l.C, l.H, l.W)).astype(np.float32)
        w = rng.uniform(-1, 1, (l.K, l.C, l.R, l.S)).astype(np.float32)
        self.xb, self.wb = dlcpu.to_blocked(x), dlcpu.block_weights(w)
        self.kw = {"stride": (l.stride_h, l.stride_w), "padding": (l.pad_h, l.pad_w), "n_threads": threads}
        self.out = dlcpu.conv2d(self.xb, self.wb, **self.kw)  # first touch outside the timing

    def time_forward(self, name, threads):
        dlcpu.conv2d(self.xb, self.wb, out=self.out, **self.kw)


class TrackConv:
    params = (sorted(LAYERS), [1, 2], list(benchmarks.PASSES))
    param_names: ClassVar[list] = ["layer", "threads", "pass"]
    timeout = 300

    def track_gflops(self, name, threads, direction):
        # pct_peak is not tracked, so no peak measurement: NaN stands in for it
        res = benchmarks.bench_conv_layer(LAYERS[name], BATCH, threads, float("nan"), direction=direction, repeats=5)
        return res.gflops

    track_gflops.unit = "GFLOP/s"
