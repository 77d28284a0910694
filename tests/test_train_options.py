"""Training options: the loss kind (Taylor / soft-margin cross-entropies), the RNN's cell and
its activation implementation, through dlcpu.train, dlcpu.nn and `dlcpu train`."""
import inspect
import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

import dlcpu.rnn
from dlcpu import nn, train

#: dlcpu.rnn's forwards take activation_impl (tests that run 'fast'/'ktanh' need it)
HAVE_ACTIVATION_IMPL = "activation_impl" in inspect.signature(dlcpu.rnn.lstm_forward).parameters
needs_activation_impl = pytest.mark.skipif(not HAVE_ACTIVATION_IMPL,
                                           reason="dlcpu.rnn's forwards do not take activation_impl yet")



def assert_bad_option(res, *needles):
    """Exit 2 with one 'error:' line on stderr naming every needle, nothing on stdout."""
    assert_one_line_error(res, 2, *needles)


@pytest.fixture(scope="module")
def digits():
    return train.load_digits_split(0)


# ------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize(("args", "needles"), [
    (["digits", "--loss", "taylor:3"], ["'--loss'", "order must be even, got 3", "real root"]),
    (["digits", "--loss", "foo"], ["'--loss'", "unknown loss kind 'foo'", "taylor:<n>"]),
    (["digits-rnn", "--loss", "sm-taylor:4:-1"], ["'--loss'", "margin must be a finite number >= 0, got -1.0"]),
    (["digits", "--loss-gradient", "finite"], ["'--loss-gradient'", "must be exact or softmax, got 'finite'"]),
    (["digits-rnn", "--activation-impl", "bogus"], ["'--activation-impl'", "must be exact, fast or ktanh, got 'bogus'"]),
    (["digits-rnn", "--cell", "rnn"], ["'--cell'", "must be lstm or gru, got 'rnn'"]),
    (["digits", "--activation-impl", "fast"], ["No such option: --activation-impl"]),
    (["digits", "--cell", "gru"], ["No such option: --cell"]),
])
def test_cli_bad_options(args, needles):
    assert_bad_option(run("train", *args, "--epochs", "1"), *needles)


def test_cli_json_carries_the_options(tmp_path):
    out = str(tmp_path / "gru.npz")
    res = run("train", "digits-rnn", "--epochs", "1", "--threads", "2", "--cell", "gru", "--loss", "taylor:2",
              "--loss-gradient", "softmax", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["loss"], data["loss_gradient"], data["cell"], data["activation_impl"]) == (
        "taylor:2", "softmax", "gru", "exact")
    assert "GRU" in data["model"] and len(data["history"]) == 1
    assert isinstance(nn.load(out).modules[0], nn.GRU)
    # fine-tuning keeps the file's cell; asking for another one is a bad --cell
    assert_bad_option(run("train", "digits-rnn", "--epochs", "1", "--from", out, "--cell", "lstm"),
                      "'--cell'", "holds a GRU model, not cell='lstm'")

    res = run("train", "digits", "--epochs", "1", "--threads", "2", "--loss", " SM-Softmax:0.30", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["loss"], data["loss_gradient"], data["cell"], data["activation_impl"]) == (
        "sm-softmax:0.3", "exact", None, None)


@needs_activation_impl
def test_cli_activation_impl_json():
    res = run("train", "digits-rnn", "--epochs", "1", "--threads", "2", "--activation-impl", "fast", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["cell"], data["activation_impl"]) == ("lstm", "fast")
    assert "activation_impl=fast" in data["sparsity"]["layers"][0]["layer"]


# ------------------------------------------------------------------------ train_digits
@pytest.mark.parametrize("loss", ["taylor:4", "sm-taylor:4:0.4"])
def test_taylor_losses_train_the_cnn(digits, loss):
    res = train.train_digits(epochs=2, data=digits, loss=loss)
    assert res.test_accuracy > 0.5, [s.test_accuracy for s in res.epochs]
    assert (res.loss, res.loss_gradient, res.cell, res.activation_impl) == (loss, "exact", None, None)


def test_softmax_style_gradient_reaches_training(digits):
    """The softmax-style gradient learns at first, then pushes wrong classes past f_n's minimum
    (train.py's docstring: it is for study); here only that the option reaches the steps."""
    res = train.train_digits(epochs=1, data=digits, loss="taylor:2", loss_gradient="softmax")
    assert res.loss_gradient == "softmax" and res.epochs[0].train_accuracy > 0.2


def test_gru_digits_rnn_trains_and_saves_its_cell(digits, tmp_path):
    out = str(tmp_path / "gru.npz")
    res = train.train_digits(epochs=1, lr=0.1, data=digits, model="rnn", cell="gru", out=out)
    assert res.test_accuracy > 0.3  # chance is 0.1
    assert (res.cell, res.activation_impl) == ("gru", "exact")
    saved = nn.load(out)
    assert isinstance(saved.modules[0], nn.GRU)
    assert "activation_impl" not in saved.modules[0].config()["args"]  # the default is not written
    with pytest.raises(ValueError, match="holds a GRU model, not cell='lstm'"):
        train.train_digits(epochs=1, data=digits, model="rnn", init_from=out, cell="lstm")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"loss": "taylor:5"}, "train: loss kind 'taylor:5': the order must be even"),
    ({"loss": "bogus"}, "train: unknown loss kind 'bogus'"),
    ({"loss_gradient": "infinite"}, "train: gradient must be 'exact'"),
    ({"cell": "gru"}, "train: cell='gru' applies to the digits RNN"),
    ({"activation_impl": "ktanh"}, "train: activation_impl='ktanh' applies to the digits RNN"),
    ({"model": "rnn", "cell": "rnn"}, "train: cell must be 'lstm' or 'gru', got 'rnn'"),
    ({"model": "rnn", "activation_impl": "slow"}, "train: activation_impl must be one of 'exact', 'fast', 'ktanh'"),
])
def test_train_digits_refuses_bad_options_before_training(kwargs, message, tmp_path):
    steps = []
    with pytest.raises(ValueError, match=message):
        train.train_digits(epochs=1, data="not loaded", on_step=lambda *a: steps.append(a), **kwargs)
    assert steps == []


# ------------------------------------------------------------------------ the recurrent layers
@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_activation_impl_is_checked(layer):
    with pytest.raises(ValueError, match=f"{layer.__name__}: activation_impl must be one of 'exact', 'fast', 'ktanh', "
                                         "got 'bogus'"):
        layer(4, 8, activation_impl="bogus")
    m = layer(4, 8)
    assert m.activation_impl == "exact" and "activation_impl" not in m.config()["args"]
    with pytest.raises(ValueError, match="activation_impl must be"):
        m.activation_impl = "tanh"
    m.activation_impl = "ktanh"
    assert m.config()["args"]["activation_impl"] == "ktanh" and "activation_impl=ktanh" in m.describe()
    m.activation_impl = "exact"
    assert "activation_impl" not in m.config()["args"]
    assert nn.RNN(4, 8, nonlinearity="relu", activation_impl="fast").activation_impl == "fast"  # accepted, no effect


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_activation_impl_survives_save_and_load(cell, tmp_path):
    model = nn.digits_rnn(hidden=16, cell=cell, activation_impl="ktanh", seed=3)
    path = str(tmp_path / "m.npz")
    nn.save(model, path)
    back = nn.load(path)
    assert type(back.modules[0]) is type(model.modules[0]) and back.modules[0].activation_impl == "ktanh"
    assert back.config() == model.config()
    for a, b in zip(back.parameters(), model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_digits_rnn_refuses_other_cells():
    with pytest.raises(ValueError, match="digits_rnn: cell must be 'lstm' or 'gru', got 'rnn'"):
        nn.digits_rnn(cell="rnn")
    with pytest.raises(ValueError, match="activation_impl must be"):
        nn.digits_rnn(activation_impl="approx")


@needs_activation_impl
@needs_activation_impl
@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("impl", ["fast", "ktanh"])
def test_approximate_activations_run_forward_and_backward(layer, impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)
    exact, approx = layer(8, 16, seed=1), layer(8, 16, seed=1, activation_impl=impl)
    y0, y1 = exact(x), approx(x)
    assert np.abs(y1 - y0).max() < 0.05
    dy = rng.standard_normal(y1.shape).astype(np.float32)
    dx0, dx1 = exact.backward(dy), approx.backward(dy)
    assert np.isfinite(dx1).all() and np.abs(dx1 - dx0).max() < 0.1 * max(1.0, np.abs(dx0).max())
    if impl == "ktanh":
        assert not np.array_equal(y0, y1)   # the option reaches the kernels


@needs_activation_impl
def test_train_with_ktanh_and_fine_tune_under_another_impl(digits, tmp_path):
    out = str(tmp_path / "k.npz")
    res = train.train_digits(epochs=1, lr=0.1, data=digits, model="rnn", activation_impl="ktanh", out=out)
    assert res.activation_impl == "ktanh" and res.test_accuracy > 0.3
    assert nn.load(out).modules[0].activation_impl == "ktanh"
    kept = train.train_digits(epochs=1, lr=0.05, data=digits, model="rnn", init_from=out)
    assert kept.activation_impl == "ktanh"
    moved = train.train_digits(epochs=1, lr=0.05, data=digits, model="rnn", init_from=out, activation_impl="exact")
    assert moved.activation_impl == "exact" and moved.model.modules[0].activation_impl == "exact"
