"""nn.quantize / dlcpu quantize: a trained digits CNN with int8 or block-ternary convolutions,
saved and loaded, with residual levels switched at run time, and its report."""
import json
import subprocess
import sys

import numpy as np
import pytest

import dlcpu
from dlcpu import nn
from dlcpu import train as training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    result = training.train_digits(epochs=8, seed=0)
    path = tmp_path_factory.mktemp("q") / "digits.npz"
    nn.save(result.model, path)
    data = training.load_digits_split(0)
    calibration = [training.image_batch(data.x_train[i:i + 64]) for i in range(0, 256, 64)]
    return result.model, str(path), data, calibration


def logits(model, data):
    with nn.inference_mode():
        return model(training.image_batch(data.x_test[:64]))


@pytest.mark.parametrize("to,kw", [("int8", {}), ("ternary", {"block": 16, "residual": 2}),
                                   ("ternary", {"block": 4, "residual": 0})])
def test_quantized_model_runs_saves_and_loads(trained, tmp_path, to, kw):
    model, _, data, calibration = trained
    before = logits(model, data).copy()
    q = nn.quantize(model, to, calibration, **kw)
    assert np.array_equal(logits(model, data), before)          # the original model is left as it was
    acc_fp32 = training.evaluate(model, data.x_test, data.y_test)
    acc_q = training.evaluate(q, data.x_test, data.y_test)
    assert acc_q > acc_fp32 - (0.01 if to == "int8" or kw["residual"] else 0.2)
    path = tmp_path / "q.npz"
    nn.save(q, path)
    loaded = nn.load(path)
    assert isinstance(loaded, nn.Quantized) and np.array_equal(logits(loaded, data), logits(q, data))
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((64, 10), np.float32))


def test_residual_levels_trade_accuracy_for_multiplications(trained):
    model, _, data, calibration = trained
    q = nn.quantize(model, "ternary", calibration, block=16, residual=2)
    costs = nn.quantize_costs(model, training.image_batch(data.x_test[:1]))
    reports = [nn.quantize_weight_report(model, costs, "ternary", 16, 2, levels) for levels in (1, 2, 3)]
    errors = [r["rel_weight_error"] for r in reports]
    mults = [r["multiplications"] for r in reports]
    assert errors[0] > errors[1] > errors[2] and mults[0] < mults[1] < mults[2]
    dense = nn.quantize_weight_report(model, costs)["multiplications"]
    assert mults[2] < dense
    acc = [training.evaluate(q.set_levels(levels), data.x_test, data.y_test) for levels in (1, 2, 3)]
    assert acc[2] >= acc[0]
    with pytest.raises(ValueError, match="levels must be <= 3"):
        q.set_levels(4)


def test_a_quantized_file_for_another_shape_is_refused(trained, tmp_path):
    model, _, _, calibration = trained
    q = nn.quantize(model, "int8", calibration)
    path = tmp_path / "q.npz"
    nn.save(q, path)
    with np.load(path) as f:
        files = dict(f.items())
    key = next(k for k in files if k.endswith("weight_q") and files[k].shape[1] > 1)
    files[key] = files[key][:, :1]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **files)
    with pytest.raises(ValueError, match="another shape"):
        nn.load(bad)


def run(*args):
    # from / : the installed package, not a source tree in the working directory
    return subprocess.run([sys.executable, "-m", "dlcpu", *args], check=False, capture_output=True, text=True,
                          timeout=600, cwd="/")


def test_quantize_cli_reports_and_saves(trained, tmp_path):
    _, path, _, _ = trained
    out = tmp_path / "t.npz"
    res = run("quantize", path, "--to", "ternary", "--block", "8", "--residual", "1", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [r["levels"] for r in data["rows"]] == [None, 2, 1] and data["rows"][0]["format"] == "fp32"
    assert data["rows"][1]["test_accuracy"] > 0.8 and out.exists()
    assert isinstance(dlcpu.nn.load(out), nn.Quantized)


@pytest.mark.parametrize("args,code,what", [
    (("--to", "fp8"), 2, "'--to'"),
    (("--to", "ternary", "--residual", "-1"), 2, "'--residual'"),
    (("--to", "ternary", "--block", "12"), 1, "does not divide the padded input channels"),
    (("--to", "ternary", "--block", "2"), 1, "multiple of 4"),
    ((), 2, "'--out'"),
])
def test_quantize_cli_bad_options(trained, tmp_path, args, code, what):
    _, path, _, _ = trained
    out = () if args == () else ("--out", str(tmp_path / "x.npz"))
    res = run("quantize", path, *args, *out)
    assert res.returncode == code and what in res.stderr, res.stderr
