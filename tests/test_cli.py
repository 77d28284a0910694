"""The dlcpu command: exit codes, --json output, one-line errors, --help, --version, python -m dlcpu."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import HAVE_TORCH, needs_torch

import dlcpu
from dlcpu import _peers


def _dlcpu_script():
    """The console script of the environment under test (next to its python), not whichever
    `dlcpu` comes first on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "dlcpu")
    return here if os.path.exists(here) else shutil.which("dlcpu")


DLCPU = _dlcpu_script()


def run(*args, env=None, timeout=300):
    return subprocess.run([DLCPU, *args], check=False, capture_output=True, text=True, cwd="/", timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def assert_one_line_error(res, code, *needles):
    """Exit `code`, exactly one non-empty stderr line starting with 'error:' and naming every needle,
    no traceback, no stdout."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_info_json():
    res = run("info", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("version", "compiler", "compile_flags", "openmp", "threads", "cpu_model", "features", "isa", "channel_block"):
        assert key in data
    assert data["channel_block"] == 16
    assert set(data["features"]) >= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    formats = data["format_kernels"]
    assert set(formats) == {"fp32", "bf16", "dfp16", "int8", "ternary"}
    native = data["features"]["avx512_bf16"] and "avx512" in data["supported_isas"]
    assert formats["bf16"].startswith("vdpbf16ps") if native else formats["bf16"] == "emulated"
    vnni = data["features"]["avx512_vnni"] and data["isa"] == "avx512"
    assert formats["int8"].startswith("vpdpbusd") if vnni else formats["int8"] == "emulated"
    assert formats["ternary"].startswith("vpdpbusd") if vnni else formats["ternary"] == "emulated"


def test_info_table():
    res = run("info")
    assert res.returncode == 0 and "isa" in res.stdout and "format_kernels" in res.stdout


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


def test_bench_conv_precision_times_every_pass_in_the_format():
    """--precision bf16,dfp16: each pass as a mixed-precision layer calls it, bf16 checked
    against float64 on the rounded operands; the peer runs bf16 tensors."""
    args = ["bench", "conv", "--layer", "mb2ic16ih10oc32oh5kh3ph1sh2", "--pass", "fwd,bwd_d,bwd_w",
            "--precision", "bf16,dfp16", "--threads", "1", "--repeats", "1", "--json"]
    if HAVE_TORCH:
        args += ["--compare", "torch"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert [(r["pass"], r["precision"]) for r in runs] == [(p, f) for p in ("fwd", "bwd_d", "bwd_w")
                                                           for f in ("bf16", "dfp16")]
    for r in runs:
        assert r["total"]["gflops"] > 0 and r["format_peak_gflops"] >= r["peak_gflops"]
        if HAVE_TORCH:
            assert r["layers"][0]["peer"]["name"].endswith(" bf16") == (r["precision"] == "bf16")
    res = run("bench", "conv", "--layer", "mb2ic16ih10oc32oh5kh3ph1sh2", "--pass", "bwd_w", "--precision", "bf16",
              "--threads", "1", "--repeats", "1", "--check", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["runs"][0]["layers"][0]["check"]["passed"]
    for bad, why in ((["--precision", "int8"], "--precision"), (["--precision", "bf16", "--alg", "winograd4"], "--alg"),
                     (["--precision", "dfp16", "--check"], "--check")):
        res = run("bench", "conv", "--layers", "res5b_branch2b", "--threads", "1", "--repeats", "1", *bad)
        assert res.returncode == 2 and why in res.stderr, (bad, res.stderr)


def test_bench_conv_table_filter():
    res = run("bench", "conv", "--layers", "res5b_branch2b", "--batch", "1", "--threads", "1", "--repeats", "1")
    assert res.returncode == 0, res.stderr
    assert "res5b_branch2b" in res.stdout and "total" in res.stdout


def test_bench_gemm_json():
    res = run("bench", "gemm", "--size", "96", "--threads", "1", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)["gemm"][0]
    assert row["gflops"] > 0 and row["peer"]["ratio"] > 0 and row["check_max_abs_err_first64rows"] < 1e-3


@needs_torch
def test_bench_precision_json():
    res = run("bench", "precision", "--layers", "res5b_branch2b", "--batch", "1", "--threads", "1", "--repeats", "1",
              "--gemm", "64", "--compare", "torch", "--json")
    assert res.returncode == 0, res.stderr
    run0 = json.loads(res.stdout)["runs"][0]
    layer = run0["layers"][0]
    assert set(layer["formats"]) == {"fp32", "bf16", "dfp16", "int8"} and set(layer["peers"]) == {"bf16", "int8"}
    assert layer["peers"]["int8"]["gflops"] > 0 and layer["peers"]["int8"]["rel_l2"] < 3e-2
    f = layer["formats"]
    assert f["fp32"]["rel_l2"] < 1e-5 < f["dfp16"]["rel_l2"] < 1e-3 < f["bf16"]["rel_l2"] < f["int8"]["rel_l2"] < 3e-2
    total = run0["total"]["formats"]
    assert total["int8"]["speedup_vs_fp32"] > 0 and "ratio_vs_peer" in total["bf16"] and "ratio_vs_peer" in total["int8"]
    assert "ratio_vs_peer" not in total["dfp16"]
    assert run0["gemm"]["formats"]["bf16"]["rel_l2"] < 1e-2 and run0["gemm"]["formats"]["int8"]["rel_l2"] < 3e-2
    assert set(run0["native"]) >= {"bf16", "int8"}
    # int8 activations as wide as the peer's: 7-bit codes where PyTorch needs reduce_range
    assert run0["int8_activation_bits"] == (8 if dlcpu.cpu.features()["avx512_vnni"] else 7)


def test_bench_precision_table():
    res = run("bench", "precision", "--layers", "res5b_branch2b", "--batch", "1", "--threads", "1", "--repeats", "1",
              "--gemm", "0", "--formats", "bf16")
    assert res.returncode == 0, res.stderr
    assert "bf16 G/s" in res.stdout and "fp32 G/s" not in res.stdout and "GEMM" not in res.stdout


@pytest.mark.parametrize("model,precision", [("digits", "bf16"), ("digits", "dfp16"), ("digits-rnn", "bf16"),
                                             ("digits-rnn", "dfp16")])
def test_train_digits_mixed_precision_json(model, precision):
    res = run("train", model, "--epochs", "1", "--threads", "1", "--precision", precision, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["precision"] == precision and data["test_accuracy"] > 0.3


BAD_OPTION_VALUES = [  # (args, what the one line must say): every command group, exit 2
    (("train", "digits", "--precision", "fp8"), "'--precision': unknown precision 'fp8'"),
    (("train", "digits-rnn", "--precision", "int8"), "'--precision': the digits RNN trains in fp32, bf16, dfp16"),
    (("bench", "precision", "--formats", "int4"), "'--formats'"),
    (("bench", "precision", "--layers", "nosuchlayer"), "matches no layer"),
    (("bench", "precision", "--gemm", "-1"), "'--gemm'"),
    (("bench", "conv", "--layer", "mb4ic64xx"), "cannot parse"),
    (("bench", "conv", "--layer", "ic3ih5oc4kh3dh1"), "dilation"),
    (("bench", "conv", "--layer", "ic3ih2oc4kh5"), "output size would be <= 0"),
    (("bench", "conv", "--layers", "nosuchlayer"), "matches no layer"),
    (("bench", "conv", "--threads", "a,b"), "'--threads': must be a comma list of integers"),
    (("bench", "conv", "--threads", "0"), "'--threads': values must be between 1 and 1024"),
    (("bench", "lstm", "--threads", "1,1000000000"), "'--threads': values must be between 1 and 1024"),
    (("train", "digits", "--threads", "1000000000"), "'--threads'"),
    (("bench", "conv", "--compare", "mkl"), "'--compare': must be 'torch'"),
    (("bench", "conv", "--pass", "sideways"), "'--pass': must be a comma list of fwd, bwd_d, bwd_w"),
    (("bench", "conv", "--alg", "fft"), "'--alg'"),
    (("bench", "conv", "--batch", "0"), "'--batch'"),
    (("bench", "conv", "--repeats", "0"), "'--repeats'"),
    (("bench", "peak", "--seconds", "0"), "'--seconds'"),
    (("bench", "peak", "--seconds", "-1"), "'--seconds'"),
    (("bench", "peak", "--seconds", "0.001"), "'--seconds'"),
    (("bench", "peak", "--threads", "x"), "'--threads'"),
    (("bench", "gemm", "--size", "0"), "'--size'"),
    (("bench", "gemm", "--threads", "1,,-2"), "'--threads'"),
    (("bench", "lstm", "--layers", "nope"), "matches no row"),
    (("bench", "lstm", "--cell", "transformer"), "'--cell': must be one of lstm, gru, rnn"),
    (("bench", "lstm", "--threads", "two"), "'--threads'"),
    (("bench", "train", "digits", "--epochs", "0"), "'--epochs'"),
    (("bench", "train", "digits", "--precision", "int8"), "'--precision': must be one of fp32, bf16, dfp16"),
    (("train", "digits", "--batch", "0"), "'--batch'"),
    (("train", "digits", "--lr", "0"), "'--lr'"),
    (("train", "digits", "--threads", "0"), "'--threads'"),
    (("train", "digits", "--epochs", "many"), "'--epochs'"),
    (("train", "digits-rnn", "--epochs", "0"), "'--epochs'"),
    (("train", "digits", "--out", "/nonexistent-dir/m.npz"), "directory /nonexistent-dir does not exist"),
    (("train", "digits", "--out", "/tmp"), "/tmp is a directory"),
    (("train", "digits", "--out", f"{sys.executable}/m.npz"), f"{sys.executable} is not a directory"),
    (("train", "digits-rnn", "--out", "/nonexistent-dir/m.npz"), "does not exist"),
    (("info", "--bogus"), "No such option: --bogus"),
    (("bench", "nosuch"), "No such command"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTION_VALUES, ids=[" ".join(a) for a, _ in BAD_OPTION_VALUES])
def test_bad_option_values_exit_2_with_one_line(args, needle):
    assert_one_line_error(run(*args), 2, needle)


def _unwritable_dir():
    """A directory this process cannot create files in (root ignores permission bits, so a
    read-only mount where one exists, else a chmod 555 directory for other users)."""
    for d in ("/sys", "/proc"):
        try:
            with open(os.path.join(d, ".dlcpu-probe"), "wb"):
                pass
        except OSError:
            return d
    return None


def test_out_in_unwritable_directory_fails_before_training(tmp_path):
    d = _unwritable_dir()
    if d is None and os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
    if d is None:
        pytest.skip("no directory here that this user cannot write")
    t0 = time.perf_counter()
    res = run("train", "digits", "--epochs", "50", "--out", os.path.join(str(d), "m.npz"))
    assert_one_line_error(res, 2, "cannot write to directory")
    assert time.perf_counter() - t0 < 30  # refused up front, not after 50 epochs


def test_failure_while_running_exits_1_with_one_line(tmp_path):
    out = tmp_path / "m.npz"
    res = run("train", "digits", "--epochs", "2", "--lr", "1e6", "--out", str(out))
    assert_one_line_error(res, 1, "training diverged")
    assert res.stderr.count("\n") == 1  # not even a blank line from the progress bar
    assert not out.exists() and os.listdir(tmp_path) == []  # diverged in epoch 1: nothing saved, no temp files


#: a command line prefix that runs a program with SIGINT back to its default action: a shell starts
#: background jobs (a suite run with `... &`) with it ignored, and a Python started so installs no
#: KeyboardInterrupt handler, so a Ctrl-C test would see its program run to the end
WITH_DEFAULT_SIGINT = [sys.executable, "-c", ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                                              "os.execv(sys.argv[1], sys.argv[1:])")]


def test_ctrl_c_during_training_is_one_line_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "m.npz"
    proc = subprocess.Popen([*WITH_DEFAULT_SIGINT, DLCPU, "train", "digits", "--epochs", "500", "--threads", "1",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    first = proc.stderr.readline()  # an epoch line: the model has been saved once
    assert first.startswith("epoch"), first
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert [l for l in rest.splitlines() if l.strip()][-1] == "error: interrupted" and "Traceback" not in rest
    assert os.listdir(tmp_path) == ["m.npz"] and stdout == ""


def test_debug_env_shows_the_traceback():
    res = run("train", "digits", "--epochs", "1", "--lr", "1e6", env={"DLCPU_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr and "TrainingDiverged" in res.stderr


@pytest.mark.parametrize("args", [(), ("bench",), ("train",), ("bench", "train")])
def test_group_without_a_command_shows_its_help_and_exits_2(args):
    res = run(*args)
    assert res.returncode == 2 and "Usage: dlcpu" in res.stdout + res.stderr and "Traceback" not in res.stderr


def test_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout == f"dlcpu {dlcpu.__version__}\n" and res.stderr == ""


def test_python_m_dlcpu():
    res = subprocess.run([sys.executable, "-m", "dlcpu", "info", "--json"], check=False, capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and json.loads(res.stdout)["version"] == dlcpu.__version__
    res = subprocess.run([sys.executable, "-m", "dlcpu", "--version"], check=False, capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and res.stdout.strip() == f"dlcpu {dlcpu.__version__}"
    res = subprocess.run([sys.executable, "-m", "dlcpu", "bench", "peak", "--seconds", "0"], check=False,
                         capture_output=True, text=True, cwd="/")
    assert_one_line_error(res, 2, "'--seconds'")


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "dlcpu.cli.main", "info", "--json"], check=False, capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and json.loads(res.stdout)["version"]


def _commands():
    """(path, click command) for every command and group of the app."""
    import typer
    from dlcpu.cli.main import app

    todo, found = [((), typer.main.get_command(app))], []
    while todo:
        path, cmd = todo.pop()
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            todo.append(((*path, name), sub))
    return found


def test_every_option_has_a_description():
    missing = [(" ".join(path), p.name) for path, cmd in _commands() for p in cmd.params
               if p.param_type_name == "option" and not (p.help or "").strip()]
    assert not missing, missing
    assert len(_commands()) >= 10


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p) or "dlcpu")
def test_help_shows_real_types_and_descriptions(path):
    res = run(*path, "--help")
    assert res.returncode == 0, res.stderr
    assert "<bool>" not in res.stdout  # flags take no value
    cmd = dict(_commands())[path]
    for p in cmd.params:
        if p.param_type_name != "option":
            continue
        line = next((l for l in res.stdout.splitlines() if re.search(rf"{re.escape(p.opts[0])}\b", l)), None)
        assert line is not None, (p.opts, res.stdout)
        assert p.help.split()[0] in line, (line, p.help)  # the description starts on the option's line
        if not p.is_flag:
            assert re.search(r"<[a-z][a-z ]*>", line), line  # its value type, e.g. <int range> or <list>


def test_help_of_train_shows_types():
    res = run("train", "digits", "--help")
    text = " ".join(res.stdout.split())
    for needle in ("--epochs <int range> [x>=1] Passes over", "--lr <float range>", "--out <file> Save the model",
                   "--json Print JSON", "--seed <int range>"):
        assert needle in text, needle


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


def test_train_digits_json_and_model(tmp_path):
    out = str(tmp_path / "m.npz")
    res = run("train", "digits", "--epochs", "2", "--threads", "1", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data["history"]) == 2 and data["saved_to"] == out and data["test_images"] == 360
    from dlcpu import nn

    nn.load(out)


@pytest.mark.slow
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
    assert data["rows"][0]["infer"]["gflops"] > 0 and data["rows"][0]["train"]["gflops"] > 0
    if HAVE_TORCH:
        assert data["geomean_ratio"]["infer"] > 0


def test_bench_gru_json():
    res = run("bench", "lstm", "--cell", "gru", "--layers", "lstm_256_256", "--threads", "1", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["lstm"][0]
    assert data["cell"] == "gru" and data["rows"][0]["train"]["gflops"] > 0


@needs_torch
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_bench_lstm_formats_have_pytorch_peers_of_their_format(cell):
    """--precision with --compare torch: bf16 against PyTorch under autocast, int8 against its
    quantize_dynamic (GRU/LSTM only: PyTorch has no quantized nn.RNN), DFP-16 against nothing."""
    res = run("bench", "lstm", "--cell", cell, "--layers", "lstm_256_256", "--threads", "1", "--repeats", "1",
              "--precision", "fp32,bf16,dfp16,int8", "--compare", "torch", "--json")
    assert res.returncode == 0, res.stderr
    formats = json.loads(res.stdout)["lstm"][0]["rows"][0]["precisions"]
    assert "autocast bf16" in formats["bf16"]["train"]["peer"]["name"]
    assert formats["bf16"]["infer"]["peer"]["ratio"] > 0
    assert "peer" not in formats["dfp16"]["infer"] and "train" not in formats["int8"]
    if cell == "gru":
        assert "quantize_dynamic" in formats["int8"]["infer"]["peer"]["name"]
    else:
        assert "peer" not in formats["int8"]["infer"]


@needs_torch
def test_bench_train_digits_bf16_json():
    """--precision bf16: dlcpu's bf16 model, its fp32 model in the same rounds, PyTorch under
    autocast."""
    res = run("bench", "train", "digits", "--precision", "bf16", "--epochs", "1", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)["train_digits"][0]
    assert row["precision"] == "bf16" and row["images_per_second"] > 0 and row["fp32"]["speedup"] > 0
    assert "autocast bf16" in row["peer"]["name"] and row["peer"]["ratio"] > 0


def test_train_digits_rnn_json():
    res = run("train", "digits-rnn", "--epochs", "2", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert "LSTM" in data["model"] and len(data["history"]) == 2


@needs_torch
def test_bench_train_resnet50_json():
    """The whole-model training benchmark end to end at a small size: both sides, FLOPs, peak
    memory from fresh processes, and the breakdown by layer kind."""
    res = run("bench", "train", "resnet50", "--batch", "2", "--image", "32", "--threads", "1", "--repeats", "1",
              "--compare", "torch", "--breakdown", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["train_resnet50"][0]
    assert r["gflop_per_step"] > 0 and r["images_per_second"] > 0 and r["peer"]["images_per_second"] > 0
    assert r["memory"]["step_bytes"] > 100e6 and r["peer"]["memory"]["step_bytes"] > 100e6   # 3 x 100 MB of weights
    assert r["breakdown"]["conv fwd"] > 0 and r["breakdown"]["conv bwd-weights"] > 0
    assert r["peer"]["breakdown"]["conv bwd (data+weights)"] > 0


@needs_torch
def test_bench_infer_resnet50_json():
    res = run("bench", "infer", "resnet50", "--batch", "1,2", "--image", "32", "--threads", "1", "--repeats", "1",
              "--compare", "torch", "--json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["infer_resnet50"]
    assert [r["batch"] for r in runs] == [1, 2] and all(r["peer"]["ratio"] > 0 for r in runs)
    assert all(r["memory"]["step_bytes"] > 100e6 and r["peer"]["memory_ratio"] > 0 for r in runs)


@needs_torch
@pytest.mark.parametrize("precision,peer", [("bf16", "autocast bf16"), ("int8", None)])
def test_bench_infer_resnet50_low_precision_json(precision, peer):
    """--precision bf16: dlcpu's set_precision against PyTorch's autocast; int8: nn.quantize's
    model against PyTorch's quantized twin (PT2E compiled by inductor where torchao is
    installed), both calibrated on the images, with each side's logits error against fp32.
    dlcpu's fp32 model runs in the same rounds."""
    if precision == "int8":      # the path _peers.quantized_model takes here
        peer = "PT2E int8" if _peers.pt2e_or_none() is not None else "FX-quantized int8"
    res = run("bench", "infer", "resnet50", "--batch", "2", "--image", "32", "--threads", "1", "--repeats", "1",
              "--compare", "torch", "--precision", precision, "--no-memory", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["infer_resnet50"][0]
    assert r["precision"] == precision and peer in r["peer"]["name"]
    assert r["fp32"]["images_per_second"] > 0 and r["fp32"]["speedup"] > 0 and r["peer"]["ratio"] > 0
    if precision == "int8":
        assert 0 < r["error_vs_fp32"]["dlcpu"] < 0.1 and 0 < r["error_vs_fp32"]["torch"] < 0.1
    else:
        assert "error_vs_fp32" not in r


def test_bench_model_bad_options():
    for args, match in ((("train", "resnet50", "--image", "16"), "--image"), (("infer", "resnet50", "--batch", "0"), "--batch"),
                        (("train", "resnet50", "--precision", "int8"), "'--precision': must be one of fp32, bf16"),
                        (("train", "resnet50", "--compare", "tf"), "--compare"),
                        (("train", "resnet50", "--image", "32", "--batch", "1"), "needs --batch >= 2")):
        res = run("bench", *args)
        assert res.returncode == 2 and match in res.stderr, res.stderr


@needs_torch
def test_bench_train_gnmt_json():
    res = run("bench", "train", "gnmt", "--vocab", "500", "--hidden", "32", "--layers", "3", "--seq", "5",
              "--batch", "4", "--threads", "1", "--repeats", "1", "--compare", "torch", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["train_gnmt"][0]
    assert r["tokens_per_second"] > 0 and r["peer"]["ratio"] > 0 and r["gflop_per_step"] > 0
    assert 0 < r["memory"]["step_bytes"] < r["memory"]["peak_rss_bytes"]
    res = run("bench", "train", "gnmt", "--hidden", "33")
    assert res.returncode == 2 and "--hidden" in res.stderr
