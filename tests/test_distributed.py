"""dlcpu.distributed without MPI: bf16 wire format, fusion-bucket planning, the gradient reducer
driven by a fake communicator (start order during backward, views, shares), backward hooks,
timeline and warnings.  The multi-rank behaviour is tested under mpiexec in test_mpi.py."""
import json

import numpy as np
import pytest

from dlcpu import distributed, nn, train
from dlcpu.data import shard
from dlcpu.distributed import GradientReducer, parse_bytes, plan_buckets
from dlcpu.precision import bf16_bits_to_fp32, fp32_to_bf16_bits

ml_dtypes = pytest.importorskip("ml_dtypes")


# ------------------------------------------------------------------------------------ bf16 wire
def test_bf16_rounding_matches_ml_dtypes_on_normal_values(rng):
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 20000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, 3.3895314e38, 1.0 + 2**-8,
                                  1.0 + 3 * 2**-8, np.finfo(np.float32).max], np.float32)]).astype(np.float32)
    got = fp32_to_bf16_bits(x)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    denormal = (x != 0) & (np.abs(x) < np.finfo(np.float32).tiny)     # flushed to a signed zero (precision.py)
    want[denormal] = np.where(x[denormal] < 0, 0x8000, 0)
    np.testing.assert_array_equal(got, want)
    back = bf16_bits_to_fp32(got)
    np.testing.assert_array_equal(back, want.view(ml_dtypes.bfloat16).astype(np.float32))


def test_bf16_nan_stays_nan():
    x = np.array([np.nan, -np.nan, np.float32(np.uint32(0x7F800001).view(np.float32))], np.float32)
    assert np.isnan(bf16_bits_to_fp32(fp32_to_bf16_bits(x))).all()


def test_bf16_sum_op_adds_and_rounds(rng):
    a = rng.standard_normal(1000).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    wa, wb = fp32_to_bf16_bits(a), fp32_to_bf16_bits(b)
    distributed._bf16_sum(memoryview(wa), memoryview(wb), None)
    want = (bf16_bits_to_fp32(fp32_to_bf16_bits(a)) + bf16_bits_to_fp32(fp32_to_bf16_bits(b))).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(wb, want.view(np.uint16))


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("text, value", [("0", 0), ("32768", 32768), ("32K", 32768), ("32k", 32768), ("1M", 2**20),
                                         ("1MiB", 2**20), ("1.5K", 1536), ("64KB", 65536)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "1e400", "nan", "inf", "2T", "K", "1.5", "1e-3", "\u0661\u0662"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="size in bytes|between 0 and|whole number"):
        parse_bytes(text)


@pytest.mark.parametrize("kwargs, words", [
    ({"fusion_threshold": -1}, "fusion_threshold"), ({"compression": "fp16"}, "compression"),
    ({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"), ({"timeout": float("inf")}, "timeout")])
def test_options_refuse_bad_values(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        distributed.DataParallelOptions(**kwargs)


def test_options_refuse_non_flags():
    with pytest.raises(TypeError, match="comm_core"):
        distributed.DataParallelOptions(comm_core="false")


def test_train_refuses_bad_dist():
    with pytest.raises(TypeError, match="dist must be True or a dlcpu.distributed.DataParallelOptions"):
        train.train_digits(epochs=1, dist="yes")


# ------------------------------------------------------------------------------- fusion buckets
def _params(*sizes):
    return [nn.Parameter(np.zeros(n, np.float32)) for n in sizes]


def test_plan_buckets_greedy_in_order():
    ps = _params(10, 10, 10, 100, 5)     # 40, 40, 40, 400, 20 bytes
    groups = plan_buckets(ps, 80)
    assert [[p.grad.size for p in g] for g in groups] == [[10, 10], [10], [100], [5]]
    assert [p for g in groups for p in g] == ps                       # every parameter once, in order
    assert [len(g) for g in plan_buckets(ps, 0)] == [1] * 5           # 0: no fusion
    assert [len(g) for g in plan_buckets(ps, 10**9)] == [5]           # one bucket


class FakeRequest:
    """Completes on its second Test (as a transfer that needs two progress polls); counts Tests."""

    def __init__(self, log):
        self.log, self.tests = log, 0

    def Test(self):
        self.tests += 1
        return self.tests >= 2


class FakeComm:
    """A one-rank communicator: records the order and the moment buckets start."""

    rank, size, timeout, where = 0, 1, 1.0, ""

    def __init__(self):
        self.started = []
        self.requests = []
        self.hooks_seen = 0

    def start_allreduce(self, buffer, bf16=False):
        self.started.append((buffer.size, self.hooks_seen, bf16))
        self.requests.append(FakeRequest(self.started))
        return self.requests[-1]

    def wait(self, request, what, deadline=None):
        while not request.Test():
            pass


def _digits_step(model, n=8):
    data = train.load_digits_split(0)
    logits = model(train.image_batch(data.x_train[:n]))
    _, dlogits = nn.softmax_cross_entropy(logits, data.y_train[:n])
    return dlogits


def test_reducer_grads_are_bucket_views_and_start_during_backward():
    model = nn.digits_resnet(16, seed=0)
    comm = FakeComm()
    red = GradientReducer(model, comm, fusion_threshold=32 * 1024)
    assert len(red.buckets) >= 3
    for b in red.buckets:
        for p in b.params:
            assert np.shares_memory(p.grad, b.buffer)
    counter = {"n": 0}

    def count(module):
        counter["n"] += 1
        comm.hooks_seen = counter["n"]

    layers = distributed._modules_with_parameters(model)
    for m in layers:            # registered after the reducer's: counts the layers done so far
        m.register_backward_hook(count)
    dlogits = _digits_step(model)
    red.start_step(0.5, 1)
    model.backward(dlogits)
    started_during = len(comm.started)
    red.finish()
    assert len(comm.started) == len(red.buckets)
    # the first buckets started before backward reached the first layers: overlap
    assert started_during >= len(red.buckets) - 1
    assert comm.started[0][1] <= len(layers) // 2     # the first bucket left in the first half of backward
    # buckets start in index order (their sizes, in order)
    assert [s[0] for s in comm.started] == [b.buffer.size for b in red.buckets]
    # polls test the oldest bucket in flight and stop there: no request was tested more than its
    # two polls plus one (finish's), and every bucket's completion was seen
    assert all(r.tests <= 3 for r in comm.requests) and all(b.done for b in red.buckets)


def test_reducer_share_scales_gradients_and_no_overlap_waits():
    model = nn.digits_resnet(16, seed=0)
    ref = nn.digits_resnet(16, seed=0)
    comm = FakeComm()
    red = GradientReducer(model, comm, overlap=False)
    red.start_step(0.25, 1)
    model.backward(_digits_step(model))
    assert comm.started == []                 # overlap off: nothing before finish
    red.finish()
    ref.backward(_digits_step(ref))
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, 0.25 * q.grad, rtol=1e-6, atol=1e-9)
    red.close()
    comm.started.clear()
    model.zero_grad()
    model.backward(_digits_step(model))        # hooks removed: nothing starts
    assert comm.started == []


def test_reducer_bf16_rounds_gradients():
    model = nn.digits_rnn(seed=0)
    comm = FakeComm()
    red = GradientReducer(model, comm, compression="bf16")
    data = train.load_digits_split(0)
    logits = model(train.row_sequence(data.x_train[:16]))
    _, dl = nn.softmax_cross_entropy(logits, data.y_train[:16])
    red.start_step(1.0, 1)
    model.backward(dl)
    red.finish()
    assert all(s[2] for s in comm.started)
    for p in model.parameters():   # the fake sum is the identity: the gradient is its bf16 rounding
        np.testing.assert_array_equal(p.grad, bf16_bits_to_fp32(fp32_to_bf16_bits(p.grad)))


def test_reducer_refuses_bad_compression():
    with pytest.raises(ValueError, match="compression"):
        GradientReducer(nn.digits_rnn(seed=0), FakeComm(), compression="int8")


# ------------------------------------------------------------------------------ backward hooks
def test_backward_hook_runs_once_per_backward_and_removes():
    layer = nn.Linear(4, 3, seed=0)
    seen = []
    handle = layer.register_backward_hook(lambda m: seen.append(m))
    x = np.ones((2, 4), np.float32)
    layer(x)
    layer.backward(np.ones((2, 3), np.float32))
    assert seen == [layer]
    handle.remove()
    layer.backward(np.ones((2, 3), np.float32))
    assert seen == [layer]
    with pytest.raises(TypeError, match="hook must be callable"):
        layer.register_backward_hook(3)


def test_backward_hook_of_an_outer_module_runs_after_its_children():
    model = nn.digits_resnet(16, seed=0)
    order = []
    block = model.modules[3]
    block.register_backward_hook(lambda m: order.append("block"))
    block.conv1.register_backward_hook(lambda m: order.append("conv1"))
    model.backward(_digits_step(model))
    assert order == ["conv1", "block"]


# ------------------------------------------------------------------------------------ helpers
def test_shard_disjoint_union_even():
    idx = np.arange(10, 33)
    for ranks in (1, 2, 3, 7, 30):
        parts = [shard(idx, ranks, r) for r in range(ranks)]
        assert np.array_equal(np.concatenate(parts), idx)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_union_seconds():
    assert distributed.union_seconds([]) == 0.0
    assert distributed.union_seconds([(0, 1), (0.5, 2), (3, 4), (3.5, 3.6)]) == pytest.approx(3.0)


def test_chrome_trace_rows():
    tl = distributed.Timeline(origin=10.0)
    tl.add("forward", 1, 10.0, 10.5)
    tl.add("allreduce", 1, 10.2, 10.4, bucket=2)
    trace = distributed.chrome_trace([tl.as_array(), tl.as_array()], buckets=[1, 2, 300])
    json.dumps(trace)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    fwd = next(e for e in spans if e["name"] == "forward")
    assert fwd["tid"] == 0 and fwd["ts"] == 0.0 and fwd["dur"] == pytest.approx(5e5)
    ar = next(e for e in spans if e["name"].startswith("allreduce"))
    assert ar["tid"] == 1 and ar["args"] == {"step": 1, "bucket": 2, "bytes": 300}


def test_oversubscription_warning_and_default_threads():
    assert distributed.oversubscription_warning(1, 2, 2) is None
    w = distributed.oversubscription_warning(2, 2, 2)
    assert "4 threads for 2 cores" in w and "--threads 1" in w
    assert "communication thread" in distributed.oversubscription_warning(1, 2, 2, comm_core=True)
    assert distributed.threads_per_rank(2, 16) == 8
    assert distributed.threads_per_rank(2, 16, comm_core=True) == 7
    assert distributed.threads_per_rank(4, 2) == 1


def test_launcher_environment(monkeypatch):
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "PMI_RANK",
                "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launcher_size() is None and distributed.launcher_rank() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert distributed.launcher_size() == 4 and distributed.launcher_rank() == 3


# ---------------------------------------------------------------------------------------- CLI
def _cli(*args, pre=""):
    import os
    import subprocess
    import sys

    code = f"import sys; {pre}from dlcpu.cli.main import main; main({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd="/",
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_dist_without_mpi4py_says_how_to_install():
    res = _cli("train", "digits", "--dist", "--epochs", "1", pre="sys.modules['mpi4py'] = None; ")
    assert res.returncode == 2, res.stderr
    assert 'pip install "dlcpu[mpi]"' in res.stderr and "mpiexec -n" in res.stderr
    assert "Traceback" not in res.stderr


def test_single_process_training_works_without_mpi4py():
    res = _cli("train", "digits", "--epochs", "1", "--threads", "1", pre="sys.modules['mpi4py'] = None; ")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("test accuracy")


@pytest.mark.parametrize("args, needles", [
    (["--compress", "bf16"], ["--compress", "add --dist"]),
    (["--timeline", "t.json"], ["--timeline", "add --dist"]),
    (["--no-overlap"], ["--no-overlap", "add --dist"]),
    (["--dist", "--fusion-threshold", "lots"], ["--fusion-threshold", "size in bytes"]),
    (["--dist", "--compress", "fp8"], ["--compress", "none or bf16"]),
    (["--dist", "--timeline", "/no/such/dir/t.json"], ["--timeline", "does not exist"]),
    (["--dist", "--comm-timeout", "0"], ["--comm-timeout"]),
    (["--dist", "--seeds", "1,2"], ["--dist", "one configuration"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--dist", "--out", "same.npz", "--timeline", "same.npz"], ["--timeline", "same file as --out"]),
])
def test_train_dist_bad_options(args, needles):
    res = _cli("train", "digits", "--epochs", "1", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and all(n in line[0] for n in needles), res.stderr


def test_scale_ranks_refuses_to_run_under_a_launcher():
    res = _cli("scale", "ranks", "train:digits", pre="import os; os.environ['PMI_SIZE'] = '2'; ")
    assert res.returncode == 2 and "run it without mpiexec" in res.stderr, res.stderr


@pytest.mark.parametrize("args, needles", [
    (["train:resnet"], ["WORKLOAD", "train:digits or train:digits-rnn"]),
    (["train:digits", "--ranks", "2,4"], ["--ranks", "include 1"]),
    (["train:digits", "--ranks", "1,1"], ["--ranks", "distinct"]),
    (["train:digits", "--ranks", "1,x"], ["--ranks", "comma list", "'1,x'"]),
    (["train:digits", "--ranks", "1,3", "--mode", "strong", "--batch", "64"], ["--batch", "does not divide by 3"]),
    (["train:digits", "--mode", "medium"], ["--mode", "strong, weak"]),
    (["train:digits", "--compress", "int8"], ["--compress"]),
])
def test_scale_ranks_bad_options(args, needles):
    res = _cli("scale", "ranks", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and all(n in line[0] for n in needles), res.stderr


def test_summarize_timeline_medians_and_bad_files(tmp_path):
    tl = distributed.Timeline(origin=0.0)
    for step in range(1, 5):
        t = step * 1.0
        tl.add("forward", step, t, t + 0.1)
        tl.add("backward", step, t + 0.1, t + 0.3)
        tl.add("allreduce", step, t + 0.2, t + 0.35, bucket=0)
        tl.add("allreduce", step, t + 0.25, t + 0.32, bucket=1)
        tl.add("wait", step, t + 0.3, t + 0.35)
        tl.add("optimizer", step, t + 0.35, t + 0.4)
    path = tmp_path / "tl.json"
    path.write_text(json.dumps(distributed.chrome_trace([tl.as_array()])))
    (row,) = distributed.summarize_timeline(str(path))
    assert row["rank"] == 0 and row["steps"] == 3
    assert row["step_seconds"] == pytest.approx(0.4) and row["compute_seconds"] == pytest.approx(0.35)
    assert row["comm_seconds"] == pytest.approx(0.15) and row["exposed_seconds"] == pytest.approx(0.05)
    assert row["exposed_of_comm"] == pytest.approx(1 / 3)
    bad_events = [({"ph": "X", "args": {"step": 1}}, "has no name"),
                  ({"ph": "X", "name": "forward", "args": {"step": 1}}, "no finite 'ts'"),
                  ({"ph": "X", "name": "forward", "ts": "abc", "dur": 1, "args": {"step": 1}}, "no finite 'ts'"),
                  ({"ph": "X", "name": "forward", "ts": 1, "dur": -1, "args": {"step": 1}}, "'dur' >= 0"),
                  ({"ph": "X", "name": "forward", "ts": 1, "dur": 1, "pid": [0], "args": {"step": 1}}, "not an integer"),
                  ({"ph": "X", "name": 5, "ts": 1, "dur": 1, "args": {"step": 1}}, "has no name")]
    cases = [("{}", "no traceEvents"), ('{"traceEvents": []}', "no step spans"), ("nope", "cannot read")]
    cases += [(json.dumps({"traceEvents": [e]}), f"event 0 .* {words}") for e, words in bad_events]
    for text, words in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=words):
            distributed.summarize_timeline(str(path))
    for trace in (0, 1, True, []):
        with pytest.raises(TypeError, match="trace must be a dict or a file path"):
            distributed.summarize_timeline(trace)
    with pytest.raises(ValueError, match="skip must be"):
        distributed.summarize_timeline({}, skip=-1)


def test_reducer_refuses_reused_layers_and_shared_parameters():
    lin = nn.Linear(4, 4, seed=0)
    with pytest.raises(ValueError, match="occurs twice in the model"):
        GradientReducer(nn.Sequential(lin, lin), FakeComm())
    other = nn.Linear(4, 4, seed=1)
    other.weight = lin.weight
    with pytest.raises(ValueError, match="is shared with"):
        GradientReducer(nn.Sequential(lin, other), FakeComm())


def test_backward_hooks_run_once_after_a_super_backward_chain():
    calls = []

    class Scaled(nn.Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            calls.append(("after super", float(self.weight.grad.sum())))
            self.weight.grad *= 2.0
            return dx

    layer = Scaled(3, 2, seed=0)
    layer.register_backward_hook(lambda m: calls.append(("hook", float(m.weight.grad.sum()))))
    layer(np.ones((1, 3), np.float32))
    layer.backward(np.ones((1, 2), np.float32))
    assert [c[0] for c in calls] == ["after super", "hook"]          # once, after the subclass finished
    assert calls[1][1] == pytest.approx(2 * calls[0][1])
