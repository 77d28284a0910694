"""Data-parallel training over MPI (mpi4py), in Horovod's manner.

Every rank holds a full replica of the model and trains on its own slice of each global batch
(dlcpu.data.shard); after backward the gradients are averaged over the ranks with an allreduce,
so every replica applies the same update and stays bitwise identical.  MPI is the engine, so a
job that runs with ``mpiexec -n 2`` on one machine runs unchanged with ``mpiexec -hosts ...`` or
``srun`` on a cluster.  mpi4py is optional (``pip install "dlcpu[mpi]"`` brings it and the mpich
wheel); nothing here imports it until a Communicator is made.

The pieces, each usable on its own:

* ``Communicator`` — the MPI communicator with a deadline on every collective.  Collectives are
  started non-blocking and polled; one that has not completed after ``timeout`` seconds raises
  CollectiveTimeout naming the collective, the step and the rank, instead of hanging forever when
  a peer has died or stalled.  (mpiexec's hydra already tears a job down when a rank is killed;
  the deadline covers a rank that stops without exiting and launchers that do not clean up.)
* ``GradientReducer`` — Horovod's tensor fusion with overlap.  The parameters are grouped, in the
  order backward produces their gradients (the model's last layer first), into fusion buckets of
  at most ``fusion_threshold`` bytes; each Parameter's ``grad`` becomes a view into its bucket's
  flat buffer, so nothing is copied.  A backward hook on every layer with parameters
  (nn.Module.register_backward_hook) marks its gradients ready; a bucket whose gradients are all
  ready is scaled by this rank's share of the global batch (n_rank / n_global: "divide before the
  sum", so the sum is the global mean and bf16 cannot overflow) and its in-place Iallreduce starts
  at once, while the layers in front still compute theirs.  Buckets are started strictly in index
  order, so every rank issues the collectives in the same order whatever its timing (MPI's rule
  for non-blocking collectives).  ``finish()`` waits for the rest: that wait is the *exposed*
  communication.
* bf16 compression — the scaled gradients are rounded to bf16 (dlcpu.precision's rule: nearest
  even, denormals to zero) and summed
  with an MPI user operation that adds in fp32 and rounds each partial sum back to bf16: half the
  bytes on the wire, about 3 significant digits per gradient.
* ``Timeline`` — per-step spans of compute (forward, backward, optimizer) and communication (each
  bucket from its start to its observed completion, and the exposed wait), written as a
  chrome-trace JSON (chrome://tracing, Perfetto) with one process row per rank.
* ``DataParallel`` — the pieces together for a training loop: broadcast of rank 0's parameters
  and buffers, a step's gradient averaging with the loss statistics, the BatchNorm running
  statistics averaged across ranks (as each rank normalizes its own slice: Horovod's default,
  not synchronized BatchNorm), sharded evaluation and a replica check.

A communication core (``comm_core=True``): MPICH's asynchronous progress thread
(MPIR_CVAR_ASYNC_PROGRESS=1) progresses the allreduces while the compute threads run, at the
price of a core per rank: the MLSL trade-off.  Without it the allreduces progress when the
training loop polls them, after the backward of every layer that has parameters.
"""
import json
import math
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import _validate
from .precision import bf16_bits_to_fp32, fp32_to_bf16_bits

#: what --dist and Communicator say when mpi4py (or an MPI library) is missing
MPI_HINT = ('data-parallel training needs MPI: pip install "dlcpu[mpi]" (mpi4py and the mpich wheel, no '
            'compiler needed), then launch it with mpiexec -n <ranks> ... (see docs/cluster.md)')

#: Default fusion threshold.  The digits CNN has 87 KB of gradients: 32 KiB buckets give four
#: of them, so the first allreduces overlap the rest of backward; Horovod's 64 MiB default would
#: make one bucket that can only start once backward is over.
DEFAULT_FUSION_THRESHOLD = 32 * 1024

#: Default deadline of a collective, seconds: far above a step of any model dlcpu trains (ranks
#: start their first collective up to a few seconds apart while they import and load data).
DEFAULT_TIMEOUT = 120.0

COMPRESSIONS = ("none", "bf16")

#: The least deadline of the collectives before the first step (Communicator's first barrier,
#: the weight broadcast): ranks get there seconds apart while they import and load data.
STARTUP_TIMEOUT = 60.0

#: How long a wait spins on MPI_Test before it starts to sleep between polls (see
#: Communicator.wait): longer than any allreduce of a step, far shorter than a stalled peer.
SPIN_SECONDS = 0.25
# How long a failing rank waits between printing its error and MPI_Abort.  Hydra forwards each
# rank's stderr through its proxy on one socket and the abort request on another; when the abort
# wins, the proxies are killed with the error line still unread, and the user sees a job that
# ended with no reason (seen once in CI, a stalled-rank test that got only the epoch lines).
ABORT_GRACE_SECONDS = 0.5


class DistributedError(RuntimeError):
    """Data-parallel training cannot go on: MPI is missing, the ranks disagree, or a peer is gone."""


class CollectiveTimeout(DistributedError):
    """A collective did not complete within the deadline: a rank has died, stalled or left."""


def launcher_size():
    """The rank count a launcher (mpiexec/hydra, Open MPI, Slurm's PMI) announces in this
    process's environment, or None when it was not started by one; no MPI import."""
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None


@contextmanager
def abort_on_error(comm=None):
    """Around a rank's work: an exception (or Ctrl-C) in a job of several ranks is printed with
    the rank's name and ends every rank with MPI_Abort, instead of leaving the others to wait
    for this one until their deadline.  comm: a Communicator, by default the world's if MPI has
    started (with one rank, or before MPI starts, the exception just propagates)."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        comm = comm or _WORLD
        if comm is None or comm.size == 1:
            raise
        import sys
        import traceback

        traceback.print_exc()
        print(f"error: rank {comm.rank} of {comm.size}: {exc or type(exc).__name__}", file=sys.stderr, flush=True)
        comm.abort(130 if isinstance(exc, KeyboardInterrupt) else 1)


def launcher_rank():
    """This process's rank as its launcher announces it, or None outside a launcher."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None


def load_mpi(async_progress=False):
    """mpi4py's MPI module, initialized; DistributedError with the install hint when mpi4py or
    its MPI library is missing.  async_progress asks MPICH for its progress thread, which must be
    decided before MPI starts (a later request is refused with an error)."""
    import sys

    if async_progress:
        if "mpi4py.MPI" in sys.modules:
            from mpi4py import MPI
            if MPI.Is_initialized() and os.environ.get("MPIR_CVAR_ASYNC_PROGRESS") != "1":
                raise DistributedError("a communication core (comm_core) must be chosen before MPI starts: "
                                       "this process has already initialized MPI without it")
        os.environ["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:   # no mpi4py, or no libmpi under it
        raise DistributedError(f"{MPI_HINT} ({exc})") from None
    return MPI


def check_compression(compression):
    """'none' or 'bf16' (ValueError naming the choices otherwise)."""
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise ValueError(f"distributed: compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return compression


def check_fusion_threshold(value, where="fusion_threshold"):
    """Bytes (an int >= 0; 0: one bucket per parameter, no fusion)."""
    return _validate.positive_int(value, where, "distributed", minimum=0)


def parse_bytes(text):
    """'64K', '1M', '32768', '0' -> bytes (K and M are 1024-based); ValueError otherwise."""
    if not isinstance(text, (str, int)) or isinstance(text, bool):
        raise TypeError(f"a size in bytes must be a str or int, got {type(text).__name__}")
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    if not t.isascii():
        raise ValueError(f"must be a size in bytes such as 32K, 1M or 0, got {text!r}")
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"must be a size in bytes such as 32K, 1M or 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or value * scale > 2**40:
        raise ValueError(f"must be between 0 and 1024G bytes, got {text!r}")
    if value * scale != int(value * scale):
        raise ValueError(f"must be a whole number of bytes, got {text!r}")
    return int(value * scale)


# ------------------------------------------------------------------------------------ bf16 wire
def _bf16_sum(inbuf, inoutbuf, datatype):
    """MPI user operation: inout = bf16(fp32(in) + fp32(inout)), elementwise (commutative)."""
    a = np.frombuffer(inbuf, dtype=np.uint16)
    b = np.frombuffer(inoutbuf, dtype=np.uint16)
    # one thread: MPI runs this inside its progress engine, perhaps while compute threads are busy
    b[...] = fp32_to_bf16_bits(bf16_bits_to_fp32(a, n_threads=1) + bf16_bits_to_fp32(b, n_threads=1), n_threads=1)


# -------------------------------------------------------------------------------- communicator
class Communicator:
    """An MPI communicator (COMM_WORLD by default) whose collectives have a deadline.

    rank, size: this process's rank and the rank count; local_size: ranks on this node (MPI's
    shared-memory split), for the threads x ranks > cores check.  timeout: seconds a collective
    may take before CollectiveTimeout.  async_progress: MPICH's progress thread (a communication
    core; MPICH only, DistributedError elsewhere).  `where` names what the training loop is
    doing, for timeout messages."""

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT, async_progress=False):
        self.timeout = check_timeout(timeout)
        self.MPI = MPI = load_mpi(async_progress)
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.where = "the start"
        self._bf16_op = None
        # Split_type has no non-blocking form: meet at a barrier with a deadline first, so that a
        # rank that never arrives is reported instead of hanging the others here
        self.timeout = max(self.timeout, STARTUP_TIMEOUT)
        self.barrier("the first barrier")
        self.timeout = check_timeout(timeout)
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size, self.local_rank = local.Get_size(), local.Get_rank()
        local.Free()
        self.async_progress = False
        if async_progress:
            library = MPI.Get_library_version()
            if "MPICH" not in library or MPI.Query_thread() != MPI.THREAD_MULTIPLE:
                raise DistributedError(f"a communication core needs MPICH's asynchronous progress with "
                                       f"MPI_THREAD_MULTIPLE; this MPI is {library.splitlines()[0].strip()!r}")
            self.async_progress = True

    def describe(self):
        return f"rank {self.rank} of {self.size}"

    def wait(self, request, what, deadline=None):
        """Wait for a non-blocking request, polling; CollectiveTimeout after `timeout` seconds
        (or at `deadline`, a time.monotonic() value shared by several requests).

        It spins on Test for SPIN_SECONDS before it sleeps between polls: without a progress
        thread a collective advances only while its ranks poll, so a rank that sleeps stalls its
        peers too.  (Measured: with sleeps after 0.2 ms of spinning, the four buckets of the
        digits CNN took 10.6 ms to reduce after backward and a 2-rank step 16 ms against 4.6 ms
        on one rank; MPI_Wait itself spins.)"""
        if request.Test():
            return
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        spin_until = time.monotonic() + SPIN_SECONDS
        pause = 0.0
        while not request.Test():
            now = time.monotonic()
            if now > deadline:
                at = f" at {self.where}" if self.where else ""
                raise CollectiveTimeout(
                    f"{self.describe()}: {what}{at} did not complete within {self.timeout:g} s: another rank "
                    f"has died, stalled or left the job, or the deadline (--comm-timeout) is too short for it")
            if now > spin_until:     # a long wait (a slow or lost peer): poll every millisecond at most
                pause = min(1e-3, pause * 2 or 1e-5)
                time.sleep(pause)

    def allreduce(self, array, what):
        """In-place sum of a float32/float64 array over the ranks."""
        self.wait(self.start_sum(array), what)
        return array

    def start_sum(self, array):
        """Start the in-place sum of a float32/float64 array over the ranks; returns the request."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def barrier(self, what):
        self.wait(self.comm.Ibarrier(), what)

    def on_rank0(self, check, what):
        """Run check() on rank 0 alone (a path only rank 0 writes) and let every rank know how it
        went: rank 0 re-raises check's exception, the others raise DistributedError, so all ranks
        stop together instead of waiting for rank 0 at the next collective."""
        failure, ok = None, np.ones(1, np.float64)
        if self.rank == 0:
            try:
                check()
            except Exception as exc:   # noqa: BLE001  (re-raised below, after the others know)
                failure, ok[0] = exc, 0.0
        self.broadcast(ok, f"the result of rank 0's check of {what}")
        if failure is not None:
            raise failure
        if not ok[0]:
            raise DistributedError(f"rank 0 refused {what} (its error says why)")

    def agree(self, values, what):
        """DistributedError unless every rank passed the same numbers (settings that must match
        for the ranks to issue the same collectives, such as the data size and the batch)."""
        everyone = self.allgather(values, f"the check that the ranks agree on {what}")
        differ = [r for r in range(self.size) if not np.array_equal(everyone[r], everyone[0])]
        if differ:
            raise DistributedError(f"the ranks disagree on {what}: rank 0 has {everyone[0].tolist()}, "
                                   + ", ".join(f"rank {r} has {everyone[r].tolist()}" for r in differ))

    def broadcast(self, array, what, root=0):
        """In place: every rank's `array` becomes root's."""
        self.wait(self.comm.Ibcast(array, root=root), what)
        return array

    def allgather(self, values, what):
        """float64 values (the same count on every rank) -> a (size, count) array of everyone's."""
        mine = np.ascontiguousarray(values, dtype=np.float64).ravel()
        out = np.empty((self.size, mine.size), np.float64)
        self.wait(self.comm.Iallgather(mine, out), what)
        return out

    def gather_rows(self, rows, what, root=0):
        """(k_rank, w) float64 arrays of any k -> on root, all ranks' rows in rank order; None elsewhere."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        width = rows.shape[1]
        counts = self.allgather([rows.size], f"{what} (sizes)")[:, 0].astype(np.int64)
        out = np.empty(int(counts.sum()), np.float64) if self.rank == root else None
        recv = [out, (counts, np.concatenate([[0], np.cumsum(counts)[:-1]])), self.MPI.DOUBLE] if out is not None else None
        self.wait(self.comm.Igatherv(rows.ravel(), recv, root=root), what)
        return None if out is None else out.reshape(-1, width)

    def start_allreduce(self, buffer, bf16=False):
        """Start the in-place sum of a float32 buffer (or, bf16=True, of uint16 bf16 patterns)."""
        if bf16:
            if self._bf16_op is None:
                self._bf16_op = self.MPI.Op.Create(_bf16_sum, commute=True)
            return self.comm.Iallreduce(self.MPI.IN_PLACE, [buffer, self.MPI.UINT16_T], op=self._bf16_op)
        return self.start_sum(buffer)

    def abort(self, code=1):
        """End the whole job (every rank) with exit code `code`: what a rank does after an error
        the others cannot know about, so that they do not wait for it until their deadline.
        Whatever this rank printed is flushed first and given ABORT_GRACE_SECONDS to reach the
        launcher."""
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):     # a closed or broken stream has nothing to lose
                pass
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)


_WORLD = None


def world(timeout=DEFAULT_TIMEOUT, async_progress=False):
    """The Communicator of MPI_COMM_WORLD, made once per process (MPI starts once); a later call
    sets its deadline to `timeout`."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Communicator(timeout=timeout, async_progress=async_progress)
    else:
        _WORLD.timeout = check_timeout(timeout)
    return _WORLD


def threads_per_rank(local_ranks, cores, comm_core=False):
    """Default compute threads of each rank: the node's cores shared out over its ranks, one
    fewer per rank with a communication core (never below 1)."""
    share = max(1, cores // max(1, local_ranks))
    return max(1, share - 1) if comm_core else share


def rank_threads(threads, comm, comm_core=False):
    """(compute threads per rank, warning or None) for the ranks of `comm` on this node: `threads`
    when given, else threads_per_rank.  A launcher that binds ranks to cores leaves each rank an
    affinity mask smaller than the node; then the rank's own cores are the budget, else the
    node's cores are shared by its ranks."""
    node = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = node
    ranks, cores = (1, mine) if mine < node else (comm.local_size, node)
    per_rank = threads or threads_per_rank(ranks, cores, comm_core)
    return per_rank, oversubscription_warning(per_rank, ranks, cores, comm_core)


def oversubscription_warning(threads, local_ranks, cores, comm_core=False):
    """A warning (str) when the ranks on this node ask for more threads than it has cores, else
    None: oversubscribed ranks time-slice, and a rank that is descheduled holds every other rank
    at the next allreduce."""
    per_rank = threads + (1 if comm_core else 0)
    if per_rank * local_ranks <= cores:
        return None
    what = f"{threads} compute thread(s){' + 1 communication thread' if comm_core else ''}"
    fit = threads_per_rank(local_ranks, cores, comm_core)
    advice = f"use --threads {fit} or fewer ranks per node" if fit < threads else "use fewer ranks per node"
    return (f"{local_ranks} rank(s) on this node x {what} = {per_rank * local_ranks} threads for {cores} cores: "
            f"the ranks will time-slice and wait for each other at every allreduce; {advice}")


def check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"distributed: timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


# ------------------------------------------------------------------------------------ timeline
#: timeline span names; a rank's spans travel to rank 0 as (name index, step, start, duration) rows
SPANS = ("forward", "backward", "optimizer", "wait", "allreduce")
_COMPUTE_TID, _COMM_TID = 0, 1


class Timeline:
    """Spans of one rank's training steps, in seconds from `origin` (perf_counter)."""

    def __init__(self, origin=None):
        self.origin = time.perf_counter() if origin is None else origin
        self.rows = []        # (span index, step, start s, duration s, bucket or -1)

    def add(self, name, step, start, end, bucket=-1):
        self.rows.append((SPANS.index(name), step, start - self.origin, end - start, bucket))

    def as_array(self):
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, 5)


def chrome_trace(rows_by_rank, buckets=None):
    """{'traceEvents': [...]} from each rank's Timeline rows: one process per rank, thread 0
    compute, thread 1 communication; times in microseconds."""
    events = []
    for rank, rows in enumerate(rows_by_rank):
        events.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}})
        events += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": t, "args": {"name": label}}
                   for t, label in ((_COMPUTE_TID, "compute"), (_COMM_TID, "communication"))]
        for code, step, start, dur, bucket in np.asarray(rows).reshape(-1, 5):
            name = SPANS[int(code)]
            tid = _COMM_TID if name in ("wait", "allreduce") else _COMPUTE_TID
            args = {"step": int(step)}
            if bucket >= 0:
                args["bucket"] = int(bucket)
                if buckets:
                    args["bytes"] = buckets[int(bucket)]
                name = f"allreduce bucket {int(bucket)}"
            events.append({"name": name, "ph": "X", "pid": rank, "tid": tid, "ts": start * 1e6,
                           "dur": dur * 1e6, "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def summarize_timeline(trace, skip=1):
    """Per rank, the medians over steps (the first `skip` left out) of a chrome trace written by
    --timeline: step time (forward start to optimizer end), compute (forward + backward +
    optimizer), allreduce time in flight (the union of the buckets' spans) and exposed
    communication (the wait after backward); with exposed / in flight, the share of the
    communication that overlap did not hide.  `trace`: the dict or a path to the JSON file."""
    if isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or skip < 0:
        raise ValueError(f"summarize_timeline: skip must be an int >= 0, got {skip!r}")
    if not isinstance(trace, dict):
        if not isinstance(trace, (str, os.PathLike)):
            raise TypeError(f"summarize_timeline: trace must be a dict or a file path, got {type(trace).__name__}")
        try:
            with open(trace) as f:
                trace = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the timeline {trace}: {exc}") from None
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise ValueError("not a dlcpu timeline: no traceEvents list")  # noqa: TRY004  (bad file content, not a bad argument)
    steps = {}
    for i, e in enumerate(events):
        if not isinstance(e, dict) or e.get("ph") != "X" or not isinstance(e.get("args"), dict) \
                or "step" not in e["args"]:
            continue
        _check_span(i, e)
        key = (e.get("pid", 0), e["args"]["step"])
        steps.setdefault(key, []).append(e)
    if not steps:
        raise ValueError("the timeline has no step spans (was it written by dlcpu train --dist --timeline?)")
    rows = []
    for rank in sorted({r for r, _ in steps}):
        numbers = sorted(s for r, s in steps if r == rank)
        kept = numbers[skip:] if len(numbers) > skip else numbers
        per = {"step": [], "compute": [], "comm": [], "exposed": []}
        for s in kept:
            spans = steps[(rank, s)]
            start = min(e["ts"] for e in spans)
            end = max(e["ts"] + e["dur"] for e in spans)
            per["step"].append(end - start)
            per["compute"].append(sum(e["dur"] for e in spans if e["name"] in ("forward", "backward", "optimizer")))
            per["comm"].append(union_seconds([(e["ts"], e["ts"] + e["dur"]) for e in spans
                                              if e["name"].startswith("allreduce")]))
            per["exposed"].append(sum(e["dur"] for e in spans if e["name"] == "wait"))
        med = {k: float(np.median(v)) * 1e-6 for k, v in per.items()}
        rows.append({"rank": rank, "steps": len(kept), "step_seconds": med["step"], "compute_seconds": med["compute"],
                     "comm_seconds": med["comm"], "exposed_seconds": med["exposed"],
                     "exposed_of_comm": med["exposed"] / med["comm"] if med["comm"] else float("nan"),
                     "exposed_share": med["exposed"] / med["step"] if med["step"] else float("nan")})
    return rows


def _check_span(i, e):
    """ValueError naming event i unless it is a span summarize_timeline can use."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    problem = None
    if not isinstance(e.get("name"), str):
        problem = "no name"
    elif not number(e.get("ts")) or not number(e.get("dur")) or e["dur"] < 0:
        problem = "no finite 'ts' and 'dur' >= 0"
    elif not integer(e.get("pid", 0)) or not integer(e["args"]["step"]):
        problem = "a 'pid' or 'step' that is not an integer"
    if problem:
        raise ValueError(f"not a dlcpu timeline: event {i} ({str(e)[:80]}) has {problem}")


def write_json_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def union_seconds(intervals):
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


# -------------------------------------------------------------------------------- fusion buckets
@dataclass
class _Bucket:
    params: list          # Parameters, in backward order
    buffer: np.ndarray    # flat float32: the params' gradients are views into it
    wire: np.ndarray      # what travels: the buffer itself, or its bf16 patterns
    pending: set = None   # ids of params whose gradient is not complete yet this step
    request: object = None
    started: float = 0.0
    done: float = 0.0

    @property
    def nbytes(self):
        return self.wire.nbytes


def plan_buckets(params, threshold):
    """Greedy fusion: consecutive params (backward order) in buckets of at most `threshold`
    float32 bytes; a larger parameter has a bucket to itself; threshold 0: one bucket each."""
    buckets, current, size = [], [], 0
    for p in params:
        n = p.grad.nbytes
        if current and size + n > threshold:
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += n
    if current:
        buckets.append(current)
    return buckets


class GradientReducer:
    """Averages a model's gradients over the ranks in fusion buckets that start during backward.

    Making one re-points every Parameter's `grad` at a view of its bucket's flat buffer (the
    values are kept; close() leaves the views in place) and registers a backward hook on every
    module that owns parameters.  Per step: start_step(share, step) (share: this rank's
    n_local / n_global), then the model's backward (the hooks start the buckets), then finish()
    -> exposed seconds.  overlap=False starts every bucket only in finish() (the baseline a
    timeline compares with).

    Each parameter must belong to one module, used once per backward: a module listed twice in
    the model or a parameter shared between modules is refused (its bucket would be marked ready
    after the first use, and its transfer would start while the second use still adds to it)."""

    def __init__(self, model, comm, fusion_threshold=DEFAULT_FUSION_THRESHOLD, compression="none", overlap=True,
                 timeline=None):
        check_compression(compression)
        _check_unshared(model)
        self.comm, self.compression, self.overlap, self.timeline = comm, compression, bool(overlap), timeline
        self.threshold = check_fusion_threshold(fusion_threshold)
        named = model.named_parameters()
        order = [p for _, p in reversed(named)]      # backward produces the last layer's first
        self.buckets = []
        for name, p in named:
            if p.grad.dtype != np.float32 or p.grad.shape != p.data.shape:
                raise TypeError(f"distributed: parameter {name} has a {p.grad.dtype} gradient of shape {p.grad.shape} "
                                f"for {p.data.shape} weights; the fusion buffers hold float32 gradients")
        for group in plan_buckets(order, self.threshold):
            buffer = np.zeros(sum(p.grad.size for p in group), np.float32)
            offset = 0
            for p in group:
                view = buffer[offset:offset + p.grad.size].reshape(p.grad.shape)
                view[...] = p.grad
                p.grad = view
                offset += p.grad.size
            wire = buffer if compression == "none" else np.zeros(buffer.size, np.uint16)
            self.buckets.append(_Bucket(group, buffer, wire))
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b.params}
        self._handles = [m.register_backward_hook(self._on_backward) for m in _modules_with_parameters(model)]
        self.step, self._next, self.share = 0, 0, 1.0

    def close(self):
        """Take the backward hooks off the model (its gradients stay views into the buffers)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def bucket_bytes(self):
        return [b.nbytes for b in self.buckets]

    def start_step(self, share, step):
        self.share, self.step, self._next = float(share), step, 0
        for b in self.buckets:
            b.pending = {id(p) for p in b.params}
            b.request, b.started, b.done = None, 0.0, 0.0

    def _on_backward(self, module):
        for p in module.own_parameters().values():
            i = self._bucket_of.get(id(p))
            if i is not None:
                self.buckets[i].pending.discard(id(p))
        if self.overlap:
            while self._next < len(self.buckets) and not self.buckets[self._next].pending:
                self._start(self._next)
            self._poll()

    def _start(self, i):
        b = self.buckets[i]
        if self.share != 1.0:
            b.buffer *= np.float32(self.share)
        if self.compression == "bf16":
            b.wire[...] = fp32_to_bf16_bits(b.buffer, n_threads=1)
        b.started = time.perf_counter()
        b.request = self.comm.start_allreduce(b.wire, bf16=self.compression == "bf16")
        self._next = i + 1

    def _poll(self):
        """Test the buckets in flight, oldest first, and stop at the first one still running:
        one Test runs MPI's progress engine for all of them, and they complete in order."""
        for b in self.buckets[:self._next]:
            if not b.done:
                if not b.request.Test():
                    return
                b.done = time.perf_counter()

    def finish(self):
        """Start the buckets not started yet (in order), wait for all; returns the exposed
        seconds (from here until the last bucket completed)."""
        t0 = time.perf_counter()
        while self._next < len(self.buckets):
            self._start(self._next)
        deadline = time.monotonic() + self.comm.timeout     # one deadline for the whole step
        for i, b in enumerate(self.buckets):
            if not b.done:
                self.comm.wait(b.request, f"the allreduce of gradient bucket {i} ({b.nbytes} bytes)", deadline)
                b.done = time.perf_counter()
            if self.compression == "bf16":
                b.buffer[...] = bf16_bits_to_fp32(b.wire, n_threads=1)
        t1 = time.perf_counter()
        if self.timeline is not None:
            for i, b in enumerate(self.buckets):
                self.timeline.add("allreduce", self.step, b.started, b.done, bucket=i)
        return t1 - t0

    def comm_seconds(self):
        """This step's communication time: the union of the buckets' [start, completion] spans."""
        return union_seconds([(b.started, b.done) for b in self.buckets])


def _modules_with_parameters(model):
    own = [model] if model.own_parameters() else []
    return own + [m for c in model.children() for m in _modules_with_parameters(c)]


def _check_unshared(model):
    """ValueError when a module occurs twice in the model or a parameter belongs to two modules
    (GradientReducer's docstring says why)."""
    modules, owner = set(), {}
    for m in _modules_with_parameters(model):
        if id(m) in modules:
            raise ValueError(f"distributed: {m.describe()} occurs twice in the model; data-parallel training needs "
                             "every layer with parameters once (make a second layer instead of reusing it)")
        modules.add(id(m))
        for name, p in m.own_parameters().items():
            if id(p) in owner:
                raise ValueError(f"distributed: parameter {name} of {m.describe()} is shared with {owner[id(p)]}; "
                                 "data-parallel training needs each parameter in one layer")
            owner[id(p)] = m.describe()


def _buffers(model):
    """The model's non-trainable state that training changes: BatchNorm running statistics."""
    own = [getattr(model, n) for n in ("running_mean", "running_var") if isinstance(getattr(model, n, None), np.ndarray)]
    return own + [a for c in model.children() for a in _buffers(c)]


def parameters_checksum(model):
    """crc32 of every parameter's bytes, in order: equal on two ranks iff (almost surely) their
    weights are bitwise identical."""
    crc = 0
    for p in model.parameters():
        crc = zlib.crc32(np.ascontiguousarray(p.data).view(np.uint8), crc)
    return crc


# -------------------------------------------------------------------------------- data parallel
@dataclass
class StepComm:
    """One step's timing on this rank, seconds."""
    step: float        # forward start -> optimizer end
    comm: float        # union of the allreduce spans
    exposed: float     # waiting for communication after backward


@dataclass
class DataParallelOptions:
    """How `dlcpu train --dist` averages gradients (see the module docstring)."""
    fusion_threshold: int = DEFAULT_FUSION_THRESHOLD
    compression: str = "none"
    overlap: bool = True
    comm_core: bool = False
    timeout: float = DEFAULT_TIMEOUT
    check_replicas: bool = False
    timeline: str = None

    def __post_init__(self):
        check_fusion_threshold(self.fusion_threshold)
        for name in ("overlap", "comm_core", "check_replicas"):
            _validate.flag(getattr(self, name), name, "DataParallelOptions")
        check_compression(self.compression)
        check_timeout(self.timeout)


class DataParallel:
    """A model replica on every rank, kept identical: what a training loop needs (this is what
    dlcpu.train.data_parallel_step does every step).

        dp = DataParallel(model, options)        # broadcasts rank 0's weights and buffers
        mine = dp.my_slice(np.arange(len(x)))     # this rank's rows of the global batch x
        dp.begin("epoch 1, step 3")               # names the step in timeout messages
        logits = model(x[mine]); loss, dlogits = nn.softmax_cross_entropy(logits, y[mine])
        dp.start_gradients(len(mine), len(x), loss * len(mine), correct)
        model.backward(dlogits)                   # the hooks start the buckets
        loss_sum, correct, n = dp.finish_gradients()   # the gradients are the global mean now
        opt.step(); opt.zero_grad(); dp.end_step()
    """

    def __init__(self, model, options=None, comm=None):
        self.options = options or DataParallelOptions()
        self.comm = comm or world(self.options.timeout, self.options.comm_core)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.model = model
        self.timeline = Timeline() if self.options.timeline else None
        # ranks reach the first collectives seconds apart (imports, data loading): a short
        # --comm-timeout applies from the first step on
        step_timeout, self.comm.timeout = self.comm.timeout, max(self.comm.timeout, STARTUP_TIMEOUT)
        if self.options.timeline is not None:        # rank 0 writes it: its check, every rank told
            from .nn import check_writable
            self.comm.on_rank0(lambda: check_writable(self.options.timeline), f"the timeline path {self.options.timeline}")
        self.comm.where = "the start (broadcast of rank 0's weights)"
        for i, p in enumerate(model.parameters()):
            self.comm.broadcast(p.data, f"the broadcast of parameter {i}")
        for i, a in enumerate(_buffers(model)):
            self.comm.broadcast(a, f"the broadcast of buffer {i}")
        self.reducer = GradientReducer(model, self.comm, self.options.fusion_threshold, self.options.compression,
                                       self.options.overlap, self.timeline)
        self.history = []            # StepComm per step
        self._stats = np.zeros(3, np.float64)
        self._stats_request = None
        self.step_count = 0
        # every rank starts its clock together, so the timeline's rows line up
        self.comm.barrier("the start barrier")
        self.comm.timeout = step_timeout
        if self.timeline is not None:
            self.timeline.origin = time.perf_counter()

    def my_slice(self, global_batch):
        from .data import shard
        return shard(global_batch, self.size, self.rank)

    def begin(self, step_label):
        """A step starts (its forward is next)."""
        self.step_count += 1
        self.comm.where = step_label
        self._t_start = time.perf_counter()

    def start_gradients(self, n_local, n_global, loss_sum, correct):
        """After the forward and loss, before backward: start the statistics' allreduce and arm
        the fusion buckets with this rank's share of the global batch."""
        self._t_forward = time.perf_counter()
        self._stats[:] = (loss_sum, correct, n_local)
        self._stats_request = self.comm.start_sum(self._stats)
        self.reducer.start_step(n_local / n_global, self.step_count)

    def finish_gradients(self):
        """After backward: wait for every bucket; returns (global loss sum, global correct count,
        global sample count)."""
        t_backward = time.perf_counter()
        exposed = self.reducer.finish()
        t0 = time.perf_counter()
        self.comm.wait(self._stats_request, "the allreduce of the loss statistics")
        exposed += time.perf_counter() - t0
        self._t_backward, self._exposed = t_backward, exposed
        return float(self._stats[0]), round(self._stats[1]), round(self._stats[2])

    def end_step(self):
        """After the optimizer: record the step's timing (and check the replicas if asked)."""
        t_end = time.perf_counter()
        self.history.append(StepComm(t_end - self._t_start, self.reducer.comm_seconds(), self._exposed))
        if self.timeline is not None:
            tl, s = self.timeline, self.step_count
            tl.add("forward", s, self._t_start, self._t_forward)
            tl.add("backward", s, self._t_forward, self._t_backward)
            tl.add("wait", s, self._t_backward, self._t_backward + self._exposed)
            tl.add("optimizer", s, self._t_backward + self._exposed, t_end)
        if self.options.check_replicas:
            self.check_replicas()

    def check_replicas(self):
        """DistributedError unless every rank's parameters are bitwise identical to rank 0's."""
        sums = self.comm.allgather([parameters_checksum(self.model)], "the replica check")[:, 0]
        differ = [r for r in range(self.size) if sums[r] != sums[0]]
        if differ:
            raise DistributedError(f"after {self.comm.where}: the weights of rank(s) {differ} differ from rank 0's "
                                   f"(checksums {[int(v) for v in sums]})")

    def average_buffers(self):
        """Average the BatchNorm running statistics over the ranks (each rank estimated them on
        its own slices); called before evaluation and checkpoints."""
        buffers = _buffers(self.model)
        if not buffers or self.size == 1:
            return
        flat = np.concatenate([a.ravel() for a in buffers]).astype(np.float64)
        self.comm.allreduce(flat, "the averaging of the BatchNorm statistics")
        flat /= self.size
        offset = 0
        for a in buffers:
            a.ravel()[...] = flat[offset:offset + a.size]
            offset += a.size

    def sum_counts(self, values, what):
        arr = np.asarray(values, dtype=np.float64).copy()
        return self.comm.allreduce(arr, what)

    def comm_summary(self, skip=1):
        """Medians over the steps (the first `skip` left out: warm-up) of step, communication and
        exposed time, and the shares of a step they are."""
        rows = self.history[skip:] if len(self.history) > skip else self.history
        if not rows:
            return {}
        step = float(np.median([r.step for r in rows]))
        comm = float(np.median([r.comm for r in rows]))
        exposed = float(np.median([r.exposed for r in rows]))
        return {"steps": len(rows), "step_seconds": step, "comm_seconds": comm, "exposed_seconds": exposed,
                "comm_share": comm / step if step else float("nan"),
                "exposed_share": exposed / step if step else float("nan"),
                "exposed_of_comm": exposed / comm if comm else float("nan"),
                "buckets": len(self.reducer.buckets), "bucket_bytes": self.reducer.bucket_bytes,
                "compression": self.options.compression, "overlap": self.options.overlap,
                "comm_core": self.comm.async_progress, "ranks": self.size}

    def write_timeline(self):
        """Gather every rank's spans on rank 0 and write the chrome trace there (atomically)."""
        if self.timeline is None:
            return
        mine = self.timeline.as_array()
        mine = np.hstack([mine, np.full((len(mine), 1), self.rank, np.float64)])
        rows = self.comm.gather_rows(mine, "the gathering of the timeline")
        if self.rank == 0:
            by_rank = [rows[rows[:, 5] == r][:, :5] for r in range(self.size)]
            write_json_atomic(self.options.timeline, chrome_trace(by_rank, self.reducer.bucket_bytes))

    def close(self):
        self.reducer.close()
