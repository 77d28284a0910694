"""asv-shaped suite: recurrent layers (LSTM, GRU, RNN) over the LSTM grid: forward and training
step GFLOP/s from dlcpu.benchmarks.bench_lstm_layer, the harness behind `dlcpu bench lstm`
(prepared weights; the FLOP convention is in its docstring)."""
from typing import ClassVar

from dlcpu import benchmarks, workloads

GRID = {g.name: g for g in workloads.lstm_layers()}


class TrackRecurrent:
    params = (sorted(GRID), list(benchmarks.RNN_CELLS), [1, 2])
    param_names: ClassVar[list] = ["row", "cell", "threads"]
    timeout = 300

    def _run(self, name, cell, threads):
        return benchmarks.bench_lstm_layer(GRID[name], threads, float("nan"), cell=cell, repeats=3)

    def track_forward_gflops(self, name, cell, threads):
        return self._run(name, cell, threads)["forward"]["gflops"]

    track_forward_gflops.unit = "GFLOP/s"

    def track_train_gflops(self, name, cell, threads):
        return self._run(name, cell, threads)["train"]["gflops"]

    track_train_gflops.unit = "GFLOP/s"
