"""Data-parallel training under mpiexec with 2 ranks (mpi4py + the mpich wheel, the `mpi` extra):
replicas stay bitwise identical, 2 ranks train what one process trains on the same global batch,
the CLI's --dist, --timeline and checkpoints, `dlcpu scale ranks`, and the faults: a bad batch, a
killed rank and a stalled rank end the job in bounded time with the checkpoint intact.

Skipped where MPI is not installed, unless DLCPU_REQUIRE_MPI=1 (CI sets it: there a missing MPI
is a failure, not a skip)."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlcpu import nn, train
from dlcpu.data import shard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# the worker's own data and initial weights, for the single-process twins
from mpi_worker import initial_model, subset

BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([BIN, os.environ.get("PATH", "")]))
DLCPU = shutil.which("dlcpu", path=os.pathsep.join([BIN, os.environ.get("PATH", "")]))
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
REQUIRED = os.environ.get("DLCPU_REQUIRE_MPI", "") == "1"

pytestmark = pytest.mark.skipif(not HAVE_MPI and not REQUIRED,
                                reason='MPI is not installed (pip install "dlcpu[mpi]")')

#: one thread per rank: 2 ranks on a 2-core CI machine are not oversubscribed
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def test_mpi_is_installed_where_required():
    assert HAVE_MPI, 'DLCPU_REQUIRE_MPI=1 but mpiexec or mpi4py is missing: pip install "dlcpu[mpi]"'


def mpirun(n, *args, timeout=300, cwd=None):
    return subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=cwd, check=False)


def run_worker(tmp_path, model, n, batch, epochs, compression="none", fusion=32768, ranks=2):
    res = mpirun(ranks, sys.executable, os.path.join(HERE, "mpi_worker.py"), model, str(n), str(batch), str(epochs),
                 compression, str(fusion), str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(ranks)]


def weights(saved):
    return [saved[f"p{i}"] for i in range(sum(k.startswith("p") for k in saved))]


def accuracy_of(model):
    d = train.load_digits_split(0)
    return train.evaluate(model, d.x_test, d.y_test)


def assert_replicas_identical(per_rank):
    for other in per_rank[1:]:
        for a, b in zip(weights(per_rank[0]), weights(other)):
            np.testing.assert_array_equal(a, b)     # bitwise, not close


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("n, batch", [(301, 64),     # last batch 45: split 23 / 22
                                      (257, 64)])    # last batch 1: rank 1 has nothing
def test_two_ranks_equal_one_process_rnn(tmp_path, n, batch):
    """The digits LSTM has no batch statistics: 2 ranks on slices of each global batch must train
    the single process's model, to fp32 rounding (from rank 0's initial weights, broadcast)."""
    per_rank = run_worker(tmp_path, "rnn", n, batch, 2)
    assert_replicas_identical(per_rank)
    single = train.train_digits(epochs=2, batch=batch, data=subset(n), model="rnn", seed=0,
                                init_from=initial_model("rnn"))
    for a, b in zip(weights(per_rank[0]), [p.data for p in single.model.parameters()]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert float(per_rank[0]["loss"]) == pytest.approx(single.epochs[-1].loss, rel=1e-4)


def shard_twin_cnn(n, batch, epochs, ranks):
    """One process doing what R ranks do with the CNN: BatchNorm normalizes each rank's slice on
    its own (Horovod's default), so the twin runs the slices one after another and weighs each
    slice's gradient by its share of the global batch, before one SGD step."""
    data = subset(n)
    model = initial_model("cnn")
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            for r in range(ranks):
                mine = idx[shard(np.arange(len(idx)), ranks, r)]
                if len(mine):
                    logits = model(train.image_batch(data.x_train[mine]))
                    _, dl = nn.softmax_cross_entropy(logits, data.y_train[mine])
                    model.backward(dl * np.float32(len(mine) / len(idx)))
            opt.step()
            opt.zero_grad()
    return model


def test_two_ranks_equal_shard_twin_cnn(tmp_path):
    per_rank = run_worker(tmp_path, "cnn", 301, 64, 2)
    assert_replicas_identical(per_rank)
    twin = shard_twin_cnn(301, 64, 2, 2)
    for a, b in zip(weights(per_rank[0]), [p.data for p in twin.parameters()]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_one_rank_equals_one_process_cnn(tmp_path):
    """With one rank the data-parallel machinery (views, hooks, allreduce) changes nothing."""
    per_rank = run_worker(tmp_path, "cnn", 301, 64, 1, ranks=1)
    single = train.train_digits(epochs=1, batch=64, data=subset(301), model="cnn", seed=0,
                                init_from=initial_model("cnn"))
    for a, b in zip(weights(per_rank[0]), [p.data for p in single.model.parameters()]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fusion", [0, 10**9])
def test_fusion_threshold_does_not_change_the_result(tmp_path, fusion):
    ref = run_worker(tmp_path, "rnn", 200, 64, 1)
    (tmp_path / "other").mkdir()
    got = run_worker(tmp_path / "other", "rnn", 200, 64, 1, fusion=fusion)
    for a, b in zip(weights(ref[0]), weights(got[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compression_keeps_replicas_identical_and_close(tmp_path):
    per_rank = run_worker(tmp_path, "rnn", 301, 64, 2, compression="bf16")
    assert_replicas_identical(per_rank)
    (tmp_path / "fp32").mkdir()
    ref = run_worker(tmp_path / "fp32", "rnn", 301, 64, 2)
    diffs = [np.abs(a - b).max() / (np.abs(b).max() + 1e-12) for a, b in zip(weights(per_rank[0]), weights(ref[0]))]
    assert max(diffs) < 0.05 and max(diffs) > 0     # bf16 gradients: close, and not silently fp32


# ---------------------------------------------------------------------------------------- CLI
def test_cli_dist_json_timeline_checkpoint(tmp_path):
    res = mpirun(2, DLCPU, "train", "digits", "--dist", "--epochs", "2", "--json", "--check-replicas",
                 "--timeline", str(tmp_path / "tl.json"), "--out", str(tmp_path / "m.npz"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)        # rank 0 alone prints: one JSON document
    assert summary["ranks"] == 2 and summary["test_accuracy"] > 0.5
    comm = summary["communication"]
    assert comm["ranks"] == 2 and comm["buckets"] >= 2 and 0 <= comm["exposed_seconds"] <= comm["step_seconds"]
    with open(tmp_path / "tl.json") as f:
        trace = json.load(f)["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    names = {e["name"].split(" bucket")[0] for e in spans}
    assert names == {"forward", "backward", "optimizer", "wait", "allreduce"}
    steps = {e["args"]["step"] for e in spans}
    assert steps == set(range(1, 2 * 23 + 1))      # 1437 images, batch 64: 23 steps per epoch
    model = nn.load(str(tmp_path / "m.npz"))
    assert accuracy_of(model) == summary["test_accuracy"]   # the checkpoint holds the averaged statistics
    res = subprocess.run([DLCPU, "scale", "timeline", str(tmp_path / "tl.json"), "--json"], capture_output=True,
                         text=True, env=ENV, check=False)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["ranks"]
    assert [r["rank"] for r in rows] == [0, 1] and all(r["steps"] == 45 for r in rows)
    assert all(0 <= r["exposed_seconds"] <= r["step_seconds"] for r in rows)


def test_cli_dist_rnn_bf16(tmp_path):
    res = mpirun(2, DLCPU, "train", "digits-rnn", "--dist", "--epochs", "2", "--compress", "bf16",
                 "--check-replicas", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 rank(s) x 1 thread(s)" in res.stdout and "compression bf16" in res.stdout


def test_cli_batch_must_divide_by_ranks(tmp_path):
    res = mpirun(2, DLCPU, "train", "digits", "--dist", "--batch", "63", "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "63 does not divide by the 2 ranks" in lines[0], res.stderr


@pytest.mark.parametrize("option", ["--out", "--timeline"])
def test_cli_unwritable_rank0_path_stops_every_rank(tmp_path, option):
    t0 = time.monotonic()
    res = mpirun(2, DLCPU, "train", "digits", "--dist", "--epochs", "1", option, str(tmp_path / "no" / "f"), cwd=tmp_path,
                 timeout=120)
    assert res.returncode == 2 and time.monotonic() - t0 < 60
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and option in lines[0] and "does not exist" in lines[0], res.stderr


def test_cli_warns_when_ranks_oversubscribe(tmp_path):
    cores = os.cpu_count()
    res = mpirun(2, DLCPU, "train", "digits", "--dist", "--epochs", "1", "--threads", str(cores), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and f"{2 * cores} threads for {cores} cores" in res.stderr


def test_cli_warns_under_mpiexec_without_dist(tmp_path):
    res = mpirun(2, DLCPU, "train", "digits", "--epochs", "1", "--threads", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "without --dist" in res.stderr


def test_scale_ranks_json(tmp_path):
    res = subprocess.run([DLCPU, "scale", "ranks", "train:digits", "--ranks", "1,2", "--steps", "3", "--warmup", "1",
                          "--repeats", "1", "--json"], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [p["ranks"] for p in out["points"]] == [1, 2]
    assert [p["global_batch"] for p in out["points"]] == [64, 128]          # weak: 64 per rank
    one, two = out["points"]
    assert one["communication"] is None and two["communication"]["ranks"] == 2
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2)
    assert out["fit"]["model"] == "gustafson"


def test_scale_ranks_compare_torch(tmp_path):
    pytest.importorskip("torch")
    res = subprocess.run([DLCPU, "scale", "ranks", "train:digits-rnn", "--ranks", "1,2", "--mode", "strong", "--batch",
                          "32", "--steps", "3", "--warmup", "1", "--repeats", "1", "--compare", "torch", "--json"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [p["global_batch"] for p in out["points"]] == [32, 32]          # strong: the global batch stays
    for p in out["points"]:
        assert p["peer"]["images_per_second"] > 0
        assert p["ratio_to_peer"] == pytest.approx(p["images_per_second"] / p["peer"]["images_per_second"])
    assert "DistributedDataParallel" in out["peer"]["name"]


def test_cli_comm_core_and_no_overlap_run(tmp_path):
    for extra, key, value in ((["--comm-core"], "comm_core", True), (["--no-overlap"], "overlap", False),
                              (["--comm-core", "--compress", "bf16"], "compression", "bf16")):
        res = mpirun(2, DLCPU, "train", "digits", "--dist", "--epochs", "1", "--json", "--check-replicas", *extra,
                     cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["communication"][key] == value


def test_ranks_that_disagree_stop_with_a_clear_error(tmp_path):
    """Different seeds on the two ranks (MPMD launch): they would run different epochs."""
    t0 = time.monotonic()
    res = subprocess.run([MPIEXEC, "-n", "1", DLCPU, "train", "digits", "--dist", "--epochs", "1", "--seed", "0", ":",
                          "-n", "1", DLCPU, "train", "digits", "--dist", "--epochs", "1", "--seed", "1"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120, check=False)
    assert res.returncode != 0 and time.monotonic() - t0 < 60
    assert "the ranks disagree on" in res.stderr and "seed" in res.stderr, res.stderr[-2000:]


def test_model_file_missing_on_one_rank_names_that_rank(tmp_path):
    good = train.train_digits(epochs=1, data=subset(200), model="cnn")
    nn.save(good.model, str(tmp_path / "m.npz"))
    t0 = time.monotonic()
    res = subprocess.run([MPIEXEC, "-n", "1", DLCPU, "train", "digits", "--dist", "--epochs", "1", "--from",
                          str(tmp_path / "m.npz"), ":", "-n", "1", DLCPU, "train", "digits", "--dist", "--epochs", "1",
                          "--from", str(tmp_path / "missing.npz")],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120, check=False)
    assert res.returncode != 0 and time.monotonic() - t0 < 60
    assert "missing.npz does not exist (on rank 1)" in res.stderr, res.stderr[-2000:]


# -------------------------------------------------------------------------------------- faults
def rank_pids(launcher_pid):
    """{rank: pid} of the processes under the launcher (their PMI_RANK), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    found, todo = {}, [launcher_pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                with open(f"/proc/{child}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            except OSError:
                continue
            if b"PMI_RANK" in env:
                found[int(env[b"PMI_RANK"])] = child
    return found


def start_long_training(tmp_path, *extra):
    ck = tmp_path / "ck.npz"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", DLCPU, "train", "digits", "--dist", "--epochs", "1000", "--out",
                             str(ck), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not ck.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    time.sleep(0.3)      # well into the next epoch
    pids = rank_pids(proc.pid)
    assert set(pids) == {0, 1}, pids
    return proc, pids, ck


def finish_within(proc, seconds):
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the job did not end within {seconds} s of the fault")
    return proc.returncode, out, err, time.monotonic() - t0


def test_killed_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    proc, pids, ck = start_long_training(tmp_path, "--comm-timeout", "10")
    os.kill(pids[1], signal.SIGKILL)
    rc, _, _, _ = finish_within(proc, 60)      # bounded: hydra ends the job when a rank dies
    assert rc != 0
    model = nn.load(str(ck))          # the last epoch's checkpoint, whole
    assert accuracy_of(model) > 0.5


def test_stalled_rank_times_out_with_a_clear_error(tmp_path):
    proc, pids, ck = start_long_training(tmp_path, "--comm-timeout", "3")
    os.kill(pids[1], signal.SIGSTOP)
    try:
        rc, _, err, took = finish_within(proc, 60)
    finally:
        try:
            os.kill(pids[1], signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert rc != 0 and took < 60, (rc, took, err[-2000:])     # the 3 s deadline, not the launcher, ended it
    assert "rank 0 of 2" in err and "did not complete within 3 s" in err, err[-2000:]
    nn.load(str(ck))
