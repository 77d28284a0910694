"""Tiny runner for the asv-shaped suites when asv is not installed: a thin wrapper over the
library's timing harness (dlcpu.benchmarks), with no timing loop of its own.

    python bench/run.py                  every suite
    python bench/run.py conv             suites whose file name contains 'conv'
    python bench/run.py conv res2a       ... and only parameter sets whose values contain 'res2a'

time_* methods: setup, then dlcpu.benchmarks.time_interleaved (warm-up, samples of back-to-back
calls, median and min reported).  track_* methods: the value they return (they call the harness).
"""
import importlib.util
import itertools
import pathlib
import sys

from dlcpu import benchmarks


def _label(names, combo):
    return ", ".join(f"{n}={v}" for n, v in zip(names, combo))


def run_suite(path, only=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for cls in [c for c in vars(mod).values() if isinstance(c, type) and c.__name__.startswith(("Time", "Track"))]:
        names = getattr(cls, "param_names", [])
        for combo in itertools.product(*getattr(cls, "params", ([],))):
            if only and not any(only in str(v) for v in combo):
                continue
            obj = cls()
            if hasattr(obj, "setup"):
                obj.setup(*combo)
            for meth in sorted(m for m in dir(obj) if m.startswith(("time_", "track_"))):
                fn = getattr(obj, meth)
                where = f"{path.stem}.{cls.__name__}.{meth}({_label(names, combo)})"
                if meth.startswith("track_"):
                    print(f"{where}: {fn(*combo):.3f} {getattr(fn, 'unit', '')}")
                    continue
                stats = benchmarks.summarize(benchmarks.time_interleaved([lambda fn=fn, combo=combo: fn(*combo)], repeats=5, warmup=1)[0])
                print(f"{where}: median {stats['median_s'] * 1e3:.3f} ms, min {stats['min_s'] * 1e3:.3f} ms")


def main(argv):
    here = pathlib.Path(__file__).parent
    only = argv[2] if len(argv) > 2 else None
    for path in sorted(here.glob("bench_*.py")):
        if len(argv) < 2 or argv[1] in path.stem:
            run_suite(path, only)


if __name__ == "__main__":
    main(sys.argv)
