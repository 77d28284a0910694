"""asv-shaped suite: forward convolution on the ResNet-50 v1.5 layers (blocked in/out).

Run with asv (benchmark dir = bench/) or with the tiny runner: python bench/run.py conv
"""
from typing import ClassVar

import numpy as np

import dlcpu
from dlcpu import workloads

LAYERS = {l.name: l for l in workloads.resnet50_layers()}


class TimeConvForward:
    params = (sorted(LAYERS), [1, 2])
    param_names: ClassVar[list] = ["layer", "threads"]
    timeout = 120

    def setup(self, name, threads):
        l = LAYERS[name]
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (4, l.C, l.H, l.W)).astype(np.float32)
        w = rng.uniform(-1, 1, (l.K, l.C, l.R, l.S)).astype(np.float32)
        self.xb, self.wb = dlcpu.to_blocked(x), dlcpu.block_weights(w)
        self.kw = {"stride": (l.stride_h, l.stride_w), "padding": (l.pad_h, l.pad_w), "n_threads": threads}
        self.out = dlcpu.conv2d(self.xb, self.wb, **self.kw)  # first touch outside the timing

    def time_forward(self, name, threads):
        dlcpu.conv2d(self.xb, self.wb, out=self.out, **self.kw)

    def track_gflops(self, name, threads):
        import time

        l = LAYERS[name]
        t0 = time.perf_counter()
        self.time_forward(name, threads)
        dt = time.perf_counter() - t0
        return 2 * 4 * l.K * l.P * l.Q * l.C * l.R * l.S / dt / 1e9

    track_gflops.unit = "GFLOP/s"
