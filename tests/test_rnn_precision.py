"""Recurrent layers in low precision (precision='bf16' | 'dfp16' | 'int8'): LSTM, GRU and RNN
forward (and the bf16/DFP-16 backward) against the float64 twins with every product operand
rounded or quantized as the kernels do (dlcpu._reference's `rounding=`), on every ISA path;
1 vs all threads; the nn layers and the digits-rnn trainer; bad input."""
import numpy as np
import pytest
from conftest import ISAS, max_threads
from test_rnn import SIZES, problem

from dlcpu import _reference as ref
from dlcpu import cpu, nn, quantized, rnn
from dlcpu import precision as P
from dlcpu._tolerances import BF16


def to_bf16(a):
    """The float64 values of a's float32 rounding, rounded to bf16: the reference's operands."""
    return P.round_to_bf16(np.asarray(a, np.float32)).astype(np.float64)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def check(got, rounded, exact):
    """got agrees with the bf16-operand twin far better than with the fp32 one: the kernels
    round exactly the operands the twin rounds.  (Not to the last bit: a value that float64 and
    the kernels' fp32 put on two sides of a bf16 rounding boundary rounds one ulp apart, and the
    recurrence carries that on; measured <= 3e-4 on these sizes, against 1e-3 - 5e-3 from fp32.)"""
    err, err_fp32 = rel(got, rounded), rel(got, exact)
    assert err <= 1e-3 and err <= err_fp32 / 4, f"error {err:.2e} against the bf16 twin, {err_fp32:.2e} against fp32"
    assert err_fp32 <= BF16


CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def run_cell(cell, rng, T, N, C, K, precision, isa=None, n_threads=None):
    """(outputs, gradients, twin outputs and gradients with bf16 rounding, and without)."""
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K, gates=gates)
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    dh_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    kw = {"train": True, "precision": precision, "isa": isa, "n_threads": n_threads}
    if cell == "lstm":
        dc_T = rng.uniform(-1, 1, (N, K)).astype(np.float32)
        y, (h, c), cache = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **kw)
        got = (y, h, c), rnn.lstm_backward(dy, cache, dh_T, dc_T)

        def twin(q):
            y_r, h_r, c_r, steps = ref.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, rounding=q)
            dx, dwi, dwh, db, dh0, dc0 = ref.lstm_backward(dy, x, w_ih, w_hh, steps, dh_T, dc_T, rounding=q)
            return (y_r, h_r, c_r), (dx, dwi, dwh, db, db, dh0, dc0)
    elif cell == "gru":
        y, h, cache = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, **kw)
        got = (y, h), rnn.gru_backward(dy, cache, dh_T)

        def twin(q):
            y_r, h_r, _ = ref.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, rounding=q)
            return (y_r, h_r), None
    else:
        relu = cell == "rnn_relu"
        y, h, cache = rnn.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity="relu" if relu else "tanh", **kw)
        got = (y, h), rnn.rnn_backward(dy, cache, dh_T)

        def twin(q):
            y_r, h_r, _ = ref.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, relu, rounding=q)
            return (y_r, h_r), None
    return got, twin(to_bf16), twin(None)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("size", SIZES[1:5], ids=str)
def test_bf16_forward_and_lstm_backward_against_the_rounded_twin(rng, isa, cell, size):
    (outs, grads), (outs_q, grads_q), (outs_x, grads_x) = run_cell(cell, rng, *size, "bf16", isa=isa)
    for a, b, c in zip(outs, outs_q, outs_x):
        check(a, b, c)
    if grads_q is not None:
        for a, b, c in zip(grads, grads_q, grads_x):
            check(a, b, c)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_bf16_backward_of_gru_and_rnn_against_fp32(rng, cell):
    """The GRU and RNN backwards share the LSTM's bf16 recurrent product and GEMMs (checked
    against the rounded twin above); here their gradients are within bf16's bound of fp32's."""
    T, N, C, K = 4, 9, 20, 33
    (_, g16), _, _ = run_cell(cell, np.random.default_rng(5), T, N, C, K, "bf16")
    (_, g32), _, _ = run_cell(cell, np.random.default_rng(5), T, N, C, K, "fp32")
    for a, b in zip(g16, g32):
        assert rel(a, b) <= BF16
        assert rel(a, b) > 1e-5     # it did round


def test_bf16_threads_bitwise(rng):
    state = rng.bit_generator.state
    (o1, g1), _, _ = run_cell("lstm", rng, 5, 21, 24, 40, "bf16", n_threads=1)
    rng.bit_generator.state = state
    (o2, g2), _, _ = run_cell("lstm", rng, 5, 21, 24, 40, "bf16", n_threads=max_threads())
    for a, b in zip(o1 + g1, o2 + g2):
        np.testing.assert_array_equal(a, b)


def test_bf16_prepared_weights_round_once(rng):
    """Prepared weights keep their bf16 twins: a second forward reuses them and gives the same bits."""
    x, w_ih, w_hh, b_ih, b_hh, _h0, _c0 = problem(rng, 3, 4, 5, 18)
    w = rnn.prepare_lstm(w_ih, w_hh, b_ih, b_hh)
    y1, _ = rnn.lstm_forward(x, weights=w, precision="bf16")
    twins = w.format_operands("bf16")
    y2, _ = rnn.lstm_forward(x, weights=w, precision="bf16")
    assert w.format_operands("bf16") is twins
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("precision,match", [("fp8", "unknown precision 'fp8'"), (16, "unknown precision")])
def test_bad_precision_name(rng, precision, match):
    x, w_ih, w_hh, _b_ih, _b_hh, _h0, _c0 = problem(rng, 2, 3, 4, 5)
    for call in (lambda: rnn.lstm_forward(x, w_ih, w_hh, precision=precision),
                 lambda: rnn.gru_forward(x, *problem(rng, 2, 3, 4, 5, gates=3)[1:3], precision=precision),
                 lambda: rnn.rnn_forward(x, *problem(rng, 2, 3, 4, 5, gates=1)[1:3], precision=precision)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("precision,bound", [("bf16", BF16), ("dfp16", 2e-3)])
def test_nn_recurrent_layer_gradients(rng, cls, precision, bound):
    """set_precision(bf16 | dfp16) on a recurrent layer: the outputs and the gradients it
    accumulates are the format's, within its bound of fp32's (and not fp32's own), with fp32 master
    weights left untouched."""
    layer = cls(12, 20, seed=3)
    x = rng.uniform(-1, 1, (6, 5, 12)).astype(np.float32)
    dy = rng.uniform(-1, 1, (6, 5, 20)).astype(np.float32)
    results = {}
    for prec in ("fp32", precision):
        layer.set_precision(prec)
        for p in layer.parameters():
            p.grad[...] = 0.0
        y = layer(x)
        layer.backward(dy)
        results[prec] = (y, [p.grad.copy() for p in layer.parameters()])
        assert all(p.data.dtype == np.float32 for p in layer.parameters())
    (y_q, g_q), (y_f, g_f) = results[precision], results["fp32"]
    assert 1e-7 < rel(y_q, y_f.astype(np.float64)) <= bound
    for a, b in zip(g_q, g_f):
        assert 1e-7 < rel(a, b.astype(np.float64)) <= bound


# ------------------------------------------------------------------------------ int8 and DFP-16
def integer_roundings(precision, x, w_ih, w_hh, h0, block=16, residual=0, levels=None):
    """The twin's rounding= for the integer formats, operand by operand, as dlcpu/rnn.py
    quantizes: x per tensor (int8, ternary: u8 with zero point 128 when signed; DFP-16: shared
    exponent), W_ih per output unit (int8) or per tensor (DFP-16), W_hh per tensor, both
    block-ternary per output unit (ternary, the first `levels` levels), h on one fixed scale from
    max(1, max|h0|)."""
    code, threads = cpu.isa_code(None), 1
    bound = max(1.0, float(np.abs(h0).max()))
    limit = 2 ** 13 - 1                       # mantissas within 2 bits of headroom

    def dfp16(a):
        d, _ = P._to_dfp16(np.asarray(a, np.float32), 2, "nearest", 0, code, threads, "twin", within_headroom=True)
        return d.mantissas.astype(np.float64) * 2.0 ** d.exponent

    if precision == "dfp16":
        e_h = P.dfp16_exponent(bound)
        return {"x": dfp16, "w_ih": dfp16, "w_hh": dfp16,
                "h": lambda h: np.clip(np.rint(np.float32(h) * 2.0 ** -e_h), -limit, limit) * 2.0 ** e_h}

    def u8(a):
        q, s, z = quantized.quantize_u8(np.asarray(a, np.float32), code, threads, "twin")
        return (q.astype(np.float64) - z) * s

    def per_row(w):
        w = np.asarray(w, np.float32)
        s = P.int8_weight_scales(w, axis=0)
        return P.to_int8(w, s, axis=0).data.astype(np.float64) * s[:, None]

    def ternary(w):
        tw = P.ternarize(np.asarray(w, np.float32)[:, :, None, None], block=block, residual=residual)
        return tw.to_float32(levels)[:, :, 0, 0].astype(np.float64)

    s_w = float(P._int8_scales([np.abs(w_hh).max()], 127)[0])
    s_h = bound / 127.0
    h = {"h": lambda h: (np.clip(np.rint(np.float32(h) / s_h) + 128, 0, 255) - 128) * s_h}
    if precision == "ternary":
        return {"x": u8, "w_ih": ternary, "w_hh": ternary, **h}
    return {"x": u8, "w_ih": per_row, "w_hh": lambda w: np.clip(np.rint(w * (1.0 / s_w)), -127, 127) * s_w, **h}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("precision", ["int8", "dfp16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("size", SIZES[1:5], ids=str)
def test_integer_forward_against_the_quantized_twin(rng, isa, precision, cell, size):
    """The integer products are exact sums of the quantized operands: the outputs agree with the
    float64 twin on those operands far better than with fp32's."""
    T, N, C, K = size
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K, gates=gates)
    q = integer_roundings(precision, x, w_ih, w_hh, h0)
    kw = {"precision": precision, "isa": isa}
    if cell == "lstm":
        y, _ = rnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, **kw)
        want_q, want = (ref.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, rounding=r)[0] for r in (q, None))
    elif cell == "gru":
        y, _ = rnn.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, **kw)
        want_q, want = (ref.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, rounding=r)[0] for r in (q, None))
    else:
        y, _h = rnn.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, **kw)
        want_q, want = (ref.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, rounding=r)[0] for r in (q, None))
    err, err_fp32 = rel(y, want_q), rel(y, want)
    assert err <= err_fp32 / 10, f"{err:.2e} against the quantized twin, {err_fp32:.2e} against fp32"
    assert err_fp32 <= (2e-2 if precision == "int8" else 1e-3)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_dfp16_backward_within_its_precision(rng, cell):
    """The DFP-16 backward (gate gradients at a shared exponent per step in the recurrence, per
    tensor in the dx/dW GEMMs): every gradient within 2e-3 of the float64 one -- bf16's are 10x
    further -- and with all three cells sharing the code."""
    T, N, C, K = 5, 9, 20, 33
    (_, g16), _, (_, gx) = run_cell(cell, np.random.default_rng(5), T, N, C, K, "dfp16")
    if gx is None:
        (_, gx), _, _ = run_cell(cell, np.random.default_rng(5), T, N, C, K, "fp32")
    for a, b in zip(g16, gx):
        assert rel(a, np.asarray(b, np.float64)) <= 2e-3


def test_integer_threads_bitwise_and_weights_quantized_once(rng):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, 4, 19, 24, 40)
    w = rnn.prepare_lstm(w_ih, w_hh, b_ih, b_hh)
    for precision in ("int8", "dfp16"):
        y1, _ = rnn.lstm_forward(x, weights=w, h0=h0, c0=c0, precision=precision, n_threads=1)
        ops = w.format_operands(precision)
        y2, _ = rnn.lstm_forward(x, weights=w, h0=h0, c0=c0, precision=precision, n_threads=max_threads())
        assert w.format_operands(precision) is ops
        np.testing.assert_array_equal(y1, y2)


def test_integer_bad_input(rng):
    x, w_ih, w_hh, _b_ih, _b_hh, h0, _c0 = problem(rng, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="runs inference only"):
        rnn.lstm_forward(x, w_ih, w_hh, precision="int8", train=True)
    w1 = problem(rng, 2, 3, 4, 5, gates=1)
    with pytest.raises(ValueError, match="bounded hidden state"):
        rnn.rnn_forward(x, w1[1], w1[2], nonlinearity="relu", precision="int8")
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    for precision in ("int8", "dfp16"):
        with pytest.raises(ValueError, match="NaN or Inf"):
            rnn.lstm_forward(bad, w_ih, w_hh, precision=precision)
        h_bad = h0.copy()
        h_bad[0, 0] = np.inf
        with pytest.raises(ValueError, match="NaN or Inf"):
            rnn.lstm_forward(x, w_ih, w_hh, h0=h_bad, precision=precision)
    y, _, cache = rnn.lstm_forward(x, w_ih, w_hh, precision="dfp16", train=True)
    dy = np.full(y.shape, np.inf, np.float32)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rnn.lstm_backward(dy, cache)
    with pytest.raises(ValueError, match="product exponent"):       # 2**(E_dG + E_W) below fp32's normals
        rnn.lstm_backward(np.full(y.shape, 1e-36, np.float32), cache)
    with pytest.raises(ValueError, match="^lstm_forward: the product's exponent"):   # the input GEMM's, named as called
        rnn.lstm_forward(x * 1e-20, w_ih * 1e-20, w_hh, precision="dfp16")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("size,block,residual", [((3, 7, 16, 7), 16, 0), ((2, 16, 33, 16), 8, 1),
                                                 ((4, 9, 7, 33), 4, 2), ((2, 5, 64, 40), 16, 1)], ids=str)
def test_ternary_forward_against_the_quantized_twin(rng, isa, cell, size, block, residual):
    """Ternary weights on both products, every level count: the outputs agree with the float64
    twin on the same u8 activations and reconstructed weights (exact int32 sums, alpha per block)."""
    T, N, C, K = size
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, T, N, C, K, gates=gates)
    w = getattr(rnn, f"prepare_{cell.split('_')[0]}")(w_ih, w_hh, b_ih, b_hh)
    for levels in range(1, residual + 2):
        q = integer_roundings("ternary", x, w_ih, w_hh, h0, block, residual, levels)
        kw = {"precision": "ternary", "isa": isa, "block": block, "residual": residual, "levels": levels}
        if cell == "lstm":
            y, _ = rnn.lstm_forward(x, weights=w, h0=h0, c0=c0, **kw)
            want = ref.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, rounding=q)[0]
        elif cell == "gru":
            y, _ = rnn.gru_forward(x, weights=w, h0=h0, **kw)
            want = ref.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, rounding=q)[0]
        else:
            y, _ = rnn.rnn_forward(x, weights=w, h0=h0, **kw)
            want = ref.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, rounding=q)[0]
        assert rel(y, want) <= 1e-4, f"levels {levels}: {rel(y, want):.2e}"


def test_ternary_levels_trade_error_and_bad_input(rng):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, 4, 8, 32, 32)
    exact = ref.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0)[0]
    w = rnn.prepare_lstm(w_ih, w_hh, b_ih, b_hh)
    errors = [rel(rnn.lstm_forward(x, weights=w, h0=h0, c0=c0, precision="ternary", residual=2, levels=lv)[0], exact)
              for lv in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    for call, match in [
        (lambda: rnn.lstm_forward(x, weights=w, precision="ternary", residual=2, levels=4), "levels must be <= 3"),
        (lambda: rnn.lstm_forward(x, weights=w, precision="ternary", block=12), "block=12 does not divide"),
        (lambda: rnn.lstm_forward(x, weights=w, precision="ternary", train=True), "inference only"),
        (lambda: rnn.lstm_forward(x, weights=w, precision="int8", levels=2), "describe ternary weights"),
        (lambda: rnn.lstm_forward(x, weights=w, precision="ternary", residual=-1), "residual"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_integer_formats_refuse_what_they_cannot_carry(rng):
    """h0 beyond the cell's range (its scale would coarsen every later h), NaN in c0 or the bias
    (a NaN h would be quantized to a finite code), NaN weights; the internal RecurrentFormat
    refuses level/sub-block descriptions the kernels would index past."""
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = problem(rng, 3, 4, 8, 8)
    nan_w = w_ih.copy()
    nan_w[0, 0] = np.nan
    nan_b = b_ih.copy()
    nan_b[3] = np.nan
    for precision in ("int8", "dfp16", "ternary"):
        for kw, match in [({"h0": h0 * 100}, "h0 reaches"), ({"c0": np.full_like(c0, np.nan)}, "c0 holds NaN"),
                          ({"b_ih": nan_b}, "bias holds NaN"), ({"w_ih": nan_w}, "NaN")]:
            args = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0, **kw}
            with pytest.raises(ValueError, match=match):
                rnn.lstm_forward(x, precision=precision, **args)
    gru = problem(rng, 3, 4, 8, 8, gates=3)
    y, _ = rnn.gru_forward(x, *gru[1:5], h0=h0 * 3, precision="int8")       # a GRU's h stays within max(1, |h0|)
    want = ref.gru_forward(x, *gru[1:5], h0 * 3)[0]
    assert rel(y, want) < 5e-2
    from dlcpu._ext.rnn import RecurrentFormat
    e8, e32 = np.empty(0, np.uint8), np.empty(0, np.uint32)
    with pytest.raises(ValueError, match="1 outside ternary"):
        RecurrentFormat("fp32", e8, e8, e32, levels=2, row_levels=2)
    with pytest.raises(ValueError, match="the kernel reads 4"):
        RecurrentFormat("ternary", np.zeros(256, np.uint8), np.zeros(256, np.uint8), e32, flush_steps=1,
                        block_scale=np.ones(16, np.float32), block_groups=1)
