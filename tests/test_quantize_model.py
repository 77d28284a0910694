"""nn.quantize / dlcpu quantize: a trained digits CNN with int8 or block-ternary convolutions,
saved and loaded, with residual levels switched at run time, and its report."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import max_threads

import dlcpu
from dlcpu import _reference as reference
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


def saved_entries(model, tmp_path):
    """The entries of the file nn.save writes for `model` (to edit into a bad file)."""
    path = tmp_path / "saved.npz"
    nn.save(model, path)
    with np.load(path) as f:
        return dict(f.items())


def logits(model, data):
    with nn.inference_mode():
        return model(training.image_batch(data.x_test[:64]))


@pytest.mark.parametrize("to,kw,loss", [
    ("int8", {}, 0.01), ("ternary", {"block": 16, "residual": 2}, 0.01),
    ("ternary", {"block": 4, "residual": 0, "linear": False}, 0.2),     # the classifier kept fp32
    ("ternary", {"block": 4, "residual": 0}, 0.4),                      # a ternary one too: 78% (of 98.9%)
])
def test_quantized_model_runs_saves_and_loads(trained, tmp_path, to, kw, loss):
    model, _, data, calibration = trained
    before = logits(model, data).copy()
    q = nn.quantize(model, to, calibration, **kw)
    assert np.array_equal(logits(model, data), before)          # the original model is left as it was
    assert q.args["linear"] is kw.get("linear", True)
    acc_fp32 = training.evaluate(model, data.x_test, data.y_test)
    acc_q = training.evaluate(q, data.x_test, data.y_test)
    assert acc_q > acc_fp32 - loss
    path = tmp_path / "q.npz"
    nn.save(q, path)
    loaded = nn.load(path)
    assert isinstance(loaded, nn.Quantized) and np.array_equal(logits(loaded, data), logits(q, data))
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((64, 10), np.float32))


def test_the_classifier_is_quantized_and_saved_as_codes(trained, tmp_path):
    """The Linear classifier runs on matmul's int8 kernel with its calibrated input scale: its
    logits are those of matmul on the saved codes, and the file holds codes, not fp32 weights."""
    model, _, _, calibration = trained
    q = nn.quantize(model, "int8", calibration)
    fc = [m for m in q._walk() if isinstance(m, nn.Linear)]
    assert len(fc) == 1 and fc[0].quant is not None and q.args["linear"] is True
    x = np.ascontiguousarray(np.random.default_rng(1).uniform(0, 2, (5, fc[0].args["in_features"])).astype(np.float32))
    lq = fc[0].quant
    want = dlcpu.matmul(x, dlcpu.gemm.packed_int8_from(np.ascontiguousarray(lq.codes.T), lq.scales),
                        bias=fc[0].bias.data, precision="int8", x_scale=lq.act_scale, x_unsigned=lq.act_unsigned)
    w = lq.codes.astype(np.float64) * lq.scales[:, None]
    assert np.array_equal(fc[0](x), want) and np.abs(w - fc[0].weight.data).max() <= lq.scales.max() / 2 + 1e-7
    path = tmp_path / "q.npz"
    nn.save(q, path)
    with np.load(path) as f:
        assert any(k.endswith("weight_q") and f[k].shape == (10, fc[0].args["in_features"]) and f[k].dtype == np.int8
                   for k in f.files)
        assert not any(k.endswith("weight") and f[k].ndim >= 2 for k in f.files)    # no fp32 weight matrix left
    with pytest.raises(RuntimeError, match="inference only"):
        fc[0].backward(np.ones((5, 10), np.float32))


def test_a_file_from_before_linear_layers_were_quantized_loads(trained, tmp_path):
    """A file written before Linear layers were quantized -- no `linear` in its configuration,
    the classifier's fp32 weight in place of codes -- loads with an fp32 classifier."""
    model, _, data, calibration = trained
    files = saved_entries(nn.quantize(model, "int8", calibration), tmp_path)
    config = json.loads(str(files["__config__"]))
    del config["args"]["linear"]
    files["__config__"] = np.array(json.dumps(config))
    fc = next(m for m in model._walk() if isinstance(m, nn.Linear))
    prefix = next(k for k in files if k.endswith("weight_q") and files[k].ndim == 2)[:-len("weight_q")]
    for name in ("weight_q", "weight_scale", "act_scale", "act_unsigned"):
        del files[prefix + name]
    files[prefix + "weight"] = fc.weight.data
    old = tmp_path / "old.npz"
    np.savez(old, **files)
    loaded = nn.load(old)
    assert loaded.args["linear"] is False
    assert all(m.quant is None for m in loaded._walk() if isinstance(m, nn.Linear))
    assert training.evaluate(loaded, data.x_test, data.y_test) > training.evaluate(model, data.x_test,
                                                                                    data.y_test) - 0.01


def test_models_quantize_by_their_layers(rng):
    """A model of Linear layers alone quantizes (int8 and ternary, calibrated on its inputs);
    one with a recurrent layer is refused, pointing at the dynamic path."""
    mlp = nn.Sequential(nn.Linear(40, 32, seed=1), nn.Tanh(), nn.Linear(32, 8, seed=2))
    batches = [rng.standard_normal((16, 40)).astype(np.float32) for _ in range(3)]
    x = batches[0]
    with nn.inference_mode():
        exact = mlp(x).copy()
        for to, kw in (("int8", {}), ("ternary", {"block": 8, "residual": 2})):
            q = nn.quantize(mlp, to, batches, **kw)
            got = q(x)
            err = np.linalg.norm(got - exact) / np.linalg.norm(exact)
            assert err < (0.03 if to == "int8" else 0.3), (to, err)
            assert all(m.quant is not None for m in q._walk() if isinstance(m, nn.Linear))
    rnn = nn.Sequential(nn.LSTM(8, 16), nn.LastTimeStep(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"recurrent layer.*quantize dynamically.*set_precision\('int8' or"):
        nn.quantize(rnn, "int8", [np.zeros((5, 2, 8), np.float32)])


def test_costs_leave_the_model_as_it_was(trained, tmp_path):
    """quantize_costs runs a forward in eval mode: a loaded model is in training mode, and a
    training-mode forward would fold the probe image's statistics into batch norm's running
    estimates (it did: dlcpu quantize's fp32 accuracy row read 98.33% for a 98.89% model)."""
    _, path, data, _ = trained
    model = nn.load(path)
    assert model.training
    before = model.state()
    costs = nn.quantize_costs(model, training.image_batch(data.x_test[:1]))
    assert model.training and all(m.training for m in model._walk())
    after = model.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    fc = next(m for m in model._walk() if isinstance(m, nn.Linear))
    assert costs[-1] == (*fc.weight.data.shape, 1, 1, 1) and costs[0][-1] == 64     # 8x8 positions


def test_quantized_linear_layers_levels_and_refusals(rng, tmp_path):
    """Levels switch on the Linear layers too; a quantized model refuses set_precision; the
    wrapper's default keeps Linear layers fp32 and says how to quantize them; a ternary block
    one Linear layer cannot take is refused by quantize(), naming the layer."""
    mlp = nn.Sequential(nn.Linear(40, 32, seed=1), nn.Tanh(), nn.Linear(32, 8, seed=2))
    batches = [rng.standard_normal((16, 40)).astype(np.float32) for _ in range(2)]
    q = nn.quantize(mlp, "ternary", batches, block=8, residual=2)
    with nn.inference_mode():
        outs = [q.set_levels(levels)(batches[0]).copy() for levels in (1, 2, 3)]
        exact = mlp(batches[0])
    errors = [np.linalg.norm(o - exact) for o in outs]
    assert errors[0] > errors[1] > errors[2]
    assert q.describe() == "Quantized(ternary, block 8, residual 2)"
    with pytest.raises(ValueError, match="a quantized model runs ternary"):
        q.set_precision("bf16")
    with pytest.raises(ValueError, match=r"no Conv2d \(linear=True quantizes Linear layers\)"):
        nn.Quantized(mlp, "int8")
    kept = nn.Quantized(nn.Sequential(nn.Conv2d(3, 8, 3, seed=1)), "int8")
    assert kept.describe() == "Quantized(int8, fp32 Linear)"
    with pytest.raises(ValueError, match=r"quantize: Linear\(40->32\): .*block=32.*linear=False keeps"):
        nn.quantize(mlp, "ternary", batches, block=32)          # 40 inputs pad to 48
    # a saved Linear layer's codes outside [-127, 127], or an act_unsigned that is not a bool
    files = saved_entries(nn.quantize(mlp, "int8", batches), tmp_path)
    key = next(k for k in files if k.endswith("weight_q"))
    for name, value, match in ((key, np.full_like(files[key], -128), r"\[-127, 127\]"),
                               (key[:-len("weight_q")] + "act_unsigned", np.array(1), "boolean scalar entry")):
        bad = dict(files, **{name: value})
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match=match):
            nn.load(tmp_path / "bad.npz")


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
    files = saved_entries(nn.quantize(model, "int8", calibration), tmp_path)
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
    assert data["rows"][1]["test_accuracy"] > 0.8 and out.exists() and data["linear"] is True
    assert isinstance(dlcpu.nn.load(out), nn.Quantized)
    # --fp32-linear: the classifier's 320 weights stay 4 bytes each, and its multiplications dense
    res = run("quantize", path, "--to", "ternary", "--block", "8", "--residual", "1", "--fp32-linear", "--out",
              str(out), "--json")
    assert res.returncode == 0, res.stderr
    kept = json.loads(res.stdout)
    assert kept["linear"] is False and nn.load(out).args["linear"] is False
    fc = next(m for m in nn.load(path)._walk() if isinstance(m, nn.Linear))
    k, c = fc.weight.data.shape
    for both, conv_only in zip(data["rows"][1:], kept["rows"][1:]):        # dense k*c against one per block of 8
        assert conv_only["multiplications"] - both["multiplications"] == k * c - both["levels"] * k * (c // 8)
        assert conv_only["weight_bytes"] > both["weight_bytes"]


def test_a_quantized_file_is_refused_where_an_fp32_model_is_needed(trained, tmp_path):
    """Fine-tuning and fault campaigns take fp32 models: a quantized file gets a clear error
    (it used to end in Quantized.train's RuntimeError, with a traceback)."""
    model, _, _, calibration = trained
    path = tmp_path / "q.npz"
    nn.save(nn.quantize(model, "int8", calibration), path)
    with pytest.raises(ValueError, match="holds a quantized model"):
        training.load_pretrained(str(path))
    for args in (("faults", "inject", str(path), "--list"), ("train", "digits", "--from", str(path), "--epochs",
                                                               "1", "--out", str(tmp_path / "t.npz"))):
        res = run(*args)
        assert res.returncode in (1, 2) and "holds a quantized model" in res.stderr and "Traceback" not in res.stderr, \
            res.stderr


@pytest.mark.parametrize("args,code,what", [
    (("--to", "fp8"), 2, "'--to'"),
    (("--to", "ternary", "--residual", "-1"), 2, "'--residual'"),
    (("--to", "ternary", "--block", "12"), 1, "does not divide the padded input channels"),
    (("--to", "ternary", "--block", "2"), 1, "multiple of 4"),
    (("--act-bits", "6"), 2, "'--act-bits'"),
    ((), 2, "'--out'"),
])
def test_quantize_cli_bad_options(trained, tmp_path, args, code, what):
    _, path, _, _ = trained
    out = () if args == () else ("--out", str(tmp_path / "x.npz"))
    res = run("quantize", path, *args, *out)
    assert res.returncode == code and what in res.stderr, res.stderr


@pytest.mark.parametrize("to,kw", [("int8", {}), ("ternary", {"block": 16, "residual": 1})])
def test_7bit_activations_quantize_save_and_load(trained, tmp_path, to, kw):
    """act_bits=7: every quantized layer's input in 7-bit codes (scale max|x| / 127 or / 63, as
    ActivationCalibrator.scale_for(7)), the classifier's too.  Accuracy within a point of the
    8-bit model; the width survives save and load; bad widths are refused."""
    model, _, data, calibration = trained
    q8 = nn.quantize(model, to, calibration, **kw)
    q7 = nn.quantize(model, to, calibration, act_bits=7, **kw)
    convs7 = [m.quant for m in q7._walk() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs8 = [m.quant for m in q8._walk() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs7) == 7          # 6 convolutions and the classifier
    assert all(c.act_bits == 7 for c in convs7) and "7-bit activations" in q7.describe()
    for c7, c8 in zip(convs7, convs8):      # half the codes for the same range (to float32 rounding)
        assert c7.act_unsigned == c8.act_unsigned
        assert c7.act_scale / c8.act_scale == pytest.approx(255 / 127 if c7.act_unsigned else 127 / 63, rel=1e-6)
    acc7 = training.evaluate(q7, data.x_test, data.y_test)
    assert acc7 > training.evaluate(q8, data.x_test, data.y_test) - 0.01
    path = tmp_path / "q7.npz"
    nn.save(q7, path)
    loaded = nn.load(path)
    assert loaded.args["act_bits"] == 7 and np.array_equal(logits(loaded, data), logits(q7, data))
    for bad in (6, 8.0, True, "7"):
        with pytest.raises(ValueError, match="act_bits must be 8 or 7"):
            nn.quantize(model, to, calibration, act_bits=bad, **kw)


def test_quantize_cli_7bit_activations(trained, tmp_path):
    _, path, _, _ = trained
    out = tmp_path / "q7.npz"
    res = run("quantize", path, "--to", "int8", "--act-bits", "7", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["act_bits"] == 7 and nn.load(out).args["act_bits"] == 7
    assert data["rows"][1]["test_accuracy"] > data["rows"][0]["test_accuracy"] - 0.02


# ----------------------------------------------------------------- u8 activations between layers
def unfolded(q, block_ends_only=False):
    """A copy of the quantized model `q` whose layers run one by one (no batch norm folded, no
    block end in an epilogue; block_ends_only: only the block ends unfolded): what the folds
    must reproduce to within one code per layer."""
    copy = nn.Quantized(q.args["model"], q.args["to"], q.args["block"], q.args["residual"], linear=q.args["linear"],
                        act_bits=q.args["act_bits"])
    copy.load_state(q.state())
    for m in copy._walk():
        if isinstance(m, nn.Conv2d):
            m.quant.out_scale = m.quant.ends_block = None
            if not block_ends_only:
                m.quant.fold = None
        if isinstance(m, nn.BatchNorm2d) and not block_ends_only:
            m.folded = False
    return copy


def randomize_batch_norms(model, rng):
    for m in model._walk():
        if isinstance(m, nn.BatchNorm2d):
            c = m.C
            m.running_mean[:c] = rng.uniform(-0.3, 0.3, c)
            m.running_var[:c] = rng.uniform(0.5, 2.0, c)
            m.weight.data[:c] = rng.uniform(0.5, 1.5, c)
            m.bias.data[:c] = rng.uniform(-0.3, 0.3, c)


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("to,kw", [("int8", {}), ("ternary", {"block": 16, "residual": 2})])
def test_quantized_blocks_hand_u8_codes_to_each_other(trained, bits, to, kw):
    """In an int8 or ternary digits CNN, bn1 of each block folds into conv1, the shortcut's
    batch norm into its convolution, and each block's end into its last convolution: the blocks
    hand u8 codes to each other (the first block's output is the second's input codes), and the
    model gives the logits and accuracy of the same layers run one by one."""
    model, _, data, calibration = trained
    q = nn.quantize(model, to, calibration, act_bits=bits, **kw)
    blocks = [m for m in q._walk() if isinstance(m, nn.BasicBlock)]
    assert len(blocks) == 2
    for b in blocks:
        assert b.conv1.quant.fold == (b.bn1, b.conv2, ()) and b.bn1.folded and b.bn2.folded
        assert b.conv2.quant.ends_block is not None and b.conv2.quant.out_scale > 0
    sc = blocks[1].shortcut[0].quant
    assert sc.fold[1] == "residual" and sc.out_scale > 0
    seen = []
    handle = blocks[1].register_output_hook(lambda m, y: seen.append(y) or y)
    x = training.image_batch(data.x_test[:64])
    with nn.inference_mode():
        blocks[0].register_output_hook(lambda m, y: seen.append(y) or y)
        q(x)
    handle.remove()
    # a hook on a block sees fp32 values, the codes' (the folds inside it still ran)
    for y, b in zip(seen, blocks):
        scale = np.float32(b.conv2.quant.out_scale)
        codes = y.data / scale
        assert y.precision == "fp32" and np.abs(codes - np.rint(codes)).max() < 1e-3
        assert codes.max() <= (1 << bits) - 1 + 1e-3
    ref = unfolded(q)
    got, want = logits(q, data), logits(ref, data)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02
    assert abs(training.evaluate(q, data.x_test, data.y_test) - training.evaluate(ref, data.x_test, data.y_test)) \
        <= 0.005


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("to,kw,levels", [("int8", {}, None), ("ternary", {"block": 8, "residual": 1}, 1),
                                          ("ternary", {"block": 16, "residual": 1}, 2)])
def test_folded_bottleneck_codes_are_the_layers_codes(rng, monkeypatch, bits, downsample, to, kw, levels):
    """A bottleneck with random batch-norm statistics (a negative gamma for ternary, whose
    alphas take any sign), int8 or ternary on some of its levels: the block's u8 output codes
    equal, within one code (and exactly away from ties), the codes of the float64 block end
    computed from the codes its own layers handed over -- bn3 and the residual folded into
    conv3's epilogue, bn1 / bn2 / the shortcut's batch norm into theirs -- at 1 and all
    threads."""
    from dlcpu.nn.resnet import Bottleneck

    block = Bottleneck(32, 16 if downsample else 8, 2 if downsample else 1, seed=3)
    randomize_batch_norms(block, rng)
    if to == "ternary":
        block.bn3.weight.data[1] = -block.bn3.weight.data[1]
    x = np.maximum(rng.standard_normal((2, 32, 9, 9)), 0).astype(np.float32)
    xb = dlcpu.layout.to_blocked(x)
    q = nn.quantize(block, to, [xb], act_bits=bits, **kw)
    if levels is not None:
        q.set_levels(levels)
    inner = q.inner
    assert inner.conv3.quant.ends_block is not None and inner.bn3.folded
    outs = []
    for threads in ("1", str(max_threads())):
        monkeypatch.setenv("DLCPU_NUM_THREADS", threads)
        with nn.inference_mode():
            outs.append(q.inner(xb))          # the block's own output: u8 codes (q(x) widens them)
    assert np.array_equal(outs[0].data, outs[1].data)
    y = outs[0]
    top = (1 << bits) - 1
    assert y.precision == "int8" and y.scale == (np.float32(inner.conv3.quant.out_scale).item(), 0)
    with nn.inference_mode():
        xq = inner.conv1.quant.input_codes(xb)
        h = inner.bn2(inner.conv2(inner.bn1(inner.conv1(xq))))      # conv2's codes, as the fold reads them
        s = xq
        if inner.downsample:      # the shortcut's codes as the block end makes them (its fold)
            sq = inner.downsample[0].quant
            s = sq.forward(xq, sq._fold_now(in_block_end=True))
        assert h.precision == "int8" and s.precision == "int8"
    k = inner.conv3.args["out_channels"]
    if to == "ternary":
        w = inner.conv3.quant.ternary.to_float32(levels)
    else:
        w = dlcpu.layout.unblock_weights(dlcpu.layout.BlockedTensor(dlcpu.quantized.dequantize(inner.conv3.quant.weights),
                                                                    inner.conv3.quant.weights.shape, "weight"))
    conv = reference.conv2d_forward(h.numpy().astype(np.float64), w.astype(np.float64), None, (1, 1), (0, 0))
    bn = inner.bn3
    inv = bn.weight.data[:k].astype(np.float64) / np.sqrt(bn.running_var[:k].astype(np.float64) + bn.eps)
    v = (conv - bn.running_mean[:k, None, None].astype(np.float64)) * inv[:, None, None] \
        + bn.bias.data[:k, None, None] + s.numpy().astype(np.float64)
    v = np.maximum(v, 0) / y.scale[0]
    want = np.clip(np.rint(v), 0, top)
    got = dlcpu.layout.from_blocked(dlcpu.layout.BlockedTensor(y.data.astype(np.float32), y.shape))
    assert np.abs(got - want).max() <= 1
    away = np.abs(np.abs(v - np.floor(v)) - 0.5) > 1e-3
    assert np.array_equal(got[away], want[away])
    assert (got == 0).any() and got.max() >= top // 2


def test_folds_step_aside_for_hooks_and_negative_gammas(trained):
    """An output hook on a folded batch norm sees its fp32 output (the fold does not apply at
    that call), and so does a block whose batch norm has gamma <= 0 in a channel; the model
    then gives the logits of its layers run one by one."""
    model, _, data, calibration = trained
    q = nn.quantize(model, "int8", calibration)
    ref = unfolded(q)
    block = next(m for m in q._walk() if isinstance(m, nn.BasicBlock))
    seen = []
    with block.bn1.register_output_hook(lambda m, y: seen.append(y.precision) or y), \
            block.bn2.register_output_hook(lambda m, y: seen.append(y.precision) or y):
        with_hooks = logits(q, data).copy()
    assert seen == ["fp32", "fp32"]
    assert np.linalg.norm(with_hooks - logits(ref, data)) / np.linalg.norm(logits(ref, data)) < 0.02
    block.bn1.weight.data[:3] *= 2            # a batch norm changed in place: the folds follow it
    fresh = nn.Quantized(q.args["model"], "int8", linear=True)
    fresh.load_state(q.state())
    assert np.array_equal(logits(q, data), logits(fresh, data))
    block.bn2.weight.data[0] = -block.bn2.weight.data[0]
    ref.load_state(q.state())
    assert block.conv2.quant.block_end(block.conv1) is None
    assert np.linalg.norm(logits(q, data) - logits(unfolded(q), data)) < 0.02 * np.linalg.norm(logits(ref, data))


def test_u8_block_outputs_save_load_and_old_files(trained, tmp_path):
    """The block ends' output scales are saved; a file without them (written before the block
    ends were folded) loads and runs its block ends one by one; a bad scale or u8 codes of
    another scale are refused."""
    model, _, data, calibration = trained
    q = nn.quantize(model, "int8", calibration)
    entries = saved_entries(q, tmp_path)
    scales = [k for k in entries if k.endswith("out_scale")]
    assert len(scales) == 3                       # two block ends and the second block's shortcut
    old = {k: v for k, v in entries.items() if not k.endswith("out_scale")}
    path = tmp_path / "old.npz"
    np.savez(path, **old)
    loaded = nn.load(path)
    assert all(m.quant.out_scale is None for m in loaded._walk() if isinstance(m, nn.Conv2d))
    assert np.array_equal(logits(loaded, data), logits(unfolded(q, block_ends_only=True), data))
    bad = dict(entries)
    bad[scales[0]] = np.array(-1.0, np.float32)
    np.savez(path, **bad)
    with pytest.raises(ValueError, match="out_scale.*finite float scalar > 0"):
        nn.load(path)


def test_codes_of_another_scale_and_models_ending_in_a_block(rng):
    """A max pool that drops a block's largest value hands the next layer codes of the block's
    scale, not of the next layer's calibrated one: the kernels take them as they are.  A model
    that ends in a block gives fp32 (the values of its codes), as unfolded."""
    x = dlcpu.layout.to_blocked(rng.standard_normal((2, 8, 9, 9)).astype(np.float32))
    for model in (nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, seed=1), nn.BatchNorm2d(16, relu=True),
                                nn.BasicBlock(16, 16, seed=2), nn.MaxPool2d(1, 2), nn.Conv2d(16, 16, 3, 1, 1, seed=3)),
                  nn.Sequential(nn.BasicBlock(8, 16, 2, seed=4))):
        randomize_batch_norms(model, rng)
        model.eval()
        q = nn.quantize(model, "int8", [x])
        with nn.inference_mode():
            got, want, exact = q(x), unfolded(q)(x), model(x)
        assert got.precision == "fp32" and got.dtype == np.float32
        assert np.linalg.norm(got.data - want.data) / np.linalg.norm(want.data) < 0.03
        assert np.linalg.norm(got.data - exact.data) / np.linalg.norm(exact.data) < 0.05


@pytest.mark.parametrize("where", ["relu", "conv3", "bn3"])
def test_a_hook_at_a_block_end_runs_the_block_one_by_one(rng, where):
    """A hook on the block end's layers (or its shortcut) stops the block's folds, the
    shortcut's included: the hook sees, and the block gives, exactly what the layers run one by
    one give."""
    from dlcpu.nn.resnet import Bottleneck

    block = Bottleneck(32, 16, 2, seed=3)
    randomize_batch_norms(block, rng)
    x = dlcpu.layout.to_blocked(np.maximum(rng.standard_normal((2, 32, 9, 9)), 0).astype(np.float32))
    q = nn.quantize(block, "int8", [x])
    ref = unfolded(q)
    outs = []
    for model in (q, ref):
        seen = []
        with getattr(model.inner, where).register_output_hook(lambda m, y, seen=seen: seen.append(y.data.copy()) or y), \
                nn.inference_mode():
            outs.append((model(x).data, seen[0]))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_fault_injection_on_a_quantized_model_folds_nothing(rng):
    """dlcpu.faults hooks every layer in its golden run, which stops the folds; its faulty runs
    must then fold nothing either: a run with no fault (a flip of bit 0 twice cancels, so here
    an injection of no flips: run_from) gives the golden logits exactly."""
    from dlcpu.faults.inject import GoldenRun
    from dlcpu.nn.resnet import ResNet

    model = ResNet("basic", [1, 1, 1, 1], num_classes=10, seed=2)
    randomize_batch_norms(model, rng)
    model.eval()
    x = np.abs(rng.standard_normal((4, 3, 32, 32))).astype(np.float32)
    q = nn.quantize(model, "int8", [x])
    golden = GoldenRun(q, dlcpu.layout.to_blocked(x))
    assert np.array_equal(golden.run_from(0, golden.kept[0]), golden.logits)
    assert all(m.quant.folding for m in q._walk() if isinstance(m, nn.Conv2d))    # restored after


@pytest.mark.parametrize("to,kw", [("int8", {}), ("ternary", {"block": 16, "residual": 2})])
def test_quantized_resnet_hands_u8_codes_from_the_stem_on(rng, to, kw):
    """A quantized ResNet: the stem convolution folds bn1 and its ReLU and writes the first
    block's input codes, which the max pool pools as codes; every block end is folded.  The
    logits are those of the layers run one by one (to the codes' rounding), and a hook on the
    max pool sees fp32 (the stem then runs one by one)."""
    from dlcpu.nn.resnet import ResNet

    model = ResNet("bottleneck", [1, 2, 1, 1], num_classes=10, seed=1)
    randomize_batch_norms(model, rng)
    model.eval()
    x = np.abs(rng.standard_normal((2, 3, 40, 40))).astype(np.float32)
    q = nn.quantize(model, to, [x], **kw)
    inner = q.inner
    assert inner.conv1.quant.fold == (inner.bn1, inner.layer1.modules[0].conv1, (inner.maxpool,))
    blocks = [m for m in inner._walk() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 5 and all(b.conv3.quant.ends_block is not None for b in blocks)
    seen = []
    forward = inner.maxpool._forward
    inner.maxpool._forward = lambda v: (seen.append(v.precision), forward(v))[1]
    with nn.inference_mode():
        got = q(x)
        want = unfolded(q)(x)
    assert seen == ["int8"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.03
    seen.clear()
    with inner.maxpool.register_output_hook(lambda m, y: y), nn.inference_mode():
        hooked = q(x)
    assert seen == ["fp32"] and np.linalg.norm(hooked - want) / np.linalg.norm(want) < 0.03
