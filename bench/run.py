"""Tiny runner for the asv-shaped suites when asv is not installed.

    python bench/run.py            every suite
    python bench/run.py conv       suites whose file name contains 'conv'

For each time_* method: setup, one warm-up, then the median of 5 timed calls per parameter set.
"""
import importlib.util
import itertools
import pathlib
import statistics
import sys
import time


def run_suite(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for cls in [c for c in vars(mod).values() if isinstance(c, type) and c.__name__.startswith("Time")]:
        params = getattr(cls, "params", ([],))
        names = getattr(cls, "param_names", [])
        for combo in itertools.product(*params):
            obj = cls()
            obj.setup(*combo)
            for meth in [m for m in dir(obj) if m.startswith("time_")]:
                fn = getattr(obj, meth)
                fn(*combo)
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    fn(*combo)
                    times.append(time.perf_counter() - t0)
                label = ", ".join(f"{n}={v}" for n, v in zip(names, combo))
                print(f"{path.stem}.{cls.__name__}.{meth}({label}): {statistics.median(times) * 1e3:.3f} ms")


def main(argv):
    here = pathlib.Path(__file__).parent
    for path in sorted(here.glob("bench_*.py")):
        if len(argv) < 2 or argv[1] in path.stem:
            run_suite(path)


if __name__ == "__main__":
    main(sys.argv)
