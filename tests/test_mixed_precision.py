"""Mixed-precision training (Module.set_precision, train_digits(precision='bf16')): bf16
products, fp32 weights, statistics, loss, gradients and optimizer."""
import numpy as np
import pytest
from conftest import assert_close

import dlcpu
from dlcpu import nn
from dlcpu import precision as P
from dlcpu import quantized as Q
from dlcpu import train as training


def test_set_precision_reaches_the_product_layers_only():
    model = nn.digits_resnet(8, seed=0).set_precision("bf16")
    layers = list(model._walk())
    assert {m.precision for m in layers if isinstance(m, (nn.Conv2d, nn.Linear))} == {"bf16"}
    assert all(m.precision == "fp32" for m in layers if isinstance(m, nn.BatchNorm2d))
    assert all(p.data.dtype == np.float32 for p in model.parameters())      # master weights stay fp32
    assert {m.precision for m in model.set_precision("fp32")._walk()} == {"fp32"}


def test_set_precision_refuses_layers_without_kernels_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="Conv2d.*no int8 kernels.*left as it was"):
        model.set_precision("int8")
    assert model.modules[0].precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        model.set_precision("fp16")


def test_bf16_linear_forward_and_backward(rng):
    layer = nn.Linear(37, 21, seed=1).set_precision("bf16")
    x = rng.uniform(-1, 1, (13, 37)).astype(np.float32)
    dy = rng.uniform(-1, 1, (13, 21)).astype(np.float32)
    w = layer.weight.data.astype(np.float64)
    xr, wr, dyr = (P.round_to_bf16(a).astype(np.float64) for a in (x, layer.weight.data, dy))
    assert_close(layer(x), xr @ wr.T)
    dx = layer.backward(dy)
    assert_close(dx, dyr @ wr)
    assert_close(layer.weight.grad, dyr.T @ xr)
    assert_close(layer.bias.grad, dy.astype(np.float64).sum(axis=0))
    assert_close(dx, dy.astype(np.float64) @ w, dtype="bf16")


def test_bf16_gradients_track_fp32_through_a_network():
    """Every parameter's gradient within a few % of fp32's in a conv-ReLU-conv-ReLU-pool-linear
    network (no batch norm: its backward's cancellations amplify bf16's 0.4% rounding into 5-16%
    on an untrained digits_resnet, measured, which would hide a real error), and not equal to it."""
    data = training.load_digits_split(0)
    x, y = training.image_batch(data.x_train[:32]), data.y_train[:32]
    grads = {}
    for precision in ("fp32", "bf16"):
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, seed=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, seed=2),
                              nn.ReLU(), nn.GlobalAvgPool(), nn.Linear(16, 10, seed=3)).set_precision(precision)
        _, d = nn.softmax_cross_entropy(model(x), y)
        model.backward(d)
        grads[precision] = [p.grad.astype(np.float64) for p in model.parameters()]
    for ours, want in zip(grads["bf16"], grads["fp32"]):
        err = np.linalg.norm(ours - want) / np.linalg.norm(want)
        assert 1e-5 < err < 5e-2      # measured 4e-4 (last bias) to 2.9e-2 (first conv)


def test_train_digits_in_bf16_learns_and_reports_its_precision():
    result = training.train_digits(epochs=2, batch=64, precision="bf16", seed=0)
    assert result.precision == "bf16" and result.test_accuracy > 0.6
    assert {m.precision for m in result.model._walk() if isinstance(m, nn.Conv2d)} == {"bf16"}
    with pytest.raises(ValueError, match="RNN trains in fp32, bf16, dfp16, not int8"):
        training.train_digits(epochs=1, model="rnn", precision="int8")
    rnn_result = training.train_digits(epochs=2, batch=64, model="rnn", precision="bf16", seed=0)
    assert rnn_result.precision == "bf16" and rnn_result.test_accuracy > 0.5
    assert {m.precision for m in rnn_result.model._walk() if isinstance(m, nn.LSTM)} == {"bf16"}
    with pytest.raises(ValueError, match="unknown precision"):
        training.train_digits(epochs=1, precision="half")


def test_resnet_bf16_forward_matches_fp32_to_bf16_precision(rng):
    model = nn.resnet18(num_classes=10).eval()
    x = dlcpu.to_blocked(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    with nn.inference_mode():
        want = model(x)
        got = model.set_precision("bf16")(x)
    assert_close(got, want.astype(np.float64), dtype="bf16")


# ---------------------------------------------------------------------------------------- DFP-16
VNNI = dlcpu.cpu.features()["avx512_vnni"] and "avx512" in dlcpu.cpu.supported_isas()
VNNI_PATHS = ([(isa, isa == "avx512" and VNNI) for isa in dlcpu.cpu.supported_isas()]
              + ([("avx512", False)] if VNNI else []))


@pytest.mark.parametrize("isa,native", VNNI_PATHS)
@pytest.mark.parametrize("case", [(2, 3, 5, 9, 9, 3, 3, 1, 1), (2, 20, 33, 11, 13, 3, 3, 2, 1),
                                  (1, 32, 48, 14, 14, 1, 1, 2, 0), (1, 17, 16, 8, 8, 1, 1, 1, 0),
                                  (1, 8, 20, 10, 10, 7, 7, 2, 3), (3, 40, 70, 5, 7, 3, 3, 1, 1)], ids=str)
def test_dfp16_conv_backward_against_float64(rng, monkeypatch, isa, native, case):
    """dx on the int16 kernels and dW on the int16 weight-update kernels (the fp32 ones are not
    called): against the float64 gradients of the DFP-16 values of dy, x and w (exact up to fp32
    rounding with one stride phase; each phase of a strided convolution quantizes its own
    weights), and the true gradients to DFP-16's precision; VPDPWSSD and its emulation."""
    from dlcpu._ext import conv_wu

    monkeypatch.setattr(Q, "native_vnni", lambda name: native)
    monkeypatch.setattr(dlcpu.conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(dlcpu.conv, "PAIR_WU_MIN_K", 0)            # the pair kernels at every size
    monkeypatch.setattr(conv_wu, "conv2d_weight_grad_f32", None)
    from dlcpu import _reference as ref

    n, c, k, h, w, r, s, stride, pad = case
    st2, pd2 = (stride, stride), (pad, pad)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    dy = rng.uniform(-1, 1, dlcpu.conv2d(x, wt, None, stride, pad).shape).astype(np.float32)
    g = dlcpu.conv2d_backward(dy, x, wt, stride, pad, precision="dfp16", isa=isa)
    q = [Q.round_to_dfp16(a).astype(np.float64) for a in (dy, x, wt)]
    dx, dw, _ = ref.conv2d_backward(*q, st2, pd2)
    assert_close(g.dw, dw)
    if stride == 1:
        assert_close(g.dx, dx)
    true = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), wt.astype(np.float64), st2, pd2)
    for ours, want in zip((g.dx, g.dw), true[:2]):
        assert 1e-6 < np.linalg.norm(ours - want) / np.linalg.norm(want) < 5e-4


def test_dfp16_weight_update_threads_accumulate_and_forward_input(rng, monkeypatch):
    """DFP-16 dW on the pair kernels: the same bits on 1 and all threads, added in place by
    accumulate_dw, and the same from the DFP-16 BlockedTensor the forward read as from the fp32
    x it came from."""
    monkeypatch.setattr(dlcpu.conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(dlcpu.conv, "PAIR_WU_MIN_K", 0)
    x = rng.uniform(-1, 1, (2, 40, 13, 11)).astype(np.float32)
    w = rng.uniform(-1, 1, (48, 40, 3, 3)).astype(np.float32)
    dy = rng.uniform(-1, 1, (2, 48, 7, 6)).astype(np.float32)
    one = dlcpu.conv2d_backward(dy, x, w, 2, 1, need="dw", precision="dfp16", n_threads=1).dw
    assert np.array_equal(one, dlcpu.conv2d_backward(dy, x, w, 2, 1, need="dw", precision="dfp16",
                                                     n_threads=dlcpu.cpu.resolve_threads(None)).dw)
    xb, wb, dyb = dlcpu.to_blocked(x), dlcpu.block_weights(w), dlcpu.to_blocked(dy)
    acc = np.ones_like(wb.data)
    g = dlcpu.conv2d_backward(dyb, Q.to_dfp16_blocked(xb), wb, 2, 1, need="dw", precision="dfp16", accumulate_dw=acc)
    assert g.dw.data is acc
    plain = dlcpu.conv2d_backward(dyb, xb, wb, 2, 1, need="dw", precision="dfp16").dw.data
    assert_close(acc - 1, plain.astype(np.float64))
    # operands so small that 2**(E_x + E_dy) is below fp32's normal range: the fp32 kernels on
    # the DFP-16 values still give the tiny gradient, at every size
    tiny = dlcpu.conv2d_backward(dy * 1e-20, x * 1e-20, w, 2, 1, need="dw", precision="dfp16").dw
    assert np.isfinite(tiny).all() and 0 < np.abs(tiny).max() < 1e-36


def test_dfp16_linear_forward_and_backward(rng):
    layer = nn.Linear(37, 21, seed=1).set_precision("dfp16")
    x = rng.uniform(-1, 1, (13, 37)).astype(np.float32)
    dy = rng.uniform(-1, 1, (13, 21)).astype(np.float32)
    xq, wq, dyq = (Q.round_to_dfp16(a).astype(np.float64) for a in (x, layer.weight.data, dy))
    assert_close(layer(x), xq @ wq.T)
    dx = layer.backward(dy)
    assert_close(dx, dyq @ wq)
    assert_close(layer.weight.grad, dyq.T @ xq)
    assert 1e-6 < np.linalg.norm(dx - dy.astype(np.float64) @ layer.weight.data) / np.linalg.norm(dx) < 5e-4


def test_dfp16_gradients_track_fp32_through_a_network():
    data = training.load_digits_split(0)
    x, y = training.image_batch(data.x_train[:32]), data.y_train[:32]
    grads = {}
    for precision in ("fp32", "dfp16"):
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, seed=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, seed=2),
                              nn.ReLU(), nn.GlobalAvgPool(), nn.Linear(16, 10, seed=3)).set_precision(precision)
        _, d = nn.softmax_cross_entropy(model(x), y)
        model.backward(d)
        grads[precision] = [p.grad.astype(np.float64) for p in model.parameters()]
    for ours, want in zip(grads["dfp16"], grads["fp32"]):
        err = np.linalg.norm(ours - want) / np.linalg.norm(want)
        assert 1e-7 < err < 2e-2      # measured up to 8.8e-3 (first conv: one exponent per tensor of dy)


def test_train_digits_in_dfp16_learns_and_reports_its_precision():
    result = training.train_digits(epochs=2, batch=64, precision="dfp16", seed=0)
    assert result.precision == "dfp16" and result.test_accuracy > 0.6
    assert {m.precision for m in result.model._walk() if isinstance(m, (nn.Conv2d, nn.Linear))} == {"dfp16"}
    with pytest.raises(ValueError, match="CNN trains in fp32, bf16, dfp16, not ternary"):
        training.train_digits(epochs=1, precision="ternary")
    with pytest.raises(ValueError, match="has no int8 kernels"):
        nn.digits_resnet(8, seed=0).set_precision("int8")


@pytest.mark.parametrize("precision,bound", [("int8", 2e-2), ("ternary", 0.6)])
def test_linear_dynamic_quantization_for_inference(rng, precision, bound):
    """set_precision('int8' | 'ternary') on Linear: the forward is matmul in that format on the
    layer's weights (quantized at each call), within the format's error of fp32; backward refuses."""
    layer = nn.Linear(40, 24, seed=1)
    layer.bias.data[:] = rng.uniform(-1, 1, 24).astype(np.float32)
    x = rng.uniform(-1, 1, (9, 40)).astype(np.float32)
    want = layer(x)
    layer.set_precision(precision)
    got = layer(x)
    direct = dlcpu.matmul(x, np.ascontiguousarray(layer.weight.data.T), precision=precision) + layer.bias.data
    np.testing.assert_array_equal(got, direct)
    assert 1e-4 < np.linalg.norm(got - want) / np.linalg.norm(want) <= bound
    with pytest.raises(RuntimeError, match="runs inference only"):
        layer.backward(np.ones_like(got))
    if layer.bias is not None:
        assert not layer.bias.grad.any()        # refused before anything changed


def test_lstm_dynamic_int8_inference_and_training_refused(rng):
    layer = nn.LSTM(12, 20, seed=3)
    x = rng.uniform(-1, 1, (6, 5, 12)).astype(np.float32)
    want = layer(x)
    layer.set_precision("int8").eval()
    got = layer(x)
    assert 1e-4 < np.linalg.norm(got - want) / np.linalg.norm(want) <= 2e-2
    layer.train()
    with pytest.raises(RuntimeError, match="runs inference only; call .eval"):
        layer(x)
    relu = nn.RNN(12, 20, nonlinearity="relu")
    with pytest.raises(ValueError, match="no int8 kernels"):
        relu.set_precision("int8")


@pytest.mark.parametrize("precision", ["bf16", "dfp16"])
def test_residual_blocks_convert_their_input_once_for_both_convolutions(rng, monkeypatch, precision):
    """A block whose first conv and shortcut conv both read x in the same format converts x once
    and hands both the same tensor; outputs and gradients are the bits of converting it twice."""
    from dlcpu.nn import layers, resnet

    x = dlcpu.to_blocked(rng.uniform(-1, 1, (2, 16, 9, 9)).astype(np.float32))
    for make in (lambda: nn.BasicBlock(16, 32, 2, seed=3), lambda: resnet.Bottleneck(16, 8, 2, seed=3)):
        results = []
        for shared in (True, False):
            if not shared:
                monkeypatch.setattr(layers, "shared_input", lambda first, shortcut, x: x)
                monkeypatch.setattr(resnet, "shared_input", lambda first, shortcut, x: x)
            block = make().set_precision(precision)
            y = block(x)
            first, short = block.conv1, (block.shortcut if hasattr(block, "shortcut") else block.downsample)[0]
            assert (first._x is short._x) == shared and first._x.precision == precision
            dy = np.random.default_rng(5).uniform(-1, 1, y.numpy().shape).astype(np.float32)
            dx = block.backward(dlcpu.to_blocked(dy))
            results.append((y.numpy(), dx.numpy(), [p.grad.copy() for p in block.parameters()]))
        (y1, dx1, g1), (y2, dx2, g2) = results
        assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)
        assert all(np.array_equal(a, b) for a, b in zip(g1, g2))
        monkeypatch.undo()


def _batchnorms(model):
    from dlcpu.nn.layers import BatchNorm2d

    return [m for m in model._walk() if isinstance(m, BatchNorm2d)]


def _step_outputs(model, x, dy_seed=7):
    y = model(x)
    out = y.numpy() if hasattr(y, "numpy") else y
    dy = np.random.default_rng(dy_seed).uniform(-1, 1, out.shape).astype(np.float32)
    dx = model.backward(dlcpu.to_blocked(dy) if hasattr(y, "numpy") else dy)
    return out, None if dx is None else dx.numpy(), [p.grad.copy() for p in model.parameters()]


def test_bf16_batchnorm_hands_its_convolutions_bf16_and_changes_no_bit(rng):
    """set_precision('bf16') links each batch norm to the bf16 convolutions next to it: it writes
    bf16 where a convolution reads its output or input gradient directly (never into a residual
    sum or a pool), and the step's outputs and gradients are the bits of the fp32 hand-over."""
    from dlcpu.nn import resnet

    images = rng.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    block_x = dlcpu.to_blocked(rng.uniform(-1, 1, (2, 16, 9, 9)).astype(np.float32))
    cases = [(lambda: nn.digits_resnet(seed=1), dlcpu.to_blocked(images),
              # stem bn (its output: block 1's conv and residual), block 1 bn1, bn2, block 2 bn1, bn2, shortcut bn
              [("fp32", "bf16"), ("bf16", "bf16"), ("fp32", "bf16"), ("bf16", "bf16"), ("fp32", "bf16"),
               ("fp32", "bf16")]),
             (lambda: resnet.Bottleneck(16, 8, 2, seed=3), block_x,
              [("bf16", "bf16"), ("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "bf16")])]
    for make, x, links in cases:
        linked = make().set_precision("bf16")
        assert [(b.out_precision, b.dx_precision) for b in _batchnorms(linked)] == links
        unlinked = make().set_precision("bf16")
        for b in _batchnorms(unlinked):
            b.out_precision = b.dx_precision = "fp32"
        (y1, dx1, g1), (y2, dx2, g2) = _step_outputs(linked, x), _step_outputs(unlinked, x)
        assert np.array_equal(y1, y2) and (dx1 is None) == (dx2 is None)
        assert dx1 is None or np.array_equal(dx1, dx2)
        assert all(np.array_equal(a, b) for a, b in zip(g1, g2))
        # the links follow the precision back to fp32
        assert all((b.out_precision, b.dx_precision) == ("fp32", "fp32")
                   for b in _batchnorms(linked.set_precision("fp32")))


def test_bf16_batchnorm_keeps_fp32_gradients_for_a_biased_conv_and_for_quantization(rng):
    """A conv with a bias gets its batch norm's input gradient in fp32 (its bias gradient sums
    it: rounding would add noise to a near-zero sum), so every bit matches the unlinked step,
    the bias gradient included.  A bf16 model wrapped in nn.Quantized hands its quantized convs
    fp32 again (they quantize fp32 activations)."""
    x = dlcpu.to_blocked(rng.uniform(-1, 1, (2, 16, 6, 6)).astype(np.float32))

    def make():
        return nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, seed=1), nn.BatchNorm2d(16, relu=True),
                             nn.Conv2d(16, 16, 3, 1, 1, bias=False, seed=2), nn.BatchNorm2d(16)).set_precision("bf16")
    linked = make()
    assert [(b.out_precision, b.dx_precision) for b in _batchnorms(linked)] == [("bf16", "fp32"), ("fp32", "bf16")]
    unlinked = make()
    for b in _batchnorms(unlinked):
        b.out_precision = b.dx_precision = "fp32"
    (y1, dx1, g1), (y2, dx2, g2) = _step_outputs(linked, x), _step_outputs(unlinked, x)
    assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))          # the first conv's bias gradient too
    import sys

    nq = sys.modules["dlcpu.nn.quantize"]       # (dlcpu.nn.quantize is also the function's name)
    model = nn.digits_resnet(seed=0).set_precision("bf16")
    q = nn.Quantized(model, "int8", linear=True)
    for layer in nq._layers(model, True):            # weights as nn.quantize sets them (unit input scales)
        layer.quant.set_weights(nq._fp32_weights(layer))
    assert all((b.out_precision, b.dx_precision) == ("fp32", "fp32") for b in _batchnorms(q))
    assert q(dlcpu.to_blocked(rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32))).shape == (2, 10)


def test_bf16_batchnorm_output_hook_sees_fp32(rng):
    """A hook on a linked batch norm's output (a fault injection) sees fp32, as without links;
    the convolution after it converts, and the result is unchanged."""
    x = dlcpu.to_blocked(rng.uniform(-1, 1, (2, 16, 6, 6)).astype(np.float32))
    block = nn.BasicBlock(16, 16, 1, seed=2).set_precision("bf16")
    seen = []
    plain = block(x).numpy()
    with block.bn1.register_output_hook(lambda m, y: seen.append(y.precision) or y):
        hooked = block(x).numpy()
    assert seen == ["fp32"] and np.array_equal(plain, hooked)
    assert block(x).numpy().tobytes() == plain.tobytes() and seen == ["fp32"]


def test_conv_layers_widen_bf16_activations_they_do_not_run(rng):
    """A bf16 activation or gradient reaching an fp32 or DFP-16 Conv2d (a precision changed by
    hand after set_precision linked the batch norms) is widened, exactly."""
    x = rng.uniform(-1, 1, (2, 16, 5, 5)).astype(np.float32)
    x16 = dlcpu.to_bf16_blocked(x)
    x_values = dlcpu.to_blocked(P.bf16_bits_to_fp32(P.fp32_to_bf16_bits(x)))
    for precision in ("fp32", "dfp16"):
        a = nn.Conv2d(16, 16, 3, 1, 1, seed=4).set_precision(precision)
        b = nn.Conv2d(16, 16, 3, 1, 1, seed=4).set_precision(precision)
        ya, yb = a(x16), b(x_values)
        assert np.array_equal(ya.data, yb.data)
        dy = rng.uniform(-1, 1, (2, 16, 5, 5)).astype(np.float32)
        da = a.backward(dlcpu.to_bf16_blocked(dy))
        db = b.backward(dlcpu.to_blocked(P.bf16_bits_to_fp32(P.fp32_to_bf16_bits(dy))))
        assert np.array_equal(da.data, db.data) and np.array_equal(a.weight.grad, b.weight.grad)
        assert np.array_equal(a.bias.grad, b.bias.grad)


def test_conv_backward_reads_a_bf16_dy_as_its_rounded_values(rng):
    """conv2d_backward(precision='bf16') with dy a bf16 BlockedTensor: the bits of passing dy in
    fp32 (which it rounds itself), db included; other precisions refuse a bf16 dy."""
    x = dlcpu.to_blocked(rng.uniform(-1, 1, (2, 20, 7, 7)).astype(np.float32))
    w = dlcpu.block_weights(rng.uniform(-1, 1, (33, 20, 3, 3)).astype(np.float32))
    dy = rng.uniform(-1, 1, (2, 33, 4, 4)).astype(np.float32)
    a = dlcpu.conv2d_backward(dlcpu.to_bf16_blocked(dy), x, w, 2, 1, precision="bf16")
    b = dlcpu.conv2d_backward(dlcpu.to_blocked(P.bf16_bits_to_fp32(P.fp32_to_bf16_bits(dy))), x, w, 2, 1,
                              precision="bf16")
    for u, v in zip(a, b):
        assert np.array_equal(getattr(u, "data", u), getattr(v, "data", v))
    for precision in ("fp32", "dfp16"):
        with pytest.raises(TypeError, match=f"dy must be a fp32 activation BlockedTensor for precision='{precision}'"):
            dlcpu.conv2d_backward(dlcpu.to_bf16_blocked(dy), x, w, 2, 1, precision=precision)
