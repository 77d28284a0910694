"""Prepared-weight objects, out= buffers and flags are checked before any kernel runs.

WinogradWeights and RecurrentWeights are public dataclasses whose arrays the drivers trust; each
checks its arrays against its logical shape when it is made (dataclasses.replace included).  The
crash reproductions run in a subprocess, so a regression fails the test instead of ending the run.
"""
import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlcpu
from dlcpu import conv, gemm, layout, rnn


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Crashes reported by the testers: each must now end in a clear ValueError/TypeError
# ---------------------------------------------------------------------------------------------
_CRASHES = textwrap.dedent("""
    import dataclasses, sys
    import numpy as np
    import dlcpu
    from dlcpu import conv, rnn
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    case = sys.argv[1]
    try:
        if case == "winograd":
            u = dlcpu.prepare_winograd(f(16, 16, 3, 3))
            x = dlcpu.to_blocked(f(1, 16, 8, 8))
            dlcpu.conv2d(x, conv.WinogradWeights(u.data, (16 * 4096, 16, 3, 3), 6), padding=1)
        elif case == "lstm_K":
            w = dataclasses.replace(rnn.prepare_lstm(f(64, 5), f(64, 16)), K=1024)
            rnn.lstm_forward(f(3, 2, 5), weights=w)
        elif case == "rnn_as_lstm":
            w = dataclasses.replace(rnn.prepare_rnn(f(16, 5), f(16, 16)), cell="lstm")
            rnn.lstm_forward(f(3, 2, 5), weights=w)
    except (ValueError, TypeError) as e:
        print("refused:", type(e).__name__, e)
        sys.exit(0)
    print("accepted")
    sys.exit(1)
""")


@pytest.mark.parametrize("case", ["winograd", "lstm_K", "rnn_as_lstm"])
def test_forged_prepared_weights_do_not_crash(case):
    res = subprocess.run([sys.executable, "-c", _CRASHES, case], check=False, capture_output=True, text=True, timeout=120,
                         cwd="/")  # not the checkout: the installed package is under test
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "refused:" in res.stdout


# ---------------------------------------------------------------------------------------------
# 1. WinogradWeights
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def prepared(rng):
    return dlcpu.prepare_winograd(f32(rng, 16, 16, 3, 3))


def test_winograd_weights_data_must_match_the_logical_shape(prepared):
    u = prepared
    assert u.data.shape == (1, 36, 1, 16, 16)
    with pytest.raises(ValueError, match=r"WinogradWeights: data must be a C-contiguous array of shape "
                                         r"\(4096, 36, 1, 16, 16\) for weights \(65536, 16, 3, 3\) and alpha=6"):
        conv.WinogradWeights(u.data, (16 * 4096, 16, 3, 3), 6)
    with pytest.raises(ValueError, match=r"shape \(1, 16, 1, 16, 16\) .* alpha=4"):
        dataclasses.replace(u, alpha=4)
    with pytest.raises(ValueError, match="data must be a C-contiguous"):
        dataclasses.replace(u, data=np.asfortranarray(u.data))
    with pytest.raises(TypeError, match="WinogradWeights: data must be float32, got float64"):
        dataclasses.replace(u, data=u.data.astype(np.float64))
    with pytest.raises(TypeError, match="WinogradWeights: data must be a numpy array, got list"):
        dataclasses.replace(u, data=u.data.tolist())


def test_winograd_weights_alpha_shape_and_flags_are_checked(prepared):
    u = prepared
    with pytest.raises(ValueError, match=r"WinogradWeights: alpha must be 4 \(winograd2\) or 6 \(winograd4\), got 5"):
        dataclasses.replace(u, alpha=5)
    with pytest.raises(TypeError, match="WinogradWeights: alpha must be an int, got True"):
        dataclasses.replace(u, alpha=True)
    with pytest.raises(TypeError, match=r"WinogradWeights: shape\[0\] must be an int, got True"):
        dataclasses.replace(u, shape=(True, 16, 3, 3))
    with pytest.raises(ValueError, match=r"WinogradWeights: shape\[1\] must be >= 1, got 0"):
        dataclasses.replace(u, shape=(16, 0, 3, 3))
    with pytest.raises(ValueError, match=r"WinogradWeights: shape must be a logical \(K, C, 3, 3\) tuple"):
        dataclasses.replace(u, shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"WinogradWeights: Winograd F\(m, 3x3\) weights are 3x3, got shape \(16, 16, 5, 5\)"):
        dataclasses.replace(u, shape=(16, 16, 5, 5))
    with pytest.raises(TypeError, match="WinogradWeights: finite must be True or False"):
        dataclasses.replace(u, finite="yes")
    # A faithful copy is accepted (numpy ints become ints) and runs.
    v = dataclasses.replace(u, shape=tuple(np.int64(d) for d in u.shape))
    assert v.shape == (16, 16, 3, 3) and all(type(d) is int for d in v.shape)


def test_prepared_weights_must_match_the_input_channels(rng, prepared):
    x = dlcpu.to_blocked(f32(rng, 1, 8, 6, 6))
    with pytest.raises(ValueError, match=r"conv2d: input has C=8 channels but weights expect C=16"):
        dlcpu.conv2d(x, prepared, padding=1)
    x = dlcpu.to_blocked(f32(rng, 1, 16, 6, 6))
    y = dlcpu.conv2d(x, prepared, padding=1)
    assert y.shape == (1, 16, 6, 6)


# ---------------------------------------------------------------------------------------------
# 2, 3. RecurrentWeights and prepare_*
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def lstm_weights(rng):
    return rnn.prepare_lstm(f32(rng, 64, 5), f32(rng, 64, 16))


def test_recurrent_weights_sizes_must_match_their_arrays(lstm_weights):
    w = lstm_weights
    assert w.w_ih_p is None and w.recurrent_t is None   # forward operands only, until a backward
    w.backward_operands()
    with pytest.raises(ValueError, match=r"RecurrentWeights: w_ih_t must be packed from a \(5, 4096\) matrix "
                                         r"for cell 'lstm' with C=5, K=1024, got \(5, 64\)"):
        dataclasses.replace(w, K=1024)
    with pytest.raises(ValueError, match=r"RecurrentWeights: w_ih_t must be packed from a \(7, 64\) matrix"):
        dataclasses.replace(w, C=7)
    with pytest.raises(TypeError, match="RecurrentWeights: K must be an int, got True"):
        dataclasses.replace(w, K=True)
    with pytest.raises(ValueError, match="RecurrentWeights: C must be >= 1, got 0"):
        dataclasses.replace(w, C=0)
    with pytest.raises(ValueError, match=r"RecurrentWeights: bias must be a C-contiguous array of shape \(64,\)"):
        dataclasses.replace(w, bias=w.bias[:32])
    with pytest.raises(TypeError, match="RecurrentWeights: recurrent must be float32, got float64"):
        dataclasses.replace(w, recurrent=w.recurrent.astype(np.float64))
    with pytest.raises(ValueError, match=r"recurrent_t must be a C-contiguous array of shape \(1, 4, 16, 16\)"):
        dataclasses.replace(w, recurrent_t=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"b_hn must be a C-contiguous array of shape \(0,\)"):
        dataclasses.replace(w, b_hn=np.zeros(16, np.float32))
    with pytest.raises(TypeError, match="RecurrentWeights: w_ih_p must be a PackedMatrix, got ndarray"):
        dataclasses.replace(w, w_ih_p=w.w_ih_p.data)
    with pytest.raises(ValueError, match=r"w_ih_p must be packed from a \(64, 5\) matrix"):
        dataclasses.replace(w, w_ih_p=w.w_ih_t)
    with pytest.raises(ValueError, match="give both backward operands"):
        dataclasses.replace(w, w_ih_p=None)


def test_recurrent_weights_cell_and_gates_must_agree(rng, lstm_weights):
    w_rnn = rnn.prepare_rnn(f32(rng, 16, 5), f32(rng, 16, 16))
    with pytest.raises(ValueError, match="RecurrentWeights: cell 'lstm' has 4 gate"):
        dataclasses.replace(w_rnn, cell="lstm")
    with pytest.raises(ValueError, match="RecurrentWeights: cell must be one of lstm, gru, rnn, got 'rnn_tanh'"):
        dataclasses.replace(w_rnn, cell="rnn_tanh")
    with pytest.raises(ValueError, match=r"RecurrentWeights: cell 'gru' has 3 gate\(s\), got gates=4"):
        dataclasses.replace(lstm_weights, cell="gru")
    w_gru = rnn.prepare_gru(f32(rng, 30, 5), f32(rng, 30, 10))
    assert w_gru.b_hn.shape == (16,)
    with pytest.raises(ValueError, match=r"b_hn must be a C-contiguous array of shape \(16,\) for cell 'gru'"):
        dataclasses.replace(w_gru, b_hn=np.empty(0, np.float32))
    # Faithful copies still run.
    x = f32(rng, 3, 2, 5)
    y, _ = rnn.lstm_forward(x, weights=dataclasses.replace(lstm_weights))
    assert y.shape == (3, 2, 16)


def test_prepare_refuses_non_arrays(rng):
    with pytest.raises(TypeError, match="prepare_lstm: w_hh must be a numpy array, got list"):
        rnn.prepare_lstm(f32(rng, 64, 5), f32(rng, 64, 16).tolist())
    with pytest.raises(TypeError, match="prepare_gru: w_ih must be a numpy array, got list"):
        rnn.prepare_gru(f32(rng, 48, 5).tolist(), f32(rng, 48, 16))
    with pytest.raises(TypeError, match="prepare_lstm: w_hh must be a numpy array, got list"):
        rnn.lstm_forward(f32(rng, 2, 1, 5), f32(rng, 64, 5), f32(rng, 64, 16).tolist())


# ---------------------------------------------------------------------------------------------
# 4, 6. brgemm: aliasing, read-only c, index ranges, flags
# ---------------------------------------------------------------------------------------------
def test_brgemm_output_overlapping_an_input_is_refused(rng):
    a, b, c = f32(rng, 2, 16, 32), f32(rng, 2, 20, 16), f32(rng, 20, 32)
    with pytest.raises(ValueError, match="brgemm: out= overlaps bias"):
        dlcpu.brgemm(a, b, c, bias=c[5])
    big = f32(rng, 2, 16, 32)
    with pytest.raises(ValueError, match="brgemm: out= overlaps a"):
        dlcpu.brgemm(big, b, big.reshape(-1)[:640].reshape(20, 32))
    buf = f32(rng, 2 * 20 * 16)
    with pytest.raises(ValueError, match="brgemm: out= overlaps b"):
        dlcpu.brgemm(a, buf.reshape(2, 20, 16), buf[:640].reshape(20, 32))


def test_brgemm_read_only_c_is_refused(rng):
    a, b, c = f32(rng, 2, 16, 32), f32(rng, 2, 20, 16), f32(rng, 20, 32)
    c.setflags(write=False)
    with pytest.raises(ValueError, match="brgemm: c is written in place and must be writeable"):
        dlcpu.brgemm(a, b, c)


@pytest.mark.parametrize("index,err,match", [
    ([2**70], ValueError, r"brgemm: a_index must lie in \[0, 2\) .*int64.*got range \[1180591620717411303424"),
    ([-(2**70)], ValueError, r"brgemm: a_index must lie in \[0, 2\)"),
    (np.array([2**64 - 1], np.uint64), ValueError, r"brgemm: a_index must lie in \[0, 2\)"),
    ([0.7], TypeError, "brgemm: a_index must hold ints, got dtype float64"),
    ([True], TypeError, "brgemm: a_index must hold ints, got dtype bool"),
    ([0, "1"], TypeError, "brgemm: a_index must hold ints"),
])
def test_brgemm_indices_must_be_ints_in_range(rng, index, err, match):
    a, b = f32(rng, 2, 16, 32), f32(rng, 2, 20, 16)
    with pytest.raises(err, match=match):
        dlcpu.brgemm(a, b, variant="offs", a_index=index, b_index=[0] * len(index))
    with pytest.raises(err, match=match.replace("a_index", "b_index")):
        dlcpu.brgemm(a, b, variant="addr", a_index=[0] * len(index), b_index=index)
    # unsigned indices in range are fine
    c = dlcpu.brgemm(a, b, variant="offs", a_index=np.array([1, 0], np.uint32), b_index=[1, 0])
    assert c.shape == (20, 32)


# ---------------------------------------------------------------------------------------------
# 5, 6. conv2d out=
# ---------------------------------------------------------------------------------------------
def test_conv_out_logical_shape_must_match(rng):
    x = dlcpu.to_blocked(f32(rng, 1, 16, 8, 8))
    w = f32(rng, 16, 16, 3, 3)
    o = layout.BlockedTensor(np.empty((1, 1, 8, 8, 16), np.float32), (1, 10, 8, 8))
    with pytest.raises(ValueError, match=r"conv2d: out must be a float32 activation BlockedTensor of shape "
                                         r"\(1, 16, 8, 8\) .*got kind 'activation', shape \(1, 10, 8, 8\)"):
        dlcpu.conv2d(x, w, padding=1, out=o)
    with pytest.raises(TypeError, match="conv2d: out must be a float32 activation BlockedTensor, got ndarray"):
        dlcpu.conv2d(x, w, padding=1, out=np.empty((1, 1, 8, 8, 16), np.float32))
    good = layout.BlockedTensor(np.empty((1, 1, 8, 8, 16), np.float32), (1, 16, 8, 8))
    assert dlcpu.conv2d(x, w, padding=1, out=good) is good


def test_conv_read_only_out_is_refused(rng):
    x = dlcpu.to_blocked(f32(rng, 1, 16, 8, 8))
    data = np.empty((1, 1, 8, 8, 16), np.float32)
    data.setflags(write=False)
    o = layout.BlockedTensor(data, (1, 16, 8, 8))
    with pytest.raises(ValueError, match="conv2d: out is written in place and must be writeable"):
        dlcpu.conv2d(x, f32(rng, 16, 16, 3, 3), padding=1, out=o)


# ---------------------------------------------------------------------------------------------
# 7. Flags are bools
# ---------------------------------------------------------------------------------------------
def test_gemm_flags_must_be_bools(rng):
    y = f32(rng, 3, 4)
    with pytest.raises(TypeError, match="pack_matmul_operand: transpose must be True or False, got 'no'"):
        gemm.pack_matmul_operand(y, transpose="no")
    with pytest.raises(TypeError, match="pack_matmul_operand: transpose must be True or False, got 1"):
        gemm.pack_matmul_operand(y, transpose=1)
    with pytest.raises(TypeError, match="matmul: transpose_x must be True or False, got 'no'"):
        dlcpu.matmul(f32(rng, 4, 3), y, transpose_x="no")
    with pytest.raises(TypeError, match="brgemm: relu must be True or False, got 'no'"):
        dlcpu.brgemm(f32(rng, 1, 16, 16), f32(rng, 1, 4, 16), relu="no")
    assert gemm.pack_matmul_operand(y, transpose=np.bool_(True)).shape == (4, 3)
