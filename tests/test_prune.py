"""Magnitude pruning (dlcpu.nn.prune): exact sparsity per layer and global, the blocked Conv2d
padding never counted, masks kept through SGD, pruned fine-tuning on digits, `dlcpu train
--prune/--from`, and bad inputs."""
import json
import math

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

from dlcpu import nn, train
from dlcpu.layout import to_blocked, unblock_weights


def _model():
    """Every kind of prunable weight, with blocked layers whose channels are not multiples of 16."""
    return nn.Sequential(nn.Conv2d(3, 17, 3, padding=1, seed=1), nn.BatchNorm2d(17, relu=True),
                         nn.Conv2d(17, 3, 1, seed=2), nn.GlobalAvgPool(), nn.Linear(3, 5, seed=3))


def _logical(model):
    """{name: logical weight array} of the prunable weights, read independently of prune.py."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") or ".weight_" in name or name.startswith("weight_"):
            layer = _owner(model, name)
            if isinstance(layer, nn.Conv2d):
                out[name] = unblock_weights(layer.weight_b)
            elif isinstance(layer, (nn.Linear, nn.LSTM, nn.GRU, nn.RNN)):
                out[name] = p.data.copy()
    return out


def _owner(model, name):
    m = model
    for part in name.split(".")[:-1]:
        m = m.children()[int(part)]
    return m


def test_layer_scope_prunes_exactly_round_sparsity_n_per_tensor():
    model = _model()
    before = _logical(model)
    report = nn.prune(model, 0.6)
    after = _logical(model)
    assert [r.name for r in report] == ["0.weight", "2.weight", "4.weight"] == list(after)
    for r in report:
        w0, w = before[r.name], after[r.name]
        n = w0.size
        k = round(0.6 * n)
        assert r.size == n and r.shape == w0.shape and r.masked
        assert r.zeros == k == n - np.count_nonzero(w)
        assert r.sparsity == k / n
        # the pruned ones are the smallest |w|, the kept ones unchanged
        kept = w != 0
        assert np.array_equal(w[kept], w0[kept])
        assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min()


def test_global_scope_uses_one_threshold():
    model = _model()
    before = _logical(model)
    report = nn.prune(model, 0.5, scope="global")
    after = _logical(model)
    total = sum(w.size for w in before.values())
    assert sum(r.zeros for r in report) == round(0.5 * total)
    assert nn.total_sparsity(report) == round(0.5 * total) / total
    pruned = np.concatenate([np.abs(before[k][after[k] == 0]) for k in before])
    kept = np.concatenate([np.abs(before[k][after[k] != 0]) for k in before])
    assert pruned.max() <= kept.min()
    assert len({r.sparsity for r in report}) > 1  # layers differ, unlike the layer scope


@pytest.mark.parametrize("cin,cout", [(17, 3), (3, 17), (1, 16), (33, 15)])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_conv_padding_is_never_counted_nor_ranked(cin, cout, scope):
    conv = nn.Conv2d(cin, cout, 3, seed=5)
    w0 = unblock_weights(conv.weight_b)
    n = w0.size
    assert conv.weight.data.size > n  # the stored layout is padded
    (r,) = nn.prune(conv, 0.3, scope)
    assert r.size == n == cout * cin * 9 and r.shape == (cout, cin, 3, 3)
    assert r.zeros == round(0.3 * n)
    w = unblock_weights(conv.weight_b)
    assert n - np.count_nonzero(w) == r.zeros
    # the stored array's zeros are the logical zeros plus every padded entry
    padded = conv.weight.data.size - n
    assert conv.weight.data.size - np.count_nonzero(conv.weight.data) == r.zeros + padded
    assert conv.weight.mask.shape == conv.weight.data.shape and conv.weight.mask.sum() == n - r.zeros


def test_ties_are_broken_by_position_deterministically():
    lin = nn.Linear(4, 5)
    lin.weight.data[...] = 1.0
    lin.weight.data[0, 0] = 0.5
    nn.prune(lin, 0.25)  # 5 of 20: the 0.5, then the first four 1.0s
    z = lin.weight.data.ravel() == 0
    assert z.sum() == 5 and z[:5].all()


def test_sparsity_zero_prunes_nothing_and_removes_masks():
    model = _model()
    nn.prune(model, 0.5)
    report = nn.prune(model, 0.0)
    assert all(not r.masked for r in report) and all(p.mask is None for p in model.parameters())
    assert [r.zeros for r in report] == [r.zeros for r in nn.sparsity_report(model)]


def test_recurrent_weights_are_pruned_biases_are_not():
    model = nn.digits_rnn(hidden=16)
    report = nn.prune(model, 0.5)
    assert [r.name for r in report] == ["0.weight_ih_l0", "0.weight_hh_l0", "2.weight"]
    assert all(r.zeros == round(0.5 * r.size) for r in report)
    for name, p in model.named_parameters():
        if "bias" in name:
            assert p.mask is None


def _step_many(model, opt, inputs, labels, steps=5):
    for _ in range(steps):
        logits = model(inputs)
        _, g = nn.softmax_cross_entropy(logits, labels)
        model.backward(g)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_survive_sgd_with_momentum_and_weight_decay(scope):
    rng = np.random.default_rng(0)
    model = _model()
    x = to_blocked(rng.standard_normal((8, 3, 6, 6)).astype(np.float32))
    y = rng.integers(0, 5, 8)
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    _step_many(model, opt, x, y, 2)       # a velocity from before the pruning, too
    report = nn.prune(model, 0.7, scope)
    zeros = {k: w == 0 for k, w in _logical(model).items()}
    before = {k: w.copy() for k, w in _logical(model).items()}
    _step_many(model, opt, x, y, 6)
    after = _logical(model)
    for r in report:
        assert np.all(after[r.name][zeros[r.name]] == 0)
        assert not np.array_equal(after[r.name][~zeros[r.name]], before[r.name][~zeros[r.name]])  # the rest train
    assert [r.zeros for r in nn.sparsity_report(model)] == [r.zeros for r in report]
    # padded weight entries stay zero as well
    for layer in (model.modules[0], model.modules[2]):
        assert np.count_nonzero(layer.weight.data) == np.count_nonzero(unblock_weights(layer.weight_b))


def test_unpruned_parameters_have_no_mask():
    model = nn.digits_resnet(8)
    assert all(p.mask is None for p in model.parameters())
    assert all(r.zeros == 0 and not r.masked for r in nn.sparsity_report(model))


def test_report_of_a_loaded_pruned_model(tmp_path):
    model = _model()
    report = nn.prune(model, 0.4)
    path = tmp_path / "m.npz"
    nn.save(model, path)
    loaded = nn.sparsity_report(nn.load(path))
    assert [(r.name, r.size, r.zeros) for r in loaded] == [(r.name, r.size, r.zeros) for r in report]
    assert not any(r.masked for r in loaded)  # masks are not saved
    assert nn.sparsity_report(nn.Sequential(nn.ReLU())) == []


@pytest.mark.parametrize("sparsity", [1.0, -0.1, float("nan"), float("inf"), 1.5])
def test_bad_sparsity_value(sparsity):
    with pytest.raises(ValueError, match=r"prune: sparsity must be >= 0 and < 1"):
        nn.prune(_model(), sparsity)


@pytest.mark.parametrize("sparsity", ["x", None, True, [0.5]])
def test_bad_sparsity_type(sparsity):
    with pytest.raises(TypeError, match="prune: sparsity must be a number"):
        nn.prune(_model(), sparsity)


@pytest.mark.parametrize("scope", ["foo", "", None, 1, "Layer"])
def test_bad_scope(scope):
    with pytest.raises(ValueError, match="prune: scope must be 'layer' or 'global'"):
        nn.prune(_model(), 0.5, scope)


def test_bad_model():
    with pytest.raises(TypeError, match="prune: model must be a dlcpu.nn Module"):
        nn.prune([nn.Linear(2, 2)], 0.5)
    with pytest.raises(TypeError, match="sparsity_report: model must be a dlcpu.nn Module"):
        nn.sparsity_report("model.npz")
    with pytest.raises(ValueError, match="no prunable weights"):
        nn.prune(nn.Sequential(nn.BatchNorm2d(4)), 0.5)


# ------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One kernel thread: these tiny trainings only lose to OpenMP waits on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def data():
    return train.load_digits_split(0)


@pytest.fixture(scope="module")
def dense(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("dense") / "dense.npz"
    res = train.train_digits(epochs=6, data=data, out=str(path))
    assert res.test_accuracy > 0.9
    assert all(r.zeros == 0 for r in res.sparsity)
    return path, res.test_accuracy


def test_prune_and_fine_tune_keeps_accuracy(data, dense):
    path, dense_acc = dense
    res = train.train_digits(epochs=3, lr=0.01, data=data, init_from=str(path), prune=0.75)
    assert res.test_accuracy > 0.9 and res.test_accuracy > dense_acc - 0.05
    assert [r.zeros for r in res.sparsity] == [round(0.75 * r.size) for r in res.sparsity]
    assert all(r.masked for r in res.sparsity)


def test_fine_tune_refuses_the_other_kind_and_non_models(dense, tmp_path):
    path, _ = dense
    with pytest.raises(ValueError, match="holds a digits CNN .*, not a digits RNN"):
        train.train_digits(epochs=1, model="rnn", init_from=str(path))
    with pytest.raises(ValueError, match="does not exist"):
        train.train_digits(epochs=1, init_from=str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable dlcpu model file"):
        train.train_digits(epochs=1, init_from=str(junk))
    other = tmp_path / "other.npz"
    nn.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GlobalAvgPool(), nn.Linear(4, 10)), other)
    with pytest.raises(ValueError, match="does not take 1x8x8 digit images"):
        train.train_digits(epochs=1, init_from=str(other))
    with pytest.raises(ValueError, match="train: sparsity must be >= 0 and < 1"):
        train.train_digits(epochs=1, prune=1.0)


def test_rnn_prune_and_fine_tune(data, tmp_path):
    dense = tmp_path / "rnn.npz"
    train.train_digits(epochs=20, lr=0.1, data=data, model="rnn", out=str(dense))
    res = train.train_digits(epochs=5, lr=0.02, data=data, model="rnn", init_from=str(dense), prune=0.5)
    assert res.test_accuracy > 0.85
    assert [r.zeros for r in res.sparsity] == [round(0.5 * r.size) for r in res.sparsity]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_prune_from_round_trip(tmp_path):
    dense, pruned = str(tmp_path / "dense.npz"), str(tmp_path / "p75.npz")
    res = run("train", "digits", "--epochs", "5", "--threads", "1", "--out", dense, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sparsity"]["total"] == 0.0
    res = run("train", "digits", "--from", dense, "--prune", "0.75", "--epochs", "2", "--lr", "0.01",
              "--threads", "1", "--out", pruned, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["from"] == dense and data["prune"] == 0.75 and data["test_accuracy"] > 0.85
    layers = data["sparsity"]["layers"]
    assert layers[0]["name"] == "0.weight" and layers[-1]["name"] == "5.weight"
    assert all(l["zeros"] == round(0.75 * l["size"]) and l["masked"] for l in layers)
    assert math.isclose(data["sparsity"]["total"], 0.75, abs_tol=1e-3)
    # the saved model keeps the zeros; the table after a plain run
    report = nn.sparsity_report(nn.load(pruned))
    assert [r.zeros for r in report] == [l["zeros"] for l in layers]
    res = run("train", "digits", "--from", pruned, "--prune", "0.75", "--epochs", "1", "--lr", "0.01", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "weight sparsity" in res.stdout and "2.0.weight" in res.stdout and "75.00%" in res.stdout
    assert "fine-tuning" in res.stdout


def test_cli_prune_on_digits_rnn(tmp_path):
    res = run("train", "digits-rnn", "--prune", "0.5", "--epochs", "1", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    layers = json.loads(res.stdout)["sparsity"]["layers"]
    assert [l["name"] for l in layers] == ["0.weight_ih_l0", "0.weight_hh_l0", "2.weight"]
    assert all(l["zeros"] == l["size"] // 2 for l in layers)


def test_cli_global_prune_scope(tmp_path):
    res = run("train", "digits", "--prune", "0.75", "--prune-scope", "global", "--epochs", "1", "--threads", "1",
              "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    layers = out["sparsity"]["layers"]
    assert out["prune_scope"] == "global" and out["sparsity"]["total"] == pytest.approx(0.75, abs=1e-3)
    assert len({round(l["sparsity"], 3) for l in layers}) > 1        # one threshold: layers differ


BAD_PRUNE_OPTIONS = [  # bad option values, exit 2 like every other one (test_cli.BAD_OPTION_VALUES)
    (("train", "digits", "--prune", "0.5", "--prune-scope", "net"), "'--prune-scope': must be 'layer' or 'global'"),
    (("train", "digits", "--prune", "1.0"), "'--prune': sparsity must be >= 0 and < 1"),
    (("train", "digits", "--prune", "-0.1"), "'--prune': sparsity must be >= 0 and < 1"),
    (("train", "digits", "--prune", "nan"), "'--prune': sparsity must be >= 0 and < 1"),
    (("train", "digits", "--prune", "x"), "'--prune'"),
    (("train", "digits-rnn", "--prune", "1"), "'--prune'"),
    (("train", "digits", "--from", "/nonexistent/m.npz"), "'--from': model file /nonexistent/m.npz does not exist"),
    (("train", "digits", "--from", "/tmp"), "'--from': /tmp: not a readable dlcpu model file"),
]


@pytest.mark.parametrize("args,needle", BAD_PRUNE_OPTIONS, ids=[" ".join(a) for a, _ in BAD_PRUNE_OPTIONS])
def test_cli_bad_prune_and_from(args, needle):
    assert_one_line_error(run(*args, "--epochs", "50", timeout=60), 2, needle)


def test_cli_from_a_model_of_the_other_kind(tmp_path):
    path = str(tmp_path / "cnn.npz")
    nn.save(nn.digits_resnet(4), path)
    res = run("train", "digits-rnn", "--from", path, "--epochs", "50", timeout=60)
    assert_one_line_error(res, 2, "holds a digits CNN")
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    assert_one_line_error(run("train", "digits", "--from", str(junk), timeout=60), 2, "not a readable dlcpu model file")
