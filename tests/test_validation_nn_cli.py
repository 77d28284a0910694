"""Input validation of dlcpu.nn, the benchmark harness and the CLI (design.md section 8):
absurd sizes, non-finite values, wrong dtypes and deeply nested files are refused up front
with a ValueError/TypeError naming the function or layer, and by the CLI with one line and
exit code 2 (a bad option value)."""
import json
import re

import numpy as np
import pytest
from test_cli import assert_one_line_error, run  # the CLI runner and the one-line error rule

from dlcpu import _config, benchmarks, cpu, nn, train, workloads

HUGE = 10**7  # Linear(HUGE, HUGE) needs 1.6 PB: refused on any machine


# ---------------------------------------------------------------- 1. bench peak --seconds inf
@pytest.mark.parametrize("seconds", ["inf", "nan", "61", "1e300"])
def test_bench_peak_refuses_unbounded_seconds(seconds):
    assert_one_line_error(run("bench", "peak", "--seconds", seconds, "--threads", "1", timeout=60), 2, "'--seconds'")


@pytest.mark.parametrize("seconds,exc,match", [
    (float("inf"), ValueError, "measure_peak: seconds must be between 0.01 and 60.0, got inf"),
    (float("nan"), ValueError, "measure_peak: seconds must be between 0.01 and 60.0, got nan"),
    (1e9, ValueError, "measure_peak: seconds must be between"),
    ("1", TypeError, "measure_peak: seconds must be a number"),
])
def test_measure_peak_refuses_non_finite_or_absurd_seconds(seconds, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        benchmarks.measure_peak(1, seconds=seconds)


# ------------------------------------------------- 2. bench conv: sizes checked before allocating
@pytest.mark.parametrize("args,needle", [
    (("--layer", "mb1ic16ih99999999oc16kh3"), "'--layer': bench conv, layer layer"),
    (("--layer", "mb1ic16ih8oc16kh3ph99999999999"), "'--layer': bench conv, layer layer"),
    (("--layer", "mb1ic16ih8oc16kh3", "--batch", "100000000000"), "'--batch': bench conv, layer layer"),
    (("--layers", "res2a_branch2a", "--batch", "1000000000"), "'--batch': bench conv, layer res2a_branch2a"),
], ids=["ih", "ph", "batch", "table-batch"])
def test_bench_conv_refuses_absurd_layers_before_allocating(args, needle):
    res = run("bench", "conv", *args, "--threads", "1", "--repeats", "1", timeout=60)
    assert_one_line_error(res, 2, needle)
    assert "GiB, more than this machine's" in res.stderr
    assert "Unable to allocate" not in res.stderr and "array is too big" not in res.stderr


def test_bench_conv_layer_checks_the_problem_before_allocating():
    layer = workloads.parse_conv_descriptor('mb1ic16ih8oc16kh3ph99999999999n"wide"')
    with pytest.raises(ValueError, match=r"bench conv, layer wide \(.*\): conv2d: .* would need .* GiB"):
        benchmarks.bench_conv_layer(layer, 1, 1, 100.0)
    layer = workloads.parse_conv_descriptor('ic16ih8oc16kh3n"small"')
    with pytest.raises(ValueError, match=r"bench conv, layer small .* would need .* GiB"):
        benchmarks.conv_layer_shape(layer, 10**11)
    assert benchmarks.conv_layer_shape(layer, 2).N == 2


# ------------------------------------------ 3. parameter sizes checked in the layer constructors
@pytest.mark.parametrize("make,match", [
    (lambda: nn.Linear(HUGE, HUGE), (r"Linear: the parameters of Linear\(10000000->10000000\) \(weight "
                                     r"\(10000000, 10000000\)\) would need .* GiB, more than this machine's")),
    (lambda: nn.Conv2d(10**5, 10**5, 100), r"Conv2d: the parameters of Conv2d\(100000->100000.* would need"),
    (lambda: nn.BatchNorm2d(10**13), r"BatchNorm2d: the parameters of BatchNorm2d\(10000000000000\) would need"),
    (lambda: nn.LSTM(HUGE, HUGE), r"LSTM: the parameters of LSTM\(10000000->10000000.* would need"),
    (lambda: nn.GRU(8, 10**6, num_layers=10**12), r"GRU: the parameters of GRU\(8->1000000, layers=1000000000000\) would need"),
    (lambda: nn.RNN(4, 10**6, bidirectional=True, num_layers=10**4), r"RNN: the parameters of RNN.* would need"),
], ids=["Linear", "Conv2d", "BatchNorm2d", "LSTM", "GRU", "RNN"])
def test_constructors_refuse_parameters_that_cannot_fit(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _model_file(tmp_path, config, name="m.npz"):
    path = str(tmp_path / name)
    np.savez(path, __format_version__=np.int64(nn.FORMAT_VERSION), __config__=np.array(config))
    return path


def test_load_refuses_a_small_file_with_huge_parameters(tmp_path):
    path = _model_file(tmp_path, json.dumps({"type": "Linear", "args": {"in_features": HUGE, "out_features": HUGE}}))
    with pytest.raises(ValueError, match=re.escape(path) + r": model configuration: cannot build Linear .* would need"):
        nn.load(path)


def test_load_turns_memory_error_into_value_error(tmp_path, monkeypatch):
    path = _model_file(tmp_path, json.dumps({"type": "Linear", "args": {"in_features": 3, "out_features": 2}}))

    def out_of_memory(**args):
        raise MemoryError("Unable to allocate 26.8 GiB")

    monkeypatch.setitem(nn.module._REGISTRY, "Linear", out_of_memory)
    with pytest.raises(ValueError, match=re.escape(path) + r": the model's parameters do not fit in memory"):
        nn.load(path)


# ------------------------------------------------------------------- 4. deeply nested configs
def _nested_sequentials(depth):
    config = {"type": "ReLU", "args": {}}
    for _ in range(depth):
        config = {"type": "Sequential", "args": {"modules": [config]}}
    return config


def test_load_refuses_deeply_nested_json(tmp_path):
    path = _model_file(tmp_path, "[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=re.escape(path) + ": model configuration is nested too deeply"):
        nn.load(path)


def _nested_text(depth):
    return '{"type": "Sequential", "args": {"modules": [' * depth + '{"type": "ReLU"}' + "]}}" * depth


def test_load_and_build_refuse_deeply_nested_sequentials(tmp_path):
    path = _model_file(tmp_path, _nested_text(5000), "deep.npz")   # too deep for the JSON parser
    with pytest.raises(ValueError, match=re.escape(path) + ": model configuration is nested too deeply"):
        nn.load(path)
    path = _model_file(tmp_path, _nested_text(200), "deeper.npz")  # parses; too deep for build
    with pytest.raises(ValueError, match=re.escape(path) + r": model configuration.*nested more than 100 deep"):
        nn.load(path)
    with pytest.raises(ValueError, match=r"nested more than 100 deep"):
        nn.build(_nested_sequentials(5000))
    assert isinstance(nn.build(_nested_sequentials(20)), nn.Sequential)


# ---------------------------------------------------------------------- 5. float32 only in nn
def _bad_dtypes(shape):
    return [np.zeros(shape, np.float64), np.zeros(shape, np.int64), np.full(shape, "a", dtype=object)]


@pytest.mark.parametrize("i", range(3), ids=["float64", "int64", "object"])
def test_linear_refuses_non_float32(i):
    lin = nn.Linear(4, 3)
    with pytest.raises(TypeError, match=r"Linear\(4->3\): x must be float32, got"):
        lin(_bad_dtypes((2, 4))[i])
    lin(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"Linear\(4->3\): dy must be float32, got"):
        lin.backward(_bad_dtypes((2, 3))[i])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("i", range(3), ids=["float64", "int64", "object"])
def test_recurrent_layers_refuse_non_float32(cls, i):
    layer = getattr(nn, cls)(3, 4)
    with pytest.raises(TypeError, match=rf"{cls}\(3->4, layers=1\): x must be float32, got"):
        layer(_bad_dtypes((5, 2, 3))[i])
    layer(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match=rf"{cls}\(3->4, layers=1\): dy must be float32, got"):
        layer.backward(_bad_dtypes((5, 2, 4))[i])


def test_last_time_step_refuses_non_float32():
    last = nn.LastTimeStep()
    with pytest.raises(TypeError, match="LastTimeStep: x must be float32"):
        last(np.zeros((5, 2, 3)))
    last(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="LastTimeStep: dy must be float32"):
        last.backward(np.zeros((2, 3)))


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_training_steps_stay_float32(kind):
    data = train.load_digits_split(0)
    model = nn.digits_resnet(8) if kind == "cnn" else nn.digits_rnn(16)
    inputs = train.image_batch if kind == "cnn" else train.row_sequence
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for s in range(2):
        idx = np.arange(16 * s, 16 * (s + 1))
        logits = model(inputs(data.x_train[idx]))
        assert logits.dtype == np.float32
        loss, g = nn.softmax_cross_entropy(logits, data.y_train[idx])
        model.backward(g)
        opt.step()
        opt.zero_grad()
    assert np.isfinite(loss)
    assert train.evaluate(model, data.x_test[:32], data.y_test[:32], inputs=inputs) >= 0


# ------------------------------------------------------------------------ 6. clearer errors
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"lr": "a"}, TypeError, "SGD: lr must be a number, got 'a'"),
    ({"lr": float("nan")}, ValueError, "SGD: lr must be > 0.0 and finite, got nan"),
    ({"lr": float("inf")}, ValueError, "SGD: lr must be > 0.0 and finite, got inf"),
    ({"lr": 0}, ValueError, "SGD: lr must be > 0.0"),
    ({"momentum": -0.1}, ValueError, "SGD: momentum must be >= 0.0 and finite"),
    ({"momentum": float("nan")}, ValueError, "SGD: momentum must be >= 0.0 and finite"),
    ({"weight_decay": float("inf")}, ValueError, "SGD: weight_decay must be >= 0.0 and finite"),
    ({"weight_decay": None}, TypeError, "SGD: weight_decay must be a number"),
], ids=str)
def test_sgd_checks_its_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        nn.SGD(nn.Linear(2, 2).parameters(), **kwargs)


@pytest.mark.parametrize("eps", [float("inf"), float("nan")])
def test_batchnorm_refuses_non_finite_eps(eps):
    with pytest.raises(ValueError, match=re.escape(f"BatchNorm2d: eps must be > 0.0 and finite, got {eps}")):
        nn.BatchNorm2d(4, eps=eps)


def test_softmax_cross_entropy_refuses_non_integer_and_out_of_range_labels():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: labels must be an integer array .* got dtype float64"):
        nn.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"labels must be an integer array .* got dtype object"):
        nn.softmax_cross_entropy(logits, np.array(["a", 1, 2], dtype=object))
    with pytest.raises(TypeError, match=r"logits must be a real-valued array, got dtype <U1"):
        nn.softmax_cross_entropy(np.full((3, 4), "x"), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=re.escape("labels must lie in [0, 4) for logits of shape (3, 4), got labels from -1 to 2")):
        nn.softmax_cross_entropy(logits, np.array([-1, 1, 2]))
    loss, g = nn.softmax_cross_entropy(logits, [0, 1, 3])
    assert np.isclose(loss, np.log(4)) and g.dtype == np.float32


def test_dlcpu_num_threads_is_bounded_by_max_threads(monkeypatch):
    assert _config.MAX_THREADS == cpu.MAX_THREADS
    monkeypatch.setenv("DLCPU_NUM_THREADS", "10000000000")
    with pytest.raises(ValueError, match=re.escape("DLCPU_NUM_THREADS=10000000000 must be between 1 and 1024")):
        cpu.resolve_threads()
    monkeypatch.setenv("DLCPU_NUM_THREADS", "1024")
    assert _config.env_num_threads() == 1024


# ------------------------------------------------------------------------- 7. CLI --seed, --out
@pytest.mark.parametrize("args", [
    ("train", "digits", "--seed", "-1"),
    ("train", "digits", "--seed", "99999999999999999999"),
    ("train", "digits", "--seed", str(2**32)),
    ("train", "digits-rnn", "--seed", "-1"),
], ids=" ".join)
def test_train_seed_out_of_range_is_a_bad_option(args):
    assert_one_line_error(run(*args, "--epochs", "1", timeout=60), 2, "'--seed'")


@pytest.mark.parametrize("model", ["digits", "digits-rnn"])
@pytest.mark.parametrize("out", ["", "  "], ids=["empty", "blank"])
def test_train_refuses_an_empty_out(model, out):
    assert_one_line_error(run("train", model, "--out", out, "--epochs", "1", timeout=60), 2,
                          "'--out': must be a file name, got an empty string")


def test_check_writable_refuses_an_empty_path():
    with pytest.raises(ValueError, match="the file name is empty"):
        nn.check_writable("")
