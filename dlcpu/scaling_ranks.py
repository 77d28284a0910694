"""Rank scaling behind `dlcpu scale ranks`: data-parallel training steps timed at 1, 2, ... MPI
ranks, the sweep launching itself under mpiexec.

Design.  `rank_scaling` runs, for each rank count R (in turn, `repeats` times, interleaved so
that the machine's drift hits every count alike):

    R = 1    python -m dlcpu.scaling_ranks SPEC OUT              one process, no MPI at all
    R > 1    mpiexec -n R python -m dlcpu.scaling_ranks SPEC OUT  dlcpu.distributed.DataParallel

Every process times `warmup + steps` training steps of the model (dlcpu.train's own step
functions: forward, loss, backward with the gradients averaged during it, SGD) and rank 0 writes
the median step time and DataParallel's communication summary to OUT as JSON.  The 1-rank
baseline is the plain single-process step, so the efficiency charges the data-parallel machinery
(hooks, fusion buffers, MPI) to the multi-rank runs.

Modes: strong keeps the global batch (--batch) at every R, each rank taking batch/R images; weak
keeps each rank's batch (--batch) and grows the global batch to R x batch.  Throughput is global
images per second; speedup is throughput(R) / throughput(1) (the scaled speedup for weak), the
efficiency speedup / R, and dlcpu.scaling.analyse fits Amdahl's p (strong) or Gustafson's s
(weak) over the rank counts.  The communication columns come from rank 0's steps: the allreduce
time in flight and the part of it that was exposed (waited for after backward).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np

from . import benchmarks, distributed
from ._validate import positive_int
from .scaling import MODES, analyse, available_cores

#: WORKLOAD of `dlcpu scale ranks` -> dlcpu.train's model kind
RANK_WORKLOADS = {"train:digits": "cnn", "train:digits-rnn": "rnn"}
TIMED_REGION = ("one data-parallel training step on every rank: its slice of the global batch, forward, softmax "
                "cross-entropy, backward with the fusion buckets' allreduces started during it, the wait for the "
                "rest, SGD (momentum 0.9); 1 rank: the same step in one process without MPI")
#: most ranks a sweep may ask for (each is a process on this machine or a cluster's)
MAX_RANKS = 4096
#: seconds one launch (all its steps) may take before the sweep gives up on it
LAUNCH_TIMEOUT = 900


def parse_rank_workload(text):
    """WORKLOAD -> dlcpu.train model kind ('cnn' or 'rnn'); ValueError listing the choices."""
    kind = RANK_WORKLOADS.get(str(text).strip().lower())
    if kind is None:
        raise ValueError(f"unknown workload {text!r}: rank scaling trains {' or '.join(RANK_WORKLOADS)}")
    return kind


def check_rank_counts(ranks):
    """Distinct integers in [1, MAX_RANKS] that include 1 (the baseline) and one more; sorted."""
    ranks = list(ranks)
    if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in ranks):
        raise TypeError(f"rank counts must be integers, got {ranks}")
    if any(not 1 <= r <= MAX_RANKS for r in ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"rank counts must be distinct and between 1 and {MAX_RANKS}, got {ranks}")
    if 1 not in ranks or len(ranks) < 2:
        raise ValueError(f"rank counts must include 1 (the baseline) and at least one more, got {ranks}")
    return sorted(int(r) for r in ranks)


def find_mpiexec():
    """The mpiexec of this Python's environment (the mpich wheel puts it beside python), else the
    one on PATH; DistributedError with the install hint when there is none or no mpi4py."""
    import importlib.util

    here = os.path.dirname(sys.executable)
    path = shutil.which("mpiexec", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if path is None or importlib.util.find_spec("mpi4py") is None:
        raise distributed.DistributedError(distributed.MPI_HINT)
    return path


def global_batch(mode, batch, ranks):
    """The global batch of a launch: --batch (strong), or --batch per rank (weak)."""
    return batch if mode == "strong" else batch * ranks


def check_batch(mode, batch, ranks):
    """Strong scaling splits --batch over every rank count: it must divide by each."""
    if mode == "strong":
        bad = [r for r in ranks if batch % r]
        if bad:
            raise ValueError(f"strong scaling splits the global batch {batch} over the ranks, but it does not divide "
                             f"by {', '.join(map(str, bad))}: use a multiple of {int(np.lcm.reduce(ranks))}")


# ------------------------------------------------------------------------------------- one launch
def time_steps(model="cnn", global_batch=64, steps=40, warmup=5, threads=1, options=None, seed=0):
    """In this process (a rank of an mpiexec job with `options`, alone without): time `warmup +
    steps` training steps on the digits data (cycling through it); returns the steady steps'
    summary (dlcpu.benchmarks.summarize) and, data-parallel, DataParallel.comm_summary."""
    from threadpoolctl import threadpool_limits

    from . import nn
    from .train import data_parallel_step, image_batch, load_digits_split, local_step, row_sequence

    data = load_digits_split(seed)
    net = nn.digits_resnet(16, seed=seed) if model == "cnn" else nn.digits_rnn(seed=seed)
    inputs = image_batch if model == "cnn" else row_sequence
    dp = distributed.DataParallel(net, options) if options is not None else None
    opt = nn.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = np.resize(np.random.default_rng(seed).permutation(len(data.x_train)), (warmup + steps) * global_batch)
    seconds = []
    with threadpool_limits(limits=threads, user_api="openmp"):
        for i in range(warmup + steps):
            idx = order[i * global_batch:(i + 1) * global_batch]
            x, y = data.x_train[idx], data.y_train[idx]
            t0 = time.perf_counter()
            if dp is None:
                local_step(net, opt, x, y, inputs, {}, "softmax", _ignore_loss)
            else:
                data_parallel_step(net, opt, dp, x, y, inputs, {}, "softmax", _ignore_loss, f"step {i + 1}")
            seconds.append(time.perf_counter() - t0)
    out = {"seconds": benchmarks.summarize(seconds[warmup:]), "rank": 0, "ranks": 1}
    if dp is not None:
        out.update(communication=dp.comm_summary(skip=warmup), rank=dp.rank, ranks=dp.size)
        dp.close()
    return out


def time_torch_steps(model="cnn", global_batch=64, steps=40, warmup=5, threads=1, port=None, seed=0):
    """The peer of time_steps: the same steps with the PyTorch twin (dlcpu._peers), one process
    alone or, under a launcher with several ranks, wrapped in torch.nn.parallel.
    DistributedDataParallel over the gloo backend (its default bucketing, overlap included),
    every rank taking the same shard of each global batch as dlcpu's ranks do."""
    from . import _peers
    from .data import shard
    from .train import load_digits_split, row_sequence

    torch = _peers.require_torch("scale ranks --compare torch")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rank, size = distributed.launcher_rank() or 0, distributed.launcher_size() or 1
    data = load_digits_split(seed)
    net = _peers.digits_resnet(torch) if model == "cnn" else _peers.digits_rnn(torch)
    if size > 1:
        import torch.distributed as tdist

        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_all = data.x_train if model == "cnn" else row_sequence(data.x_train)
    order = np.resize(np.random.default_rng(seed).permutation(len(data.x_train)), (warmup + steps) * global_batch)
    seconds = []
    for i in range(warmup + steps):
        idx = order[i * global_batch:(i + 1) * global_batch]
        mine = idx[shard(np.arange(len(idx)), size, rank)]
        x = torch.from_numpy(np.ascontiguousarray(x_all[mine] if model == "cnn" else x_all[:, mine]))
        y = torch.from_numpy(data.y_train[mine])
        t0 = time.perf_counter()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t0)
    if size > 1:
        tdist.barrier()
        tdist.destroy_process_group()
    return {"seconds": benchmarks.summarize(seconds[warmup:]), "rank": rank, "ranks": size}


def _ignore_loss(loss):
    """Timing, not training to a result: a diverging loss does not stop the clock."""


def bind_to_cores(threads):
    """Pin this process to its own `threads` cores of the node, by its local rank (as mpiexec's
    -bind-to core does), before any OpenMP thread exists; returns the cores, or None (and pins
    nothing) when the node's ranks need more cores than this process may use.  Unpinned ranks
    migrate between cores and were measured 25% slower (8.0 against 10.6 ms a 2-rank step)."""
    local_rank = 0
    for key in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(key, "").isdigit():
            local_rank = int(os.environ[key])
            break
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = allowed[local_rank * threads:(local_rank + 1) * threads]
    if len(cores) < threads:
        return None
    os.sched_setaffinity(0, cores)
    return cores


def _worker(spec_json, out_path):
    """`python -m dlcpu.scaling_ranks SPEC OUT`: time_steps(**SPEC); rank 0 writes OUT.  A rank
    that fails ends the whole launch (distributed.abort_on_error)."""
    with distributed.abort_on_error():
        _work(json.loads(spec_json), out_path)


def _work(spec, out_path):
    options = spec.pop("options")
    cores = bind_to_cores(spec["threads"]) if spec.pop("bind") else None
    framework, port = spec.pop("framework", "dlcpu"), spec.pop("port", None)
    if framework == "torch":
        result = time_torch_steps(port=port, **spec)
        result["bound_to"] = cores
        if result["rank"] == 0:
            distributed.write_json_atomic(out_path, result)
        # gloo's threads can end the process in std::terminate during interpreter shutdown
        # (measured: about one launch in three exited with "terminate called without an active
        # exception"); the result is written, so leave without the C++ destructors
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    else:
        if options is not None:
            options = distributed.DataParallelOptions(**options)
        result = time_steps(options=options, **spec)
    result["bound_to"] = cores
    if result["rank"] == 0:
        distributed.write_json_atomic(out_path, result)


def launch(ranks, spec, timeout=LAUNCH_TIMEOUT):
    """Run one launch of `ranks` processes (mpiexec for more than one); its rank 0's result."""
    spec = dict(spec)
    if spec.get("framework") == "torch" and ranks > 1:
        spec["port"] = _free_port()
    if ranks == 1:
        spec["options"] = None
        cmd = [sys.executable, "-m", "dlcpu.scaling_ranks"]
    else:
        cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "dlcpu.scaling_ranks"]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    with tempfile.TemporaryDirectory(prefix="dlcpu-ranks-") as tmp:
        out_path = os.path.join(tmp, "result.json")
        try:
            proc = subprocess.run([*cmd, json.dumps(spec), out_path], env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise distributed.DistributedError(f"the {ranks}-rank launch did not finish within {timeout} s") from None
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-4:])
            how = (f"was killed by signal {-proc.returncode}{' (out of memory?)' if proc.returncode == -9 else ''}"
                   if proc.returncode < 0 else f"failed (exit code {proc.returncode})")
            raise distributed.DistributedError(f"the {ranks}-rank launch {how}: {tail or 'no output'}")
        with open(out_path) as f:
            return json.load(f)


def _free_port():
    """A TCP port free on this machine now, for the peer's rendezvous (gloo over localhost)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_scaling(workload, ranks, mode="weak", batch=64, threads=1, steps=40, warmup=5, repeats=3, options=None,
                 bind=True, compare=None, on_point=None):
    """The whole sweep (module docstring): a JSON-ready dict with one point per rank count and
    the fit.  options: distributed.DataParallelOptions of the multi-rank launches (fusion
    threshold, compression, overlap, communication core).  bind: pin each rank to cores of its
    own (bind_to_cores), the 1-rank baseline too.  compare='torch': every launch is followed by
    the same launch of the PyTorch twin (DistributedDataParallel over gloo for several ranks), and
    each point gets the peer's numbers and dlcpu's throughput ratio to it."""
    if compare not in (None, "torch"):
        raise ValueError(f"compare must be None or 'torch', got {compare!r}")
    if compare:
        from . import _peers
        _peers.require_torch("scale ranks --compare torch")
    model = parse_rank_workload(workload)
    for name, value, low in (("batch", batch, 1), ("threads", threads, 1), ("steps", steps, 1), ("warmup", warmup, 0),
                             ("repeats", repeats, 1)):
        positive_int(value, name, "rank_scaling", minimum=low)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    ranks = check_rank_counts(ranks)
    check_batch(mode, batch, ranks)
    options = options or distributed.DataParallelOptions()
    if options.timeline is not None:
        raise ValueError("rank scaling writes no timeline: time one run with dlcpu train --dist --timeline")
    if max(ranks) > 1:
        find_mpiexec()
    frameworks = ["dlcpu", "torch"] if compare else ["dlcpu"]
    runs = {(f, r): [] for f in frameworks for r in ranks}
    for _ in range(repeats):
        for r in ranks:
            for f in frameworks:
                spec = {"model": model, "global_batch": global_batch(mode, batch, r), "steps": steps, "warmup": warmup,
                        "threads": threads, "options": asdict(options), "bind": bool(bind), "framework": f}
                runs[(f, r)].append(launch(r, spec))
            if on_point:
                on_point(r)
    points = _points(runs, "dlcpu", ranks, mode, batch)
    result = _analysed(points, ranks, mode)
    if compare:
        peer = _points(runs, "torch", ranks, mode, batch)
        peer_fit = _analysed(peer, ranks, mode)
        for p, q in zip(points, peer):
            p["peer"] = {k: q[k] for k in ("seconds", "launch_medians_s", "images_per_second", "speedup", "efficiency")}
            p["ratio_to_peer"] = p["images_per_second"] / q["images_per_second"]
        result["peer"] = {"name": "PyTorch DistributedDataParallel (gloo); 1 rank: the plain twin", "fit": peer_fit["fit"]}
    cores = available_cores()
    warnings = [f"{r} ranks x {threads} thread(s) exceed the {cores} cores available: this point measures "
                f"oversubscription, not scaling" for r in ranks if r * (threads + options.comm_core) > cores]
    return {"workload": workload, "model": model, "mode": mode, "batch": batch, "threads_per_rank": threads,
            "steps": steps, "warmup": warmup, "repeats": repeats, "cores": cores, "bind": bool(bind),
            "timed_region": TIMED_REGION,
            "options": {k: v for k, v in asdict(options).items() if k in ("fusion_threshold", "compression", "overlap",
                                                                         "comm_core")},
            "points": points, "fit": result["fit"], "peer": result.get("peer"), "warnings": warnings}


def _points(runs, framework, ranks, mode, batch):
    """One point per rank count from its launches: the median launch (its communication with it)."""
    points = []
    for r in ranks:
        by_time = sorted(runs[(framework, r)], key=lambda res: res["seconds"]["median_s"])
        middle = by_time[len(by_time) // 2]
        gb = global_batch(mode, batch, r)
        points.append({"ranks": r, "global_batch": gb, "batch_per_rank": gb / r, "seconds": middle["seconds"],
                       "launch_medians_s": [res["seconds"]["median_s"] for res in runs[(framework, r)]],
                       "images_per_second": gb / middle["seconds"]["median_s"],
                       "communication": middle.get("communication"), "rank0_cores": middle.get("bound_to")})
    return points


def _analysed(points, ranks, mode):
    """analyse's speedups, efficiencies and fit on the points' step times, written into the
    points (weak's R*T(1)/T(R) is the throughput ratio); returns {'fit': ...}."""
    result = analyse(ranks, [p["seconds"]["median_s"] for p in points], mode)
    for p, s, e in zip(points, result.pop("speedup"), result.pop("efficiency")):
        p.update(speedup=s, efficiency=e)
    return result


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
