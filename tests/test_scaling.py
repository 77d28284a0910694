"""dlcpu.scaling and `dlcpu scale threads`: fits on synthetic timings, the workload parser, weak
scaling of the problem, and small real runs of the command."""
import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

from dlcpu import scaling

THREADS = [1, 2, 4, 8, 16]


def amdahl_times(p, threads, t1=1.0):
    return [t1 * ((1 - p) + p / n) for n in threads]


def gustafson_times(s, threads, t1=1.0):
    # weak scaling: scaled speedup N*T(1)/T(N) = N - s(N-1)  =>  T(N) = N*T(1) / (N - s(N-1))
    return [t1 * n / (n - s * (n - 1)) for n in threads]


def noisy(times, rel, seed=0):
    rng = np.random.default_rng(seed)
    return [t * (1 + rel * rng.uniform(-1, 1)) for t in times]


# ------------------------------------------------------------------------------------------ fits
@pytest.mark.parametrize("p", [0.9, 0.5, 1.0, 0.0])
def test_amdahl_fit_recovers_p_exactly(p):
    res = scaling.analyse(THREADS, amdahl_times(p, THREADS), "strong")
    fit = res["fit"]
    assert fit["model"] == "amdahl" and fit["p"] == pytest.approx(p, abs=1e-12)
    assert fit["clamped"] is None and fit["rms_residual"] < 1e-12
    assert res["speedup"] == pytest.approx([1 / ((1 - p) + p / n) for n in THREADS])
    assert res["efficiency"] == pytest.approx([s / n for s, n in zip(res["speedup"], THREADS)])
    # predictions at 2x and 4x the largest thread count
    assert [q["threads"] for q in fit["predicted"]] == [32, 64]
    for q in fit["predicted"]:
        assert q["speedup"] == pytest.approx(1 / ((1 - p) + p / q["threads"]))


@pytest.mark.parametrize("p", [0.9, 0.5])
def test_amdahl_fit_with_noise(p):
    fit = scaling.analyse(THREADS, noisy(amdahl_times(p, THREADS, t1=0.01), 0.01), "strong")["fit"]
    assert fit["p"] == pytest.approx(p, abs=0.02)


def test_amdahl_fit_clamps_and_says_so():
    slower = [1.0, 1.3, 1.6]                          # more threads, slower: p < 0
    fit = scaling.fit_amdahl([1, 2, 4], scaling.speedups([1, 2, 4], slower)[0])
    assert fit["p"] == 0.0 and fit["p_unclamped"] < 0 and "clamped to 0" in fit["clamped"]
    superlinear = scaling.fit_amdahl([1, 2, 4], [1.0, 2.5, 5.0])
    assert superlinear["p"] == 1.0 and superlinear["p_unclamped"] > 1 and "clamped to 1" in superlinear["clamped"]
    # noise around p = 1 clamps too
    fit = scaling.analyse(THREADS, noisy(amdahl_times(1.0, THREADS), 0.01, seed=3), "strong")["fit"]
    assert fit["p"] <= 1.0 and fit["p"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 1.0])
def test_gustafson_fit_recovers_s(s):
    res = scaling.analyse(THREADS, gustafson_times(s, THREADS), "weak")
    fit = res["fit"]
    assert fit["model"] == "gustafson" and fit["s"] == pytest.approx(s, abs=1e-12) and fit["clamped"] is None
    assert res["speedup"] == pytest.approx([n - s * (n - 1) for n in THREADS])
    assert [q["speedup"] for q in fit["predicted"]] == pytest.approx([32 - s * 31, 64 - s * 63])
    noisy_fit = scaling.analyse(THREADS, noisy(gustafson_times(s, THREADS), 0.01, seed=1), "weak")["fit"]
    assert noisy_fit["s"] == pytest.approx(s, abs=0.03)


def test_gustafson_clamps():
    fit = scaling.fit_gustafson([1, 2, 4], [1.0, 2.2, 4.5])  # better than ideal: s < 0
    assert fit["s"] == 0.0 and "clamped to 0" in fit["clamped"]


def test_predict_and_model_curves():
    assert scaling.amdahl_speedup(0.5, 2) == pytest.approx(4 / 3)
    assert scaling.gustafson_speedup(0.25, 5) == pytest.approx(4.0)
    assert scaling.predict({"model": "amdahl", "p": 1.0}, [1, 8]) == pytest.approx([1, 8])


@pytest.mark.parametrize("threads,seconds,needle", [
    ([2, 4], [1.0, 0.5], "must include 1"),
    ([1], [1.0], "at least one more"),
    ([1, 2, 2], [1.0, 0.5, 0.5], "distinct"),
    ([1, 0], [1.0, 0.5], "between 1 and"),
    ([1, 2], [1.0, 0.0], "finite and positive"),
    ([1, 2], [1.0, -0.5], "finite and positive"),
    ([1, 2], [1.0, float("nan")], "finite and positive"),
    ([1, 2], [1.0], "one value per thread count"),
])
def test_bad_inputs_raise(threads, seconds, needle):
    with pytest.raises(ValueError, match=needle):
        scaling.analyse(threads, seconds, "strong")


def test_bad_mode_and_thread_types():
    with pytest.raises(ValueError, match="mode must be one of strong, weak"):
        scaling.speedups([1, 2], [1.0, 0.5], "medium")
    with pytest.raises(TypeError):
        scaling.check_thread_counts([1, 2.5])


def test_unsorted_thread_counts_keep_their_order():
    s, _ = scaling.speedups([4, 1, 2], [0.25, 1.0, 0.5])
    assert list(s) == pytest.approx([4.0, 1.0, 2.0])


# ------------------------------------------------------------------------------------- workloads
def test_parse_workload_forms():
    w = scaling.parse_workload('mb4ic256ih14oc256oh14kh3ph1n"res4b_branch2b"')
    assert w.kind == "conv" and w.batch == 4 and w.dims.C == 256 and w.dims.pad_h == 1 and w.dims.name == "res4b_branch2b"
    w = scaling.parse_workload("res4b_branch2b")
    assert w.kind == "conv" and w.batch == 1 and (w.dims.C, w.dims.K, w.dims.H, w.dims.R) == (256, 256, 14, 3)
    assert scaling.parse_workload("ic3ih8oc16kh3ph1").batch == 1            # no mb: minibatch 1
    w = scaling.parse_workload("lstm:5,8,32,64")
    assert w.kind == "lstm" and w.dims == (5, 8, 32, 64) and w.batch == 8
    w = scaling.parse_workload("gemm:64,32,16")
    assert w.kind == "gemm" and w.dims == (64, 32, 16) and w.batch == 64
    w = scaling.parse_workload("train:digits")
    assert w.kind == "train" and w.batch == scaling.TRAIN_BATCH == 64


@pytest.mark.parametrize("text,needle", [
    ("", "unknown workload"),
    ("resnet", "unknown workload"),
    ("res9z_branch2b", "unknown workload"),
    ("gemm:64,64", "expected 3 positive integers M,N,K"),
    ("gemm:64,0,64", "expected 3 positive integers"),
    ("gemm:a,b,c", "expected 3 positive integers"),
    ("lstm:1,2,3", "expected 4 positive integers T,N,C,K"),
    ("train:imagenet", "train:digits"),
    ("fft:64", "unknown workload"),
    ("mb4ic64xx", "cannot parse"),
])
def test_parse_workload_errors(text, needle):
    with pytest.raises(ValueError, match=needle) as info:
        scaling.parse_workload(text)
    if needle in ("unknown workload", "cannot parse"):
        assert "gemm:M,N,K" in str(info.value)     # the message lists the accepted forms


def test_weak_scaling_grows_the_batch_dimension():
    conv = scaling.parse_workload("mb2ic16ih8oc16kh3ph1")
    assert conv.scaled(4).batch == 8 and conv.scaled(4).dims.C == 16 and conv.batch == 2
    assert "mb8ic16" in conv.scaled(4).describe()
    assert scaling.parse_workload("lstm:5,8,32,64").scaled(3).dims == (5, 24, 32, 64)
    assert scaling.parse_workload("gemm:64,32,16").scaled(2).dims == (128, 32, 16)
    assert scaling.parse_workload("train:digits").scaled(2).dims == (128,)


def test_measure_threads_weak_problems():
    points = scaling.measure_threads(scaling.parse_workload("gemm:16,16,16"), [1, 2], "weak", repeats=1, warmup=0)
    assert [p["problem"] for p in points] == ["gemm M=16 N=16 K=16", "gemm M=32 N=16 K=16"]
    assert all(p["seconds"]["median_s"] > 0 for p in points)


@pytest.mark.parametrize("text", ["ic16ih6oc16kh3ph1", "lstm:2,2,16,16", "train:digits"])
def test_small_steps_run(text):
    step = scaling.make_step(scaling.parse_workload(text), 1)
    step()
    step()


def test_thread_defaults_and_core_warnings():
    assert scaling.default_thread_counts(6) == [1, 2, 4, 6]
    assert scaling.default_thread_counts(1) == [1]
    assert scaling.default_thread_counts(8) == [1, 2, 4, 8]
    assert scaling.core_warnings([1, 2], cores=2) == []
    (w,) = scaling.core_warnings([1, 2, 3], cores=2)
    assert w.startswith("3 threads exceed the 2 cores available")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_threads_json():
    res = run("scale", "threads", "gemm:64,64,64", "--threads", "1,2", "--repeats", "2", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("workload", "mode", "cores", "timed_region", "points", "fit", "warnings"):
        assert key in data
    assert data["mode"] == "strong" and [p["threads"] for p in data["points"]] == [1, 2]
    for p in data["points"]:
        assert set(p) >= {"threads", "problem", "seconds", "speedup", "efficiency"}
    assert data["points"][0]["speedup"] == 1.0
    assert data["fit"]["model"] == "amdahl" and 0 <= data["fit"]["p"] <= 1
    assert [q["threads"] for q in data["fit"]["predicted"]] == [4, 8]


def test_cli_weak_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "scaling.png"
    res = run("scale", "threads", "gemm:32,32,32", "--threads", "1,2", "--mode", "weak", "--repeats", "1",
              "--plot", str(png))
    assert res.returncode == 0, res.stderr
    assert "Gustafson fit" in res.stdout and "M=64" in res.stdout and "plot saved to" in res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_warns_above_the_cores():
    cores = scaling.available_cores()
    many = min(64, cores * 4)
    res = run("scale", "threads", "gemm:16,16,16", "--threads", f"1,{many}", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    text = f"{many} threads exceed the {cores} cores available"
    assert text in res.stderr and "warning:" in res.stderr
    assert any(text in w for w in json.loads(res.stdout)["warnings"])


@pytest.mark.parametrize("args,needle", [
    (("gemm:8,8,8", "--threads", "2,4"), "must include 1"),
    (("gemm:8,8,8", "--threads", "1"), "at least one more"),
    (("gemm:8,8,8", "--threads", "1,x"), "'--threads': must be a comma list of integers"),
    (("gemm:8,8,8", "--threads", "1,2000"), "between 1 and 1024"),
    (("gemm:8,8,8", "--mode", "medium"), "'--mode': must be one of strong, weak"),
    (("gemm:8,8", "--threads", "1,2"), "expected 3 positive integers"),
    (("nosuch", "--threads", "1,2"), "unknown workload 'nosuch'"),
    (("gemm:8,8,8", "--repeats", "0"), "'--repeats'"),
    (("gemm:8,8,8", "--threads", "1,2", "--plot", "/nonexistent-dir/p.png"), "does not exist"),
])
def test_cli_bad_options_exit_2(args, needle):
    assert_one_line_error(run("scale", "threads", *args), 2, needle)


def test_cli_group_without_command_shows_help():
    res = run("scale")
    assert res.returncode == 2 and "threads" in res.stdout + res.stderr


def test_conv_step_times_direct_convolution(monkeypatch):
    """TIMED_REGION says direct: the conv default 'auto' would pick Winograd for 3x3 layers."""
    from dlcpu import conv

    seen = []
    real = conv.conv2d

    def spy(*args, **kw):
        seen.append(kw.get("algorithm"))
        return real(*args, **kw)

    monkeypatch.setattr(conv, "conv2d", spy)
    step = scaling.make_step(scaling.parse_workload("res4b_branch2b"), 1)
    step()
    assert seen and set(seen) == {"direct"}
    assert "direct" in scaling.TIMED_REGION["conv"]


@pytest.mark.parametrize("text", ["gemm:100000,100000,100000", "lstm:50,64,100000,100000"])
def test_impossible_workload_is_refused_before_allocating(text):
    with pytest.raises(ValueError, match="would need .* more than this machine"):
        scaling.thread_scaling(text, [1, 2])
