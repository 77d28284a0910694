"""The dlcpu command: exit codes, --json output, error lines."""
import json
import subprocess
import sys

import pytest
from conftest import HAVE_TORCH


def run(*args):
    return subprocess.run(["dlcpu", *args], check=False, capture_output=True, text=True, cwd="/", timeout=300)


def test_info_json():
    res = run("info", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("version", "compiler", "compile_flags", "openmp", "threads", "cpu_model", "features", "isa", "channel_block"):
        assert key in data
    assert data["channel_block"] == 16
    assert set(data["features"]) >= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}


def test_info_table():
    res = run("info")
    assert res.returncode == 0 and "isa" in res.stdout


def test_bench_peak_json():
    res = run("bench", "peak", "--threads", "1", "--seconds", "0.02", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["peak"][0]["threads"] == 1 and data["peak"][0]["gflops"] > 0


def test_bench_conv_layer_check_json():
    args = ["bench", "conv", "--layer", "mb2ic16ih10oc32oh10kh3ph1", "--layer", 'ic3ih20oc16kh7sh2ph3n"first*2"',
            "--threads", "1", "--check", "--repeats", "1", "--json", "--show-plan"]
    if HAVE_TORCH:
        args += ["--compare", "torch"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    run0 = data["runs"][0]
    assert [l["name"] for l in run0["layers"]] == ["layer", "first"]
    assert run0["layers"][1]["count"] == 2
    assert all(l["check"]["passed"] for l in run0["layers"])
    assert run0["total"]["gflops"] > 0
    if HAVE_TORCH:
        assert "ratio" in run0["total"] and run0["layers"][0]["peer"]["layout"] in ("nchw", "channels_last")


def test_bench_conv_table_filter():
    res = run("bench", "conv", "--layers", "res5b_branch2b", "--batch", "1", "--threads", "1", "--repeats", "1")
    assert res.returncode == 0, res.stderr
    assert "res5b_branch2b" in res.stdout and "total" in res.stdout


def test_bench_gemm_json():
    res = run("bench", "gemm", "--size", "96", "--threads", "1", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)["gemm"][0]
    assert row["gflops"] > 0 and row["peer"]["ratio"] > 0 and row["check_max_abs_err_first64rows"] < 1e-3


@pytest.mark.parametrize("args,needle", [
    (("bench", "conv", "--layer", "mb4ic64xx"), "cannot parse"),
    (("bench", "conv", "--layer", "ic3ih5oc4kh3dh1"), "dilation"),
    (("bench", "conv", "--layers", "nosuchlayer"), "matches no layer"),
    (("bench", "conv", "--threads", "a,b"), "--threads"),
    (("bench", "conv", "--compare", "mkl"), "--compare must be 'torch'"),
])
def test_handled_errors_exit_1_with_one_line(args, needle):
    res = run(*args)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [("bench", "conv", "--batch", "0"), ("bench", "nosuch"), ("info", "--bogus")])
def test_usage_errors_exit_2(args):
    assert run(*args).returncode == 2


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "dlcpu.cli.main", "info", "--json"], check=False, capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and json.loads(res.stdout)["version"]


def test_bench_conv_backward_passes_json():
    args = ["bench", "conv", "--layer", "mb2ic16ih10oc32oh5kh3sh2ph1", "--pass", "bwd_d,bwd_w",
            "--threads", "1", "--check", "--repeats", "1", "--json"]
    if HAVE_TORCH:
        args += ["--compare", "torch"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert [r["pass"] for r in runs] == ["bwd_d", "bwd_w"]
    assert all(l["check"]["passed"] for r in runs for l in r["layers"])


def test_bench_conv_bad_pass():
    res = run("bench", "conv", "--pass", "sideways")
    assert res.returncode == 1 and "--pass must be a comma list" in res.stderr


def test_train_digits_json_and_model(tmp_path):
    out = str(tmp_path / "m.npz")
    res = run("train", "digits", "--epochs", "2", "--threads", "1", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data["history"]) == 2 and data["saved_to"] == out and data["test_images"] == 360
    from dlcpu import nn

    nn.load(out)


def test_train_digits_divergence_exit_1(tmp_path):
    res = run("train", "digits", "--epochs", "2", "--lr", "1e6", "--out", str(tmp_path / "m.npz"))
    assert res.returncode == 1 and "training diverged" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch")
def test_bench_train_digits_json():
    res = run("bench", "train", "digits", "--epochs", "1", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)["train_digits"][0]
    assert row["images_per_second"] > 0 and row["peer"]["ratio"] > 0


def test_bench_conv_winograd_json():
    res = run("bench", "conv", "--layer", "mb2ic32ih12oc32oh12kh3ph1", "--layer", "ic16ih8oc16kh1",
              "--alg", "direct,winograd4", "--threads", "1", "--check", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert [(r["algorithm"], len(r["layers"])) for r in runs] == [("direct", 2), ("winograd4", 1)]
    assert all(l["check"]["passed"] for r in runs for l in r["layers"])


def test_bench_lstm_json():
    args = ["bench", "lstm", "--layers", "lstm_256_256", "--threads", "1", "--repeats", "1", "--json"]
    if HAVE_TORCH:
        args += ["--compare", "torch"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["lstm"][0]
    assert data["rows"][0]["forward"]["gflops"] > 0 and data["rows"][0]["train"]["gflops"] > 0
    if HAVE_TORCH:
        assert data["geomean_ratio"]["forward"] > 0


def test_bench_lstm_bad_filter():
    res = run("bench", "lstm", "--layers", "nope")
    assert res.returncode == 1 and "matches no row" in res.stderr
    res = run("bench", "lstm", "--cell", "transformer")
    assert res.returncode == 1 and "--cell must be one of lstm, gru, rnn" in res.stderr


def test_bench_gru_json():
    res = run("bench", "lstm", "--cell", "gru", "--layers", "lstm_256_256", "--threads", "1", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["lstm"][0]
    assert data["cell"] == "gru" and data["rows"][0]["train"]["gflops"] > 0


def test_train_digits_rnn_json():
    res = run("train", "digits-rnn", "--epochs", "2", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert "LSTM" in data["model"] and len(data["history"]) == 2
