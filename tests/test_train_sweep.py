"""Sweeps of `dlcpu train digits[-rnn]`: dlcpu.train.sweep_configs (the product), sweep_digits
(one train_digits run per configuration and seed), summarize_runs (mean ± sample std per
configuration) and the CLI's comma lists, --seeds, table, JSON and Ctrl-C."""
import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cli import DLCPU, WITH_DEFAULT_SIGINT, assert_one_line_error, run

from dlcpu import train
from dlcpu.train import SweepConfig, SweepRun

#: the keys of a single run's --json, as they were before sweeps existed
SINGLE_RUN_KEYS = {"dataset", "model", "loss", "loss_gradient", "cell", "activation_impl", "train_images",
                   "test_images", "threads", "epochs", "batch", "lr", "seed", "test_accuracy", "seconds", "saved_to",
                   "from", "prune", "prune_scope", "history", "sparsity", "ranks", "communication", "precision"}


def assert_bad_option(res, *needles):
    """Exit 2 with one 'error:' line on stderr naming every needle, nothing on stdout."""
    assert_one_line_error(res, 2, *needles)


def fake_run(acc, seed=0, loss="softmax", cell=None, impl=None, seconds=1.0):
    return SweepRun(SweepConfig(loss, cell, impl), seed, acc, 0.5, seconds)


# ------------------------------------------------------------------------ the product
def test_sweep_configs_is_the_product_with_the_loss_fastest():
    configs = train.sweep_configs([" Taylor:4", "softmax"], ["lstm", "gru"], ["exact", "ktanh"])
    assert [(c.cell, c.activation_impl, c.loss) for c in configs] == [
        ("lstm", "exact", "taylor:4"), ("lstm", "exact", "softmax"), ("lstm", "ktanh", "taylor:4"),
        ("lstm", "ktanh", "softmax"), ("gru", "exact", "taylor:4"), ("gru", "exact", "softmax"),
        ("gru", "ktanh", "taylor:4"), ("gru", "ktanh", "softmax")]
    assert train.sweep_configs() == [SweepConfig("softmax", None, None)]


@pytest.mark.parametrize(("args", "message"), [
    ((["taylor:4", "TAYLOR:4"],), "loss kind 'taylor:4' is listed twice"),
    ((["taylor:3"],), "train: loss kind 'taylor:3': the order must be even"),
    ((["softmax"], ["lstm", "rnn"]), "cell must be 'lstm' or 'gru', got 'rnn'"),
    ((["softmax"], [None], ["fast", "fast"]), "activation_impl 'fast' is listed twice"),
    (([],), "needs at least one loss kind"),
])
def test_sweep_configs_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        train.sweep_configs(*args)


def test_sweep_digits_runs_configs_times_seeds_in_order(monkeypatch):
    calls, splits, starts = [], [], []

    def fake_train(**kw):
        calls.append((kw["loss"], kw["cell"], kw["activation_impl"], kw["seed"], kw["data"], kw["epochs"]))
        res = train.TrainResult(loss=kw["loss"], cell=kw["cell"] or "lstm", activation_impl=kw["activation_impl"] or "exact")
        res.epochs.append(train.EpochStats(1, 0.25 + kw["seed"], 0.9, 0.5 + kw["seed"] / 10, 1.0, 1.0))
        res.total_seconds = 2.0
        return res

    monkeypatch.setattr(train, "train_digits", fake_train)
    monkeypatch.setattr(train, "load_digits_split", lambda seed: splits.append(seed) or f"split{seed}")
    configs = train.sweep_configs(["softmax", "taylor:2"], [None, "gru"])
    runs = list(train.sweep_digits(configs, [3, 1], model="rnn", epochs=7,
                                   on_start=lambda i, n, c, s: starts.append((i, n, c.loss, s))))
    assert [(c[0], c[1], c[3]) for c in calls] == [
        ("softmax", None, 3), ("softmax", None, 1), ("taylor:2", None, 3), ("taylor:2", None, 1),
        ("softmax", "gru", 3), ("softmax", "gru", 1), ("taylor:2", "gru", 3), ("taylor:2", "gru", 1)]
    assert all(c[4] == f"split{c[3]}" and c[5] == 7 for c in calls)
    assert splits == [3, 1]  # one split per seed, loaded once
    assert [s[0] for s in starts] == list(range(8)) and {s[1] for s in starts} == {8}
    # the runs carry the resolved configuration (None -> the fresh model's 'lstm'/'exact')
    assert runs[0].config == SweepConfig("softmax", "lstm", "exact") and runs[-1].config.cell == "gru"
    assert (runs[1].seed, runs[1].test_accuracy, runs[1].final_loss, runs[1].seconds) == (1, 0.6, 1.25, 2.0)
    assert runs[1].as_dict() == {"loss": "softmax", "cell": "lstm", "activation_impl": "exact", "seed": 1,
                                 "test_accuracy": 0.6, "final_loss": 1.25, "seconds": 2.0}


@pytest.mark.parametrize(("configs", "seeds", "kwargs", "error", "message"), [
    ([SweepConfig()], [0, 0], {}, ValueError, "seed 0 is listed twice"),
    ([SweepConfig()], [], {}, ValueError, "non-empty list of integers"),
    ([SweepConfig()], [-1], {}, ValueError, "integers >= 0"),
    ([SweepConfig("taylor:7")], [0], {}, ValueError, "the order must be even"),
    ([SweepConfig("softmax", "gru")], [0], {}, ValueError, "cell='gru' applies to the digits RNN"),
    ([SweepConfig("taylor:2"), SweepConfig(" TAYLOR:2")], [0], {}, ValueError, "listed twice"),
    (["softmax"], [0], {}, TypeError, "SweepConfig"),
    ([SweepConfig()], [0], {"seed": 1}, TypeError, "takes seed from configs and seeds"),
])
def test_sweep_digits_checks_everything_before_the_first_run(monkeypatch, configs, seeds, kwargs, error, message):
    monkeypatch.setattr(train, "train_digits", lambda **kw: pytest.fail("trained before the checks"))
    with pytest.raises(error, match=message):
        next(train.sweep_digits(configs, seeds, **kwargs))


def test_sweep_fine_tunes_a_fresh_copy_each_run(tmp_path):
    path = str(tmp_path / "m.npz")
    data = train.load_digits_split(0)
    train.train_digits(epochs=1, data=data, out=path)
    before = Path(path).read_bytes()
    # two configurations, one seed, a learning rate too small to move a float32 weight: only the
    # BatchNorm statistics change, and both runs get the same ones if each starts from the file
    runs = list(train.sweep_digits(train.sweep_configs(["softmax", "sm-softmax:0"]), [0], data=data, epochs=1,
                                   lr=1e-12, init_from=path))
    assert runs[0].result.model is not runs[1].result.model
    assert runs[0].test_accuracy == runs[1].test_accuracy
    assert Path(path).read_bytes() == before  # no run writes the file it fine-tunes


# ------------------------------------------------------------------------ the aggregation
def test_summarize_runs_mean_sample_std_min_max():
    runs = [fake_run(0.90, 0, "softmax", seconds=1.0), fake_run(0.80, 0, "taylor:2", seconds=3.0),
            fake_run(0.94, 1, "softmax", seconds=2.0), fake_run(0.98, 2, "softmax", seconds=3.0)]
    soft, taylor = train.summarize_runs(runs)
    assert soft.config.loss == "softmax" and taylor.config.loss == "taylor:2"  # first-seen order
    assert (soft.runs, soft.seeds, soft.min, soft.max) == (3, [0, 1, 2], 0.90, 0.98)
    assert soft.mean == pytest.approx(0.94) and soft.mean_seconds == pytest.approx(2.0)
    assert soft.std == pytest.approx(np.std([0.90, 0.94, 0.98], ddof=1)) == pytest.approx(0.04)
    # one run: the sample std is undefined -> NaN here, None in JSON
    assert taylor.runs == 1 and math.isnan(taylor.std) and taylor.mean == taylor.min == taylor.max == 0.80
    assert taylor.as_dict()["std"] is None and soft.as_dict()["std"] == pytest.approx(0.04)
    assert set(soft.as_dict()) == {"loss", "cell", "activation_impl", "runs", "seeds", "mean", "std", "min", "max",
                                   "mean_seconds"}
    assert train.summarize_runs([]) == []


def test_summarize_runs_groups_by_the_whole_config():
    runs = [fake_run(0.5, 0, cell="lstm", impl="exact"), fake_run(0.7, 0, cell="gru", impl="exact"),
            fake_run(0.6, 0, cell="lstm", impl="fast"), fake_run(0.9, 1, cell="lstm", impl="exact")]
    rows = train.summarize_runs(runs)
    assert [(r.config.cell, r.config.activation_impl, r.runs) for r in rows] == [
        ("lstm", "exact", 2), ("gru", "exact", 1), ("lstm", "fast", 1)]
    assert rows[0].mean == pytest.approx(0.7)


# ------------------------------------------------------------------------ the CLI
def test_cli_sweep_json():
    res = run("train", "digits", "--epochs", "1", "--threads", "1", "--loss", "softmax,taylor:2", "--seeds", "0,1",
              "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert set(data) == {"settings", "runs", "summary"}
    assert [(r["loss"], r["seed"]) for r in data["runs"]] == [("softmax", 0), ("softmax", 1), ("taylor:2", 0),
                                                              ("taylor:2", 1)]
    assert set(data["runs"][0]) == {"loss", "cell", "activation_impl", "seed", "test_accuracy", "final_loss", "seconds"}
    assert [s["loss"] for s in data["summary"]] == ["softmax", "taylor:2"]
    for row in data["summary"]:
        accs = [r["test_accuracy"] for r in data["runs"] if r["loss"] == row["loss"]]
        assert row["runs"] == 2 and row["seeds"] == [0, 1]
        assert row["mean"] == pytest.approx(np.mean(accs)) and row["std"] == pytest.approx(np.std(accs, ddof=1))
        assert (row["min"], row["max"]) == (min(accs), max(accs))
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["epochs"] == 1
    # each finished run is a line on stderr (progress and logs stay there with --json)
    assert [line.split(": test acc")[0] for line in res.stderr.splitlines() if line.startswith("run ")] == [
        "run 1/4  loss softmax, seed 0", "run 2/4  loss softmax, seed 1", "run 3/4  loss taylor:2, seed 0",
        "run 4/4  loss taylor:2, seed 1"]


def test_cli_rnn_sweep_table():
    res = run("train", "digits-rnn", "--epochs", "1", "--threads", "1", "--batch", "256", "--cell", "lstm,gru")
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "lstm" in rows[0] and "gru" in rows[1] and "exact" in rows[0]
    assert " ± n/a " in rows[0]  # one seed: no spread
    assert "sample standard deviation (ddof=1)" in res.stdout


@pytest.mark.parametrize(("args", "needles"), [
    (["digits", "--loss", "softmax,taylor:3"], ["'--loss'", "order must be even, got 3"]),
    (["digits", "--loss", "softmax,bogus"], ["'--loss'", "unknown loss kind 'bogus'"]),
    (["digits", "--loss", "taylor:4, TAYLOR:4"], ["'--loss'", "lists 'taylor:4' twice"]),
    (["digits-rnn", "--cell", "lstm,rnn"], ["'--cell'", "must be lstm or gru, got 'rnn'"]),
    (["digits-rnn", "--activation-impl", "exact,slow"], ["'--activation-impl'", "must be exact, fast or ktanh, got 'slow'"]),
    (["digits-rnn", "--cell", "gru,gru"], ["'--cell'", "lists 'gru' twice"]),
    (["digits", "--seeds", "0,x"], ["'--seeds'", "comma list of integers", "'0,x'"]),
    (["digits", "--seeds", "0,1,0"], ["'--seeds'", "lists 0 twice"]),
    (["digits", "--seeds", "0,4294967296"], ["'--seeds'", "between 0 and 4294967295"]),
    (["digits", "--seeds", "0,1", "--seed", "2"], ["'--seeds'", "cannot be combined with --seed"]),
    (["digits", "--loss", "softmax,taylor:2", "--out", "/tmp/dlcpu-sweep-never-written.npz"],
     ["'--out'", "saves one model, but this sweep trains 2"]),
    (["digits", "--seeds", "0,1", "--out", "/tmp/dlcpu-sweep-never-written.npz"], ["'--out'", "trains 2"]),
])
def test_cli_bad_sweep_options(args, needles):
    assert_bad_option(run("train", *args, "--epochs", "1"), *needles)
    assert not os.path.exists("/tmp/dlcpu-sweep-never-written.npz")


def test_cli_sweep_failure_is_one_line_and_exit_1():
    res = run("train", "digits", "--epochs", "2", "--threads", "1", "--lr", "1e6", "--seeds", "0,1", "--json")
    assert res.returncode == 1 and res.stdout == "", res.stderr  # the first run diverged: nothing to report
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged"), res.stderr


def test_cli_single_run_json_is_unchanged():
    a = run("train", "digits", "--epochs", "1", "--threads", "1", "--seed", "3", "--json")
    b = run("train", "digits", "--epochs", "1", "--threads", "1", "--seeds", "3", "--loss", "softmax,", "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert set(da) == set(db) == SINGLE_RUN_KEYS
    assert da["seed"] == db["seed"] == 3 and da["test_accuracy"] == db["test_accuracy"]
    assert da["history"][0]["loss"] == db["history"][0]["loss"]


def test_cli_single_run_text_is_unchanged():
    res = run("train", "digits", "--epochs", "1", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("test accuracy ") and "after 1 epochs of training in" in res.stdout
    assert res.stdout.count("\n") == 1 and res.stderr.startswith("epoch   1  loss")


def test_cli_ctrl_c_prints_the_finished_runs_and_exits_130():
    proc = subprocess.Popen([*WITH_DEFAULT_SIGINT, DLCPU, "train", "digits", "--epochs", "2",
                             "--threads", "1", "--seeds", ",".join(map(str, range(50)))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            env={**os.environ, "COLUMNS": "200"})
    first = proc.stderr.readline()
    assert first.startswith("run 1/50  loss softmax, seed 0: test acc"), first
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert [line for line in rest.splitlines() if line.strip()][-1] == "error: interrupted" and "Traceback" not in rest
    # (communicate() may hand back the line readline() already read: count distinct lines)
    finished = len({line for line in (first + rest).splitlines() if line.startswith("run ")})
    assert f"over seeds 0-49 ({finished} run{'s' if finished > 1 else ''}, 2 epochs," in " ".join(stdout.split())
    assert f"interrupted after {finished} of 50 runs" in " ".join(stdout.split())
    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 1 and f"│ {finished:>4} │" in rows[0]
