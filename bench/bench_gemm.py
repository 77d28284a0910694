"""asv-shaped suite: dlcpu.matmul (BRGEMM over packed operands) at square sizes."""
from typing import ClassVar

import numpy as np

import dlcpu


class TimeMatmul:
    params = ([256, 1024, 2048], [1, 2])
    param_names: ClassVar[list] = ["size", "threads"]

    def setup(self, size, threads):
        rng = np.random.default_rng(0)
        self.x = rng.uniform(-1, 1, (size, size)).astype(np.float32)
        self.y = rng.uniform(-1, 1, (size, size)).astype(np.float32)
        dlcpu.matmul(self.x, self.y, n_threads=threads)

    def time_matmul(self, size, threads):
        dlcpu.matmul(self.x, self.y, n_threads=threads)
