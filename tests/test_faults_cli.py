"""`dlcpu faults inject/campaign/report/compare` and `dlcpu bench faults`, end to end through the
installed command: single faults on the digits CNN and LSTM, a small campaign and its reports,
interrupted campaigns (SIGINT, SIGKILL, a line cut by hand) resumed to exactly the records of an
uninterrupted run, bad input refused with one line and nothing lost, the PyTorchFI peer rows and
the compression study with its resumable --out-dir.

Every subprocess runs with cwd="/" (test_cli.run) so that it imports the installed package."""
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest
from test_cli import DLCPU, WITH_DEFAULT_SIGINT, assert_one_line_error, run  # the CLI runner and the one-line error rule

OUTCOMES = ("masked", "sdc1", "sdc5", "due")


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A digits CNN and a digits LSTM, trained once for 2 epochs (a few seconds)."""
    d = tmp_path_factory.mktemp("fault_models")
    paths = {}
    for kind, name in (("digits", "cnn.npz"), ("digits-rnn", "rnn.npz")):
        res = run("train", kind, "--epochs", "2", "--threads", "1", "--out", str(d / name))
        assert res.returncode == 0, res.stderr
        paths[kind] = str(d / name)
    return paths


@pytest.fixture(scope="session")
def cnn(models):
    return models["digits"]


@pytest.fixture(scope="session")
def rnn(models):
    return models["digits-rnn"]


C300 = ("--n", "300", "--seed", "1", "--threads", "1")  # the small campaign's arguments


@pytest.fixture(scope="session")
def campaign300(cnn, tmp_path_factory):
    """A 300-injection activation campaign over every layer: (results path, --json summary)."""
    path = str(tmp_path_factory.mktemp("campaign300") / "c300.jsonl")
    res = run("faults", "campaign", cnn, *C300, "--out", path, "--json")
    assert res.returncode == 0, res.stderr
    return path, json.loads(res.stdout)


def read_jsonl(path):
    """(header, injection records) of a results file, every line parsed."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[0], lines[1:]


def file_state(path):
    with open(path, "rb") as f:
        return f.read(), os.stat(path).st_mtime_ns


def bits_to_float(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def check_flip(old_hex, new_hex, bit, old_value=None):
    """new = old with exactly `bit` flipped; old_value is the float32 the old bits hold."""
    old, new = int(old_hex, 16), int(new_hex, 16)
    assert old ^ new == 1 << bit, (old_hex, new_hex, bit)
    if old_value is not None:
        assert bits_to_float(old) == old_value, (old_hex, old_value)


def faults_cmd(*args, **kw):
    return run("faults", *args, **kw)


# -------------------------------------------------------------------------------- 1. inject
def test_inject_list_shows_the_layers(cnn):
    res = faults_cmd("inject", cnn, "--list")
    assert res.returncode == 0, res.stderr
    for text in ("2.0", "Conv2d(16->16, k=3, s=1, p=1)", "(16, 8, 8)", "weight (16, 16, 3, 3)", "3.2",
                 "Linear(32->10)", "weight (10, 32), bias (10,)"):
        assert text in res.stdout, (text, res.stdout)
    res = faults_cmd("inject", cnn, "--list", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["layer"]: r for r in json.loads(res.stdout)}
    assert list(rows)[:4] == ["0", "1", "2", "2.0"] and {"3.2", "4", "5"} <= set(rows)
    assert rows["2.0"]["type"] == "Conv2d" and rows["2.0"]["output"] == [16, 8, 8]
    assert rows["2.0"]["weights"] == {"weight": [16, 16, 3, 3]}
    assert rows["3.0"]["output"] == [32, 4, 4] and rows["4"]["output"] == [32] and rows["4"]["weights"] == {}
    assert rows["5"]["output"] == [10] and rows["5"]["weights"] == {"weight": [10, 32], "bias": [10]}


VALUE_LINE = re.compile(r"^value: (\S+) \((0x[0-9a-f]+)\) -> (\S+) \((0x[0-9a-f]+)\)$", re.MULTILINE)
PREDICTION_LINE = re.compile(r"^prediction: golden (\d) \(label (\d)\), faulty (\d|none \(NaN/Inf in the output\)); "
                             r"outcome (masked|sdc1|sdc5|due), max \|logit change\| \S+$", re.MULTILINE)


@pytest.mark.parametrize("args,where", [
    (("--layer", "2.0", "--index", "1,2,3", "--bit", "30"),
     "fault: bit 30 of the output of layer 2.0 (Conv2d(16->16, k=3, s=1, p=1)) at [1, 2, 3], test image 0"),
    (("--layer", "2.0", "--target", "weights", "--index", "1,2,0,0", "--bit", "30", "--sample", "3"),
     "fault: bit 30 of the weight of layer 2.0 (Conv2d(16->16, k=3, s=1, p=1)) at [1, 2, 0, 0]"),
], ids=["activation", "weight"])
def test_inject_prints_predictions_and_values(cnn, args, where):
    res = faults_cmd("inject", cnn, *args)
    assert res.returncode == 0, res.stderr
    assert where in res.stdout, res.stdout
    value = VALUE_LINE.search(res.stdout)
    assert value, res.stdout
    check_flip(value[2], value[4], 30, float(value[1]))
    if math.isfinite(float(value[3])):
        assert bits_to_float(int(value[4], 16)) == pytest.approx(float(value[3]), rel=1e-6)
    prediction = PREDICTION_LINE.search(res.stdout)
    assert prediction, res.stdout
    golden, faulty, outcome = prediction[1], prediction[3], prediction[4]
    assert (faulty == golden) == (outcome == "masked") and faulty.startswith("none") == (outcome == "due")


JSON_KEYS = {"model", "target", "layer", "layer_type", "param", "index", "bit", "sample", "fault_model", "label",
            "golden_prediction", "faulty_prediction", "old_bits", "new_bits", "old_value", "new_value", "outcome",
            "max_abs_dev"}
INJECTIONS = {  # name: inject arguments after MODEL
    "act_high": ("--layer", "3.2", "--index", "31,3,3", "--bit", "30", "--sample", "7"),
    "act_low": ("--layer", "3.2", "--index", "31,3,3", "--bit", "0", "--sample", "7"),
    "weight": ("--layer", "5", "--target", "weights", "--index", "9,31", "--bit", "31", "--sample", "7"),
    "bias": ("--layer", "5", "--target", "weights", "--param", "bias", "--index", "4", "--bit", "2"),
    "fixed8": ("--layer", "2.0", "--target", "weights", "--index", "3,4,1,1", "--bit", "7", "--fault-model", "fixed8"),
}


def inject_json(model, name):
    res = faults_cmd("inject", model, *INJECTIONS[name], "--json", "--threads", "1")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert set(r) == JSON_KEYS, set(r) ^ JSON_KEYS
    assert r["model"] == model and r["outcome"] in OUTCOMES
    assert 0 <= r["golden_prediction"] <= 9 and 0 <= r["label"] <= 9 and r["max_abs_dev"] >= 0
    assert (r["faulty_prediction"] is None) == (r["outcome"] == "due")
    assert (r["faulty_prediction"] == r["golden_prediction"]) == (r["outcome"] == "masked")
    return r


def test_inject_json_fields(cnn):
    high, weight = inject_json(cnn, "act_high"), inject_json(cnn, "weight")
    for r in (high, weight):
        assert r["fault_model"] == "ieee"
        check_flip(r["old_bits"], r["new_bits"], r["bit"], r["old_value"])
    assert high["target"] == "activations" and high["param"] is None and high["layer_type"] == "Conv2d"
    assert high["index"] == [31, 3, 3] and high["sample"] == 7 and high["layer"] == "3.2" and high["bit"] == 30
    assert weight["target"] == "weights" and weight["param"] == "weight" and weight["layer_type"] == "Linear"
    assert weight["index"] == [9, 31] and weight["layer"] == "5"
    assert weight["new_value"] == -weight["old_value"]          # bit 31: the sign
    assert weight["golden_prediction"] == high["golden_prediction"]  # both on test image 7


@pytest.mark.slow
def test_inject_json_more_faults(cnn):
    high, low = inject_json(cnn, "act_high"), inject_json(cnn, "act_low")
    # the same element of the same inference: same golden run, same old value; bit 0 is one ulp
    assert low["old_value"] == high["old_value"] and low["golden_prediction"] == high["golden_prediction"]
    check_flip(low["old_bits"], low["new_bits"], 0, low["old_value"])
    assert abs(low["new_value"] - low["old_value"]) <= 1e-6 * abs(low["old_value"]) + 1e-44
    assert low["outcome"] == "masked"
    bias = inject_json(cnn, "bias")
    assert bias["param"] == "bias" and bias["index"] == [4] and bias["sample"] == 0
    check_flip(bias["old_bits"], bias["new_bits"], 2, bias["old_value"])
    fixed = inject_json(cnn, "fixed8")
    assert fixed["fault_model"] == "fixed8" and fixed["param"] == "weight" and fixed["bit"] == 7
    assert fixed["new_value"] != fixed["old_value"]


@pytest.mark.slow
def test_inject_list_recurrent_model(rnn):
    res = faults_cmd("inject", rnn, "--list", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["layer"]: r for r in json.loads(res.stdout)}
    assert list(rows) == ["0", "1", "2"]
    assert rows["0"]["type"] == "LSTM" and rows["0"]["output"] == [8, 64] and rows["2"]["output"] == [10]
    assert rows["0"]["weights"]["weight_hh_l0"] == [256, 64] and rows["0"]["weights"]["weight_ih_l0"] == [256, 8]


def test_inject_recurrent_model(rnn):
    res = faults_cmd("inject", rnn, "--layer", "0", "--index", "7,5", "--bit", "30", "--json")
    assert res.returncode == 0, res.stderr
    act = json.loads(res.stdout)
    assert act["layer_type"] == "LSTM" and act["target"] == "activations" and act["index"] == [7, 5]
    check_flip(act["old_bits"], act["new_bits"], 30, act["old_value"])
    res = faults_cmd("inject", rnn, "--layer", "0", "--target", "weights", "--param", "weight_hh_l0", "--index", "7,5",
                     "--bit", "30")
    assert res.returncode == 0, res.stderr
    assert "fault: bit 30 of the weight_hh_l0 of layer 0 (LSTM(8->64, layers=1)) at [7, 5]" in res.stdout
    value = VALUE_LINE.search(res.stdout)
    assert value and PREDICTION_LINE.search(res.stdout), res.stdout
    check_flip(value[2], value[4], 30, float(value[1]))


# ----------------------------------------------------------------------- 2. campaign + report
def test_campaign_writes_a_header_and_one_line_per_injection(cnn, campaign300):
    path, summary = campaign300
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "" and len(lines) == 302  # header + 300 records, each ending in a newline
    header, records = read_jsonl(path)
    assert header["kind"] == "header" and header["format"] == "dlcpu-faults/2" and header["model"] == cnn
    assert header["target"] == "activations" and header["seed"] == 1 and header["n"] == 300
    assert header["fault_model"] == "ieee" and header["bits"] == "all" and header["inputs"] == 360
    assert header["layers"][:3] == ["0", "1", "2.0"] and "2" not in header["layers"]  # leaves only
    assert re.fullmatch(r"[0-9a-f]{64}", header["model_sha256"])
    assert [r["i"] for r in records] == list(range(300))
    for r in records:
        assert r["kind"] == "injection" and r["target"] == "activations" and r["param"] is None
        assert r["layer"] in header["layers"] and 0 <= r["bit"] <= 31 and 0 <= r["sample"] < 360
        assert r["outcome"] in OUTCOMES and r["dtype"] == "float32"
        check_flip(r["old"], r["new"], r["bit"])
    assert len({r["layer"] for r in records}) > 5 and len({r["bit"] for r in records}) > 20
    assert summary["n"] == summary["done"] == 300 and summary["results"] == path and summary["seed"] == 1
    sdc1 = sum(r["outcome"] in ("sdc1", "sdc5") for r in records)
    assert summary["rates"]["sdc1"]["count"] == sdc1 and summary["rates"]["sdc1"]["rate"] == pytest.approx(sdc1 / 300)
    assert summary["rates"]["due"]["count"] == sum(r["outcome"] == "due" for r in records)


def test_report_by_layer_bit_target(campaign300):
    path, _ = campaign300
    header, records = read_jsonl(path)
    res = faults_cmd("report", path)
    assert res.returncode == 0, res.stderr
    assert "300 of 300 injections, activations" in res.stdout and "SDC-1 %" in res.stdout
    assert re.search(r"│ all\s+│\s+300 │", res.stdout), res.stdout
    for by in ("layer", "bit", "target"):
        res = faults_cmd("report", path, "--by", by)
        assert res.returncode == 0, res.stderr
        assert by in res.stdout and "DUE %" in res.stdout
        res = faults_cmd("report", path, "--by", by, "--json")
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["by"] == by and data["header"] == header
        rows = data["rows"]
        assert sum(r["n"] for r in rows) == 300
        keys = [r["key"] for r in rows]
        expected = {str(r[by]) if by == "layer" else r[by] for r in records}
        assert set(keys) == expected
        for row in rows:
            group = [r for r in records if (str(r[by]) if by == "layer" else r[by]) == row["key"]]
            assert row["n"] == len(group)
            assert row["sdc1"]["count"] == sum(r["outcome"] in ("sdc1", "sdc5") for r in group)
            for rate in ("sdc1", "sdc5", "due", "masked"):
                assert 0 <= row[rate]["low"] <= row[rate]["rate"] <= row[rate]["high"] <= 1
        if by == "layer":
            assert keys == [name for name in header["layers"] if name in expected]  # model order
        elif by == "bit":
            assert keys == sorted(keys, reverse=True)
        else:
            assert keys == ["activations"]
    res = faults_cmd("report", path, "--json")
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 1 and rows[0]["key"] is None and rows[0]["n"] == 300


def test_report_plot_writes_a_png(campaign300, tmp_path):
    png = tmp_path / "heat.png"
    res = faults_cmd("report", campaign300[0], "--plot", str(png))
    assert res.returncode == 0, res.stderr
    assert "heatmap saved to" in res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.slow
def test_weight_campaign(cnn, tmp_path):
    path = str(tmp_path / "w.jsonl")
    res = faults_cmd("campaign", cnn, "--target", "weights", "--layers", "2.0,5", "--n", "40", "--images", "16",
                     "--seed", "4", "--threads", "1", "--out", path, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["n"] == summary["done"] == 40 and summary["target"] == "weights"
    header, records = read_jsonl(path)
    assert header["target"] == "weights" and header["inputs"] == 16 and header["layers"] == ["2.0", "5"]
    assert [r["i"] for r in records] == list(range(40))
    for r in records:
        assert r["target"] == "weights" and r["layer"] in ("2.0", "5") and r["param"] in ("weight", "bias")
        assert r["sample"] is None and r["images"] == 16 and 0 <= r["sdc5_images"] <= r["sdc1_images"] <= 16
        assert (r["outcome"] == "masked") == (r["sdc1_images"] == 0 and r["due_images"] == 0)
        check_flip(r["old"], r["new"], r["bit"])
    res = faults_cmd("report", path, "--by", "layer", "--json")
    assert res.returncode == 0, res.stderr
    assert sum(r["n"] for r in json.loads(res.stdout)["rows"]) == 40


# ------------------------------------------------------------------------- 3. interruption
def test_resume_after_a_line_cut_by_hand(cnn, campaign300, tmp_path):
    full = campaign300[0]
    with open(full, "rb") as f:
        lines = f.read().split(b"\n")
    cut = tmp_path / "cut.jsonl"
    # header + injections 0..148, then half of injection 149's line
    cut.write_bytes(b"\n".join(lines[:150]) + b"\n" + lines[150][: len(lines[150]) // 2])
    res = faults_cmd("report", str(cut), "--json")  # a report tolerates a cut last line, saying so
    assert res.returncode == 0, res.stderr
    assert "line 151 is truncated or corrupt and was ignored" in res.stderr
    assert "holds 149 of the 300 planned injections" in res.stderr
    assert json.loads(res.stdout)["rows"][0]["n"] == 149
    res = faults_cmd("campaign", cnn, *C300, "--out", str(cut), "--resume")
    assert res.returncode == 0, res.stderr
    assert "line 151 is truncated" in res.stderr and "continues at injection 149" in res.stderr
    assert read_jsonl(str(cut)) == read_jsonl(full)
    with open(full, "rb") as f:
        assert cut.read_bytes() == f.read()


@pytest.mark.slow
def test_resume_of_a_finished_campaign_changes_nothing(cnn, campaign300, tmp_path):
    copy = tmp_path / "done.jsonl"
    shutil.copyfile(campaign300[0], copy)
    before = copy.read_bytes()
    res = faults_cmd("campaign", cnn, *C300, "--out", str(copy), "--resume", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["done"] == 300 and copy.read_bytes() == before


BIG = ("--n", "40000", "--batch", "64", "--layers", "3.2,5", "--seed", "3", "--threads", "1")


@pytest.fixture(scope="module")
def big_campaign(cnn, tmp_path_factory):
    """The uninterrupted run the interrupted ones must reproduce."""
    path = str(tmp_path_factory.mktemp("big") / "full.jsonl")
    res = faults_cmd("campaign", cnn, *BIG, "--out", path)
    assert res.returncode == 0, res.stderr
    return path


def _count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_campaign_resumes_to_the_same_records(cnn, big_campaign, tmp_path, sig):
    path = str(tmp_path / "int.jsonl")
    args = [*WITH_DEFAULT_SIGINT, DLCPU, "faults", "campaign", cnn, *BIG, "--out", path]
    proc = subprocess.Popen(args, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 120
        while _count_lines(path) < 2000:  # header + some records, well before 40,000
            assert proc.poll() is None, ("the campaign ended before it was interrupted", proc.communicate())
            assert time.monotonic() < deadline, "the campaign wrote no records"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "interrupted; the records made so far are in" in stderr and "--resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    kept = _count_lines(path) - 1      # complete records (SIGKILL may have cut the last line)
    assert 1999 <= kept < 40000, kept   # stopped part-way
    res = faults_cmd("campaign", cnn, *BIG, "--out", path, "--resume")
    assert res.returncode == 0, res.stderr
    assert "40,000 injections" in res.stdout
    full_header, full_records = read_jsonl(big_campaign)
    header, records = read_jsonl(path)
    assert {k: v for k, v in header.items() if k != "model"} == {k: v for k, v in full_header.items() if k != "model"}
    assert len(records) == 40000 and records == full_records


# ---------------------------------------------------------------------------- 4. bad input
@pytest.fixture(scope="session")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_files")
    (d / "model.txt").write_text("not a model\n")
    np.savez(d / "random.npz", a=np.random.default_rng(0).random((3, 3)), b=np.arange(4))
    (d / "other.jsonl").write_text('{"a": 1}\n{"b": 2}\n')
    (d / "empty.jsonl").write_text("")
    return {"txt": str(d / "model.txt"), "random": str(d / "random.npz"), "missing": str(d / "missing.npz"),
            "other": str(d / "other.jsonl"), "empty": str(d / "empty.jsonl"), "dir": str(d)}


SLOW = pytest.mark.slow


def case(id, *values, slow=False):
    """A parametrize case; slow=True for the extra ones (the brief's own cases stay in the quick run)."""
    return pytest.param(*values, id=id, marks=SLOW if slow else ())


INJECT_ERRORS = [  # (inject arguments after MODEL, exit code, what the line says)
    case("layer", ("--layer", "9.9", "--index", "0,0,0", "--bit", "1"), 1,
         "layer '9.9' is not in the model; its layers are: 0 ("),
    case("index-range", ("--layer", "2.0", "--index", "99,0,0", "--bit", "1"), 1,
         "layer 2.0 output: index [99, 0, 0] is out of range: coordinate 0 must be in 0..15 for shape (16, 8, 8)"),
    case("index-negative", ("--layer", "2.0", "--index", "0,-1,0", "--bit", "1"), 1,
         "is out of range: coordinate 1 must be in 0..7", slow=True),
    case("index-coords", ("--layer", "2.0", "--index", "1,2", "--bit", "1"), 1,
         "index [1, 2] has 2 coordinates, but the tensor has shape (16, 8, 8) (3 coordinates)"),
    case("weight-index-coords", ("--layer", "2.0", "--target", "weights", "--index", "1,2,0", "--bit", "1"), 1,
         "has 3 coordinates, but the tensor has shape (16, 16, 3, 3) (4 coordinates)", slow=True),
    case("bit", ("--layer", "2.0", "--index", "1,2,3", "--bit", "32"), 1, "bit 32 is beyond the 32-bit elements"),
    case("weight-bit", ("--layer", "2.0", "--target", "weights", "--index", "1,2,0,0", "--bit", "32"), 1,
         "bit 32 is beyond", slow=True),
    case("fixed8-bit", ("--layer", "2.0", "--index", "1,2,3", "--bit", "8", "--fault-model", "fixed8"), 1,
         "must be in 0..7, got [8]", slow=True),
    case("param", ("--layer", "2.0", "--target", "weights", "--param", "nope", "--index", "0,0,0,0", "--bit", "1"), 1,
         "layer 2.0 (Conv2d(16->16, k=3, s=1, p=1)) has no parameter 'nope'; it has weight"),
    case("no-weights", ("--layer", "4", "--target", "weights", "--index", "0", "--bit", "1"), 1,
         "layer 4 (GlobalAvgPool) has no parameter 'weight'; it has no weights of its own", slow=True),
    case("sample", ("--layer", "2.0", "--index", "1,2,3", "--bit", "1", "--sample", "10000"), 2,
         "'--sample': must be below the 360 test images, got 10000"),
    case("target", ("--layer", "2.0", "--index", "1,2,3", "--bit", "1", "--target", "foo"), 2,
         "'--target': must be 'weights' or 'activations', got 'foo'"),
    case("fault-model", ("--layer", "2.0", "--index", "1,2,3", "--bit", "1", "--fault-model", "fixed4"), 2,
         "'--fault-model': must be one of ieee, fixed8, fixed16, got 'fixed4'", slow=True),
    case("index-text", ("--layer", "2.0", "--index", "a,b", "--bit", "1"), 2,
         "'--index': must be a comma list of integers", slow=True),
    case("bit-negative", ("--layer", "2.0", "--index", "1,2,3", "--bit", "-1"), 2, "'--bit'", slow=True),
    case("bit-missing", ("--layer", "2.0", "--index", "1,2,3"), 2, "'--bit': is required", slow=True),
]


@pytest.mark.parametrize("args,code,needle", INJECT_ERRORS)
def test_inject_bad_input_is_one_line(cnn, args, code, needle):
    assert_one_line_error(faults_cmd("inject", cnn, *args), code, needle)


@pytest.mark.slow
def test_inject_bad_input_recurrent(rnn):
    assert_one_line_error(faults_cmd("inject", rnn, "--layer", "0", "--index", "8,5", "--bit", "1"), 1,
                          "coordinate 0 must be in 0..7 for shape (8, 64)")
    assert_one_line_error(faults_cmd("inject", rnn, "--layer", "0", "--target", "weights", "--param", "weight_hh_l0",
                                     "--index", "7,64", "--bit", "1"), 1, "coordinate 1 must be in 0..63")


CAMPAIGN_ERRORS = [  # (campaign arguments after MODEL, exit code, what the line says); no results file made
    case("bits-40", ("--bits", "40"), 1, "bits: bit 40 is beyond the 32-bit elements of the target (bits 0-31)"),
    case("bits-32", ("--bits", "32"), 1, "bit 32 is beyond", slow=True),
    case("weight-bits", ("--bits", "20-35", "--target", "weights"), 1, "bit 35 is beyond", slow=True),
    case("exponent-fixed8", ("--bits", "exponent", "--fault-model", "fixed8"), 1,
         "bits: 'exponent' names a float field, but the target is 8-bit integer storage"),
    case("mantissa-fixed16", ("--bits", "mantissa", "--fault-model", "fixed16", "--target", "weights"), 1,
         "16-bit integer storage", slow=True),
    case("fixed8-bit-9", ("--bits", "9", "--fault-model", "fixed8"), 1, "bit 9 is beyond the 8-bit elements",
         slow=True),
    case("bits-backwards", ("--bits", "5-3"), 1, "bits: range '5-3' runs backwards", slow=True),
    case("bits-text", ("--bits", "lots"), 1, "bits: cannot read 'lots'", slow=True),
    case("layers", ("--layers", "9.9"), 1, "layer '9.9' is not in the model", slow=True),
    case("no-weights", ("--layers", "4", "--target", "weights"), 1, "layer(s) 4 have no weights", slow=True),
    case("n-0", ("--n", "0"), 2, "'--n': must be 'auto' or a positive integer, got '0'"),
    case("n-negative", ("--n", "-5"), 2, "'--n'", slow=True),
    case("n-text", ("--n", "many"), 2, "'--n'", slow=True),
    case("target", ("--target", "foo"), 2, "'--target': must be 'weights' or 'activations', got 'foo'"),
    case("fault-model", ("--fault-model", "nope"), 2,
         "'--fault-model': must be one of ieee, fixed8, fixed16, got 'nope'", slow=True),
    case("batch", ("--batch", "0"), 2, "'--batch'", slow=True),
    case("confidence", ("--confidence", "1.5"), 2, "'--confidence'", slow=True),
]


@pytest.mark.parametrize("args,code,needle", CAMPAIGN_ERRORS)
def test_campaign_bad_input_is_one_line(cnn, tmp_path, args, code, needle):
    out = tmp_path / "r.jsonl"
    assert_one_line_error(faults_cmd("campaign", cnn, "--n", "10", *args, "--out", str(out)), code, needle)
    assert not out.exists()


@pytest.mark.slow
def test_campaign_needs_out(cnn):
    assert_one_line_error(faults_cmd("campaign", cnn, "--n", "10"), 2, "'--out': is required")


@pytest.mark.parametrize("which,args,needle", [
    case("seed", "cnn", ("--seed", "2"), "was written by another campaign (seed: file 1, now 2)"),
    case("target", "cnn", ("--target", "weights"), "(target: file 'activations', now 'weights'"),
    case("model", "rnn", (), "was written by another campaign (model_sha256: file '"),
    case("n", "cnn", ("--n", "301"), "(n: file 300, now 301)", slow=True),
    case("bits", "cnn", ("--bits", "exponent"), "(bits: file 'all', now 'exponent')", slow=True),
])
def test_resume_refuses_another_campaigns_file(models, campaign300, tmp_path, which, args, needle):
    results = tmp_path / "c.jsonl"
    shutil.copyfile(campaign300[0], results)
    before = file_state(results)
    model = models["digits" if which == "cnn" else "digits-rnn"]
    options = dict(zip(C300[::2], C300[1::2]))
    options.update(dict(zip(args[::2], args[1::2])))
    res = faults_cmd("campaign", model, *[v for kv in options.items() for v in kv], "--out", str(results), "--resume")
    assert_one_line_error(res, 1, needle)
    assert "--resume needs the same model, target, seed and parameters" in res.stderr
    assert file_state(results) == before


def test_out_on_an_existing_results_file_needs_resume(cnn, campaign300, tmp_path):
    results = tmp_path / "c.jsonl"
    shutil.copyfile(campaign300[0], results)
    before = file_state(results)
    assert_one_line_error(faults_cmd("campaign", cnn, *C300, "--out", str(results)), 2,
                          f"'--out': {results} already holds results; continue it with --resume")
    assert file_state(results) == before


def _damaged(campaign300, tmp_path, lineno, text):
    """A copy of the small campaign's results with line `lineno` (1 = header) replaced by `text`."""
    with open(campaign300[0], encoding="utf-8") as f:
        lines = f.read().split("\n")
    lines[lineno - 1] = text
    path = tmp_path / "damaged.jsonl"
    path.write_text("\n".join(lines))
    return path


def test_a_corrupt_line_in_the_middle_is_refused(cnn, campaign300, tmp_path):
    path = _damaged(campaign300, tmp_path, 50, '{"kind": "injection", "i": 48, "lay')
    before = file_state(path)
    assert_one_line_error(faults_cmd("report", str(path)), 1, f"{path}:50: corrupt line")
    assert_one_line_error(faults_cmd("campaign", cnn, *C300, "--out", str(path), "--resume"), 1,
                          f"{path}: line 50 is not a JSON record; the file is damaged")
    assert file_state(path) == before


@pytest.mark.slow
def test_a_misplaced_record_in_the_middle_is_refused(cnn, campaign300, tmp_path):
    with open(campaign300[0], encoding="utf-8") as f:
        line = f.read().split("\n")[10]          # injection 9 again on line 21
    path = _damaged(campaign300, tmp_path, 21, line)
    before = file_state(path)
    assert_one_line_error(faults_cmd("report", str(path)), 1, f"{path}:21: duplicate injection i=9 (first on line 11)")
    assert_one_line_error(faults_cmd("campaign", cnn, *C300, "--out", str(path), "--resume"), 1,
                          f"{path}: line 21 should be injection 19, got injection 9; the file is damaged")
    assert file_state(path) == before


def test_a_corrupt_line_100_is_named(campaign300, tmp_path):
    path = _damaged(campaign300, tmp_path, 100, "garbage")
    assert_one_line_error(faults_cmd("report", str(path)), 1, f"{path}:100: corrupt line")


NOT_MODELS = [
    case("txt", "txt", "not a readable dlcpu model file"),
    case("random-npz", "random", "not a dlcpu model file (no format version or configuration)"),
    case("missing", "missing", "does not exist"),
    case("dir", "dir", "not a readable dlcpu model file", slow=True),
]


@pytest.mark.parametrize("kind,needle", NOT_MODELS)
def test_not_a_model_file(bad_files, tmp_path, kind, needle):
    model = bad_files[kind]
    assert_one_line_error(faults_cmd("inject", model, "--list"), 1, needle)
    out = tmp_path / "r.jsonl"
    assert_one_line_error(faults_cmd("campaign", model, "--n", "10", "--out", str(out)), 1, needle)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind,needle", NOT_MODELS)
def test_not_a_model_file_every_command(bad_files, kind, needle):
    model = bad_files[kind]
    assert_one_line_error(faults_cmd("inject", model, "--layer", "0", "--index", "0,0,0", "--bit", "1"), 1, needle)
    assert_one_line_error(faults_cmd("compare", model, "--n", "10"), 1, needle)
    assert_one_line_error(run("bench", "faults", "--model", model, "--n", "100", "--n-weights", "10"), 1, needle)


def test_report_bad_input(bad_files):
    assert_one_line_error(faults_cmd("report", bad_files["dir"] + "/nope.jsonl"), 1,
                          f"results file {bad_files['dir']}/nope.jsonl does not exist")
    assert_one_line_error(faults_cmd("report", bad_files["other"]), 1,
                          "other.jsonl:1: first line must be a dlcpu-faults/2 header")


@pytest.mark.slow
def test_report_more_bad_input(bad_files, campaign300, tmp_path):
    assert_one_line_error(faults_cmd("report", bad_files["txt"]), 1, "first line must be a dlcpu-faults/2 header")
    assert_one_line_error(faults_cmd("report", bad_files["empty"]), 1, "empty file, expected a dlcpu-faults/2 header")
    assert_one_line_error(faults_cmd("report", campaign300[0], "--by", "sample"), 2,
                          "'--by': must be layer, bit or target, got 'sample'")
    assert_one_line_error(faults_cmd("report", campaign300[0], "--plot", str(tmp_path / "no" / "p.png")), 2,
                          "'--plot'")


@pytest.mark.slow
def test_resume_refuses_a_file_that_is_not_results(cnn, bad_files, tmp_path):
    path = tmp_path / "other.jsonl"
    shutil.copyfile(bad_files["other"], path)
    before = file_state(path)
    assert_one_line_error(faults_cmd("campaign", cnn, *C300, "--out", str(path), "--resume"), 1,
                          "line 1 is not a dlcpu-faults/2 campaign header; not a dlcpu faults results file")
    assert file_state(path) == before


@pytest.mark.slow
def test_recurrent_model_is_refused_where_only_the_cnn_runs(rnn):
    assert_one_line_error(faults_cmd("compare", rnn, "--n", "10"), 1,
                          "is a recurrent model; the compression study runs on the digits CNN")
    assert_one_line_error(run("bench", "faults", "--model", rnn, "--n", "100", "--n-weights", "10"), 1,
                          "is a recurrent model; bench faults runs on the digits CNN")


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (("--sparsities", "0.5,1.5"), "'--sparsities': every sparsity must be in (0, 1)"),
    (("--sparsities", "half"), "'--sparsities': must be a comma list of fractions"),
    (("--n", "0"), "'--n'"),
    (("--target", "foo"), "'--target'"),
    (("--out-dir", "/nonexistent/dir"), "'--out-dir': /nonexistent/dir is not a directory"),
    (("--epochs", "0"), "'--epochs'"),
], ids=["sparsity", "sparsities", "n", "target", "out-dir", "epochs"])
def test_compare_bad_options(cnn, args, needle):
    assert_one_line_error(faults_cmd("compare", cnn, *args), 2, needle)


# --------------------------------------------------------------------------- 5. bench faults
def _bench_faults(cnn, *extra):
    res = run("bench", "faults", "--model", cnn, "--n", "2000", "--n-weights", "50", "--threads", "1", "--json", *extra)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert "PyTorchFI" in data["timed_region"]
    rows = data["faults"]
    act, weights = rows[0], rows[1]
    assert act["framework"] == weights["framework"] == "dlcpu" and act["threads"] == weights["threads"] == 1
    assert act["campaign"].startswith("activations") and act["injections"] == 2000
    assert weights["campaign"].startswith("weights") and weights["injections"] == 50
    for r in rows:
        assert r["per_second"] > 0 and 0 <= r["sdc1_rate"] <= 1
    return rows


def test_bench_faults_json(cnn):
    assert len(_bench_faults(cnn)) == 2


@pytest.mark.slow
def test_bench_faults_compare_pytorchfi(cnn):
    pytest.importorskip("pytorchfi")
    rows = _bench_faults(cnn, "--compare", "pytorchfi")
    peers = rows[2:]
    assert len(peers) == 2 and [r["injections"] for r in peers] == [1000, 2000]
    for r in peers:
        assert r["framework"].startswith("pytorchfi 0.6.0") and r["threads"] == 1
        assert r["outcome_agreement"] == 1.0 and r["dlcpu_ratio"] > 0
    assert peers[1]["sdc1_rate"] == rows[0]["sdc1_rate"]  # the same 2000 faults, the same outcomes


@pytest.mark.slow
def test_bench_faults_bad_options(cnn):
    assert_one_line_error(run("bench", "faults", "--model", cnn, "--compare", "torch"), 2,
                          "'--compare': must be 'pytorchfi', got 'torch'")
    assert_one_line_error(run("bench", "faults", "--model", cnn, "--n", "10"), 2, "'--n'")


# ------------------------------------------------------------------------------- 6. compare
@pytest.mark.slow
def test_compare_small_and_resumed(cnn, tmp_path):
    args = ("faults", "compare", cnn, "--n", "200", "--sparsities", "0.5", "--epochs", "1", "--threads", "1",
            "--json", "--out-dir", str(tmp_path))
    res = run(*args)
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout)
    rows = first["rows"]
    assert [r["variant"] for r in rows] == ["dense fp32", "pruned 50%", "int8", "pruned 50% + int8"]
    assert rows[0]["kind"] == "dense" and rows[0]["resilience_factor"] is None
    for r in rows:
        assert r["n"] == 200 and 0 <= r["accuracy"] <= 1
        assert 0 <= r["sdc1_low"] <= r["sdc1_rate"] <= r["sdc1_high"] <= 1
        for key in ("due_rate", "any_input_sdc1_rate", "sparsity_measured"):
            assert 0 <= r[key] <= 1, (key, r)
    assert rows[1]["sparsity_measured"] == pytest.approx(0.5, abs=0.01)
    assert rows[2]["bits_per_element"] == 8 and rows[0]["bits_per_element"] == 32
    kept = {name: file_state(tmp_path / name) for name in os.listdir(tmp_path)}
    assert sum(name.endswith(".jsonl") for name in kept) == 4 and any(name.endswith(".npz") for name in kept)
    res = run(*args)                           # resumes from --out-dir: no fine-tuning, no injection
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == first
    assert {name: file_state(tmp_path / name) for name in os.listdir(tmp_path)} == kept
