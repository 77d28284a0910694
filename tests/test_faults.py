"""dlcpu.faults: the bit-flip kernel (pyx/faults.pyx) and fault models against the byte-level
twin in dlcpu._reference, the logical -> stored index maps against the layout conversions,
faulty inferences against hand-made ones, batching and thread-count invariance of campaigns,
and the int8 variant."""
import json

import numpy as np
import pytest
from conftest import ISAS
from threadpoolctl import threadpool_limits

from dlcpu import _reference, faults, nn
from dlcpu.faults import compress
from dlcpu.faults.sites import activation_format, layer_weights
from dlcpu.layout import BlockedTensor, block_weights, from_blocked, to_blocked

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = [np.float32, np.int32, np.uint32, np.int16, np.uint16, np.int8, np.uint8, ml_dtypes.bfloat16]


def _bits(a):
    return np.ascontiguousarray(a).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize]).reshape(-1)


def _random_array(dtype, shape, rng):
    raw = rng.integers(0, 2**32, size=int(np.prod(shape)), dtype=np.uint64).astype(np.uint32)
    size = np.dtype(dtype).itemsize
    return raw.astype({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).view(dtype).reshape(shape).copy()


# -- the kernel and the fault models ------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flip_changes_exactly_one_bit_and_undo_restores_it(dtype):
    rng = np.random.default_rng(0)
    a = _random_array(dtype, (3, 5, 7), rng)        # every bit pattern, NaNs and Infs included
    width = 8 * a.dtype.itemsize
    before = _bits(a).copy()
    for _ in range(50):
        flat, bit = int(rng.integers(a.size)), int(rng.integers(width))
        flips = faults.flip_bits(a, flat, bit)
        diff = _bits(a) ^ before
        assert np.flatnonzero(diff).tolist() == [flat]
        assert int(diff[flat]) == 1 << bit
        np.testing.assert_array_equal(_bits(a), _bits(_reference.bit_flip(before.view(a.dtype).reshape(a.shape),
                                                                           flat, bit)))
        assert int(flips.old[0]) == int(before[flat]) and int(flips.new[0]) == int(before[flat]) ^ (1 << bit)
        flips.undo()
        np.testing.assert_array_equal(_bits(a), before)


def test_flip_uses_logical_index_of_plain_arrays_and_several_flips_undo_together():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with faults.flip(a, (1, 2, 3), 31):
        assert a[1, 2, 3] == -23.0
    assert a[1, 2, 3] == 23.0
    before = a.copy()
    flips = faults.flip_bits(a, [0, 5, 5, 23], [30, 0, 0, 31])      # the same bit twice cancels
    assert a[0, 1, 1] == 5.0 and a[1, 2, 3] == -23.0 and a[0, 0, 0] == 2.0
    flips.undo()
    flips.undo()                                                       # undo is idempotent
    np.testing.assert_array_equal(a.view(np.uint32), before.view(np.uint32))


@pytest.mark.parametrize(("array", "offsets", "bits", "match"), [
    (np.zeros(4, np.float32), 4, 0, "outside the array's 4 elements"),
    (np.zeros(4, np.float32), -1, 0, "outside"),
    (np.zeros(4, np.float32), 0, 32, "bit 32 is beyond the 32-bit"),
    (np.zeros(4, np.int8), 0, 8, "bit 8 is beyond the 8-bit"),
    (np.zeros(4, np.float64), 0, 0, "float32, bfloat16, int8"),
    (np.zeros(4, np.float16), 0, 0, "float32, bfloat16, int8"),
    (np.zeros((4, 4), np.float32)[:, 1], 0, 0, "C-contiguous"),
    (np.zeros(4, np.float32), [0, 1], [0], "equally long"),
])
def test_flip_bits_refuses_bad_targets(array, offsets, bits, match):
    with pytest.raises(ValueError, match=match):
        faults.flip_bits(array, offsets, bits)


def test_flip_refuses_index_out_of_range_and_read_only_arrays():
    with pytest.raises(ValueError, match="coordinate 1 is 3, outside 0..2"):
        faults.flip(np.zeros((2, 3), np.float32), (0, 3), 0)
    with pytest.raises(ValueError, match="has 1 coordinates"):
        faults.flip(np.zeros((2, 3), np.float32), (0,), 0)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        faults.flip_bits(ro, 0, 0)
    with pytest.raises(TypeError, match="integers"):
        faults.flip_bits(np.zeros(4, np.float32), [0.5], [1])


@pytest.mark.parametrize(("spec", "width", "is_float", "expected"), [
    ("all", 32, True, list(range(32))),
    ("sign", 32, True, [31]),
    ("exponent", 32, True, list(range(23, 31))),
    ("mantissa", 32, True, list(range(23))),
    ("exponent", 16, True, list(range(7, 15))),
    ("sign", 8, False, [7]),
    ("0-3,30", 32, True, [0, 1, 2, 3, 30]),
    (" 5 ", 8, False, [5]),
])
def test_parse_bits(spec, width, is_float, expected):
    assert faults.parse_bits(spec, width, is_float) == expected


@pytest.mark.parametrize(("spec", "width", "is_float", "match"), [
    ("32", 32, True, "bit 32 is beyond the 32-bit"),
    ("0-40", 32, True, "beyond"),
    ("8", 8, False, "beyond the 8-bit"),
    ("exponent", 8, False, "names a float field"),
    ("5-3", 32, True, "backwards"),
    ("x", 32, True, "cannot read"),
    ("", 32, True, "expected"),
])
def test_parse_bits_refuses(spec, width, is_float, match):
    with pytest.raises(ValueError, match=match):
        faults.parse_bits(spec, width, is_float)


def test_random_and_bit_error_flips_are_seeded_distinct_and_sized():
    a = np.zeros(1000, np.float32)
    f1 = faults.random_flips(a, 50, np.random.default_rng(3), bits="exponent")
    pairs = set(zip(f1.offsets.tolist(), f1.bits.tolist()))
    assert len(pairs) == 50 and all(23 <= b <= 30 for _, b in pairs)
    f1.undo()
    f2 = faults.random_flips(a, 50, np.random.default_rng(3), bits="exponent")
    assert np.array_equal(f1.offsets, f2.offsets) and np.array_equal(f1.bits, f2.bits)
    f2.undo()
    counts = []
    for seed in range(40):
        f = faults.bit_error_flips(a, 1e-3, np.random.default_rng(seed))
        counts.append(len(f.offsets))
        f.undo()
    assert abs(np.mean(counts) - 32.0) < 4.0          # 32,000 bits at 1e-3
    assert not a.view(np.uint32).any()
    with pytest.raises(ValueError, match="rate must be a probability"):
        faults.bit_error_flips(a, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be an int"):
        faults.random_flips(a, 10**9, np.random.default_rng(0))


def test_fixed_point_flip_matches_the_step_by_step_twin():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(-3, 3, 400), [0.0, 2.0, -2.0, 5.0, -7.0, np.nan, np.inf]]).astype(np.float32)
    for total_bits in (8, 16):
        bits = rng.integers(0, total_bits, len(values))
        fast = faults.fixed_point_flip(values, bits, 2.0, total_bits)
        slow = np.array([_reference.fixed_point_flip(float(v), int(b), 2.0, total_bits) for v, b in zip(values, bits)],
                        np.float32)
        np.testing.assert_array_equal(fast, slow)
    with pytest.raises(ValueError, match="bit positions must be in 0..7"):
        faults.fixed_point_flip([1.0], [8], 1.0)
    with pytest.raises(ValueError, match="value_range"):
        faults.fixed_point_flip([1.0], [0], 0.0)


def test_fixed_point_flip_matches_pytorchfi():
    torch = pytest.importorskip("torch")
    pfi = pytest.importorskip("pytorchfi.neuron_error_models")
    flipper = object.__new__(pfi.single_bit_flip_func)
    flipper.bits = 8
    rng = np.random.default_rng(2)
    values = rng.uniform(-1.5, 1.5, 200).astype(np.float32)     # inside the range: PyTorchFI asserts otherwise
    bits = rng.integers(0, 8, len(values))
    theirs = np.array([float(flipper._flip_bit_signed(torch.tensor(v), 1.5, int(b))) for v, b in zip(values, bits)],
                      np.float32)
    np.testing.assert_array_equal(faults.fixed_point_flip(values, bits, 1.5, 8), theirs)


# -- logical -> stored index maps ----------------------------------------------------------------
@pytest.mark.parametrize("channels", [(1, 1), (15, 17), (16, 16), (17, 33), (33, 3)])
def test_conv_weight_offsets_round_trip_and_never_hit_padding(channels):
    k, c = channels
    conv = nn.Conv2d(c, k, 3, bias=False, seed=1)
    (tensor,) = layer_weights(faults.LayerRef("0", (0,), conv))
    logical = np.arange(1, k * c * 9 + 1, dtype=np.float32).reshape(k, c, 3, 3)
    stored = block_weights(logical).data.reshape(-1)
    idx = np.stack(np.unravel_index(np.arange(logical.size), logical.shape), axis=1)
    offsets = tensor.offsets(idx)
    np.testing.assert_array_equal(stored[offsets], logical.reshape(-1))       # every element found
    assert len(np.unique(offsets)) == logical.size
    padding = np.setdiff1d(np.arange(stored.size), offsets)
    assert not stored[padding].any()                                           # the rest is padding


@pytest.mark.parametrize("channels", [1, 15, 16, 17, 33])
def test_activation_offsets_round_trip_and_never_hit_padding(channels):
    n, h, w = 3, 5, 4
    x = np.arange(1, n * channels * h * w + 1, dtype=np.float32).reshape(n, channels, h, w)
    xb = to_blocked(x)
    fmt = activation_format(xb)
    assert fmt.sample_shape == (channels, h, w)
    rows = np.repeat(np.arange(n), channels * h * w)
    idx = np.tile(np.stack(np.unravel_index(np.arange(channels * h * w), (channels, h, w)), axis=1), (n, 1))
    offsets = fmt.offsets(n, rows, idx)
    np.testing.assert_array_equal(xb.data.reshape(-1)[offsets], x.reshape(-1))
    assert not np.delete(xb.data.reshape(-1), offsets).any()


def test_sequence_and_row_offsets():
    y = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)               # (T, N, F)
    fmt = activation_format(y)
    assert fmt.sample_shape == (2, 4)
    assert y.reshape(-1)[fmt.offsets(3, [2], [[1, 3]])[0]] == y[1, 2, 3]
    first = nn.LSTM(4, 4, batch_first=True)
    fmt = activation_format(y, first)                                           # (N, T, F)
    assert fmt.sample_shape == (3, 4)
    assert y.reshape(-1)[fmt.offsets(2, [1], [[2, 3]])[0]] == y[1, 2, 3]
    fmt = activation_format(y[0])
    assert y[0].reshape(-1)[fmt.offsets(3, [2], [[1]])[0]] == y[0, 2, 1]


def test_batchnorm_targets_are_the_logical_channels():
    bn = nn.BatchNorm2d(17)
    tensors = layer_weights(faults.LayerRef("1", (1,), bn))
    assert [(t.param, t.shape) for t in tensors] == [("weight", (17,)), ("bias", (17,))]
    assert tensors[0].storage.shape == (32,)
    model = nn.Sequential(nn.Conv2d(1, 17, 3, padding=1), bn, nn.GlobalAvgPool()).eval()
    golden = faults.GoldenRun(model, to_blocked(np.ones((2, 1, 4, 4), np.float32)))
    (gamma, _) = faults.weight_tensors(model, ["1"])
    with pytest.raises(ValueError, match="coordinate 0 must be in 0..16"):
        faults.weight_fault(golden, gamma, [17], 0)
    with pytest.raises(ValueError, match="not a weight of the golden run's model"):
        faults.weight_fault(golden, layer_weights(faults.LayerRef("1", (1,), nn.BatchNorm2d(17)))[0], [1], 0)
    with pytest.raises(TypeError, match="golden must be a GoldenRun"):
        faults.weight_fault(None, gamma, [1], 0)
    with pytest.raises(ValueError, match="bit 32 is beyond"):
        faults.weight_fault(golden, gamma, [1], 32)
    with pytest.raises(ValueError, match="rows must be samples 0..1"):
        faults.activation_faults(golden, "1", [2], [[0, 0, 0]], [3])
    with pytest.raises(ValueError, match="same number of faults"):
        faults.activation_faults(golden, "1", [0, 1], [[0, 0, 0]], [3, 4])
    with pytest.raises(TypeError, match="integers"):
        faults.activation_faults(golden, "1", [0.5], [[0, 0, 0]], [3])
    with pytest.raises(ValueError, match="fault model must be one of ieee, fixed8, fixed16, got 'fixed'"):
        faults.activation_faults(golden, "1", [0], [[0, 0, 0]], [3], fault_model="fixed")
    with pytest.raises(ValueError, match="fault model must be one of"):
        faults.weight_fault(golden, gamma, [1], 3, fault_model="ieee754")


# -- faulty inferences ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn():
    model = nn.digits_resnet(seed=3)
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    # a few training steps so that batch norm has non-trivial running statistics
    opt = nn.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        logits = model(to_blocked(x))
        _, g = nn.softmax_cross_entropy(logits, np.arange(40) % 10)
        model.backward(g)
        opt.step()
        opt.zero_grad()
    return model.eval(), x


def _hooked_logits(model, x_one, layer, change):
    """The model on one input with change(nchw_or_plain_output) applied to `layer`'s output by
    a hook that goes through the logical layout (an independent path from the offset maps)."""
    def hook(module, y):
        if hasattr(y, "kind"):
            plain = from_blocked(y)
            change(plain)
            return to_blocked(plain)
        y = y.copy()
        change(y)
        return y
    ref = faults.find_layer(model, layer)
    with ref.module.register_output_hook(hook):
        return model(to_blocked(x_one))


@pytest.mark.parametrize("layer", ["0", "1", "2.0", "2.4", "3.2", "3.5", "4", "5"])
def test_activation_fault_equals_a_hand_made_faulty_inference(cnn, layer):
    model, x = cnn
    golden = faults.GoldenRun(model, to_blocked(x))
    fmt = golden.formats[layer]
    rng = np.random.default_rng(int(layer.replace(".", "")))
    rows = rng.integers(0, len(x), 6)
    idx = np.stack([rng.integers(0, d, 6) for d in fmt.sample_shape], axis=1)
    bits = rng.integers(0, 32, 6)
    logits, changed = faults.activation_faults(golden, layer, rows, idx, bits)
    for j in range(6):
        expected = _hooked_logits_bits(model, x[rows[j]:rows[j] + 1], layer, idx[j], int(bits[j]))
        np.testing.assert_array_equal(logits[j], expected[0])
    assert np.array_equal(changed.new_bits, changed.old_bits ^ (np.uint32(1) << bits.astype(np.uint32)))


def _hooked_logits_bits(model, x_one, layer, index, bit):
    def change(y):
        where = (0, *(int(i) for i in index))
        word = np.array([y[where]], np.float32).view(np.uint32) ^ np.uint32(1 << bit)
        y[where] = word.view(np.float32)[0]
    with np.errstate(all="ignore"):
        return _hooked_logits(model, x_one, layer, change)


def test_weight_fault_equals_a_model_with_the_flipped_weight_and_is_undone(cnn):
    model, x = cnn
    golden = faults.GoldenRun(model, to_blocked(x))
    before = {k: v.copy() for k, v in model.state().items()}
    for w in faults.weight_tensors(model):
        rng = np.random.default_rng(len(w.name))
        index = [int(rng.integers(d)) for d in w.shape]
        bit = int(rng.integers(0, 32))
        with np.errstate(all="ignore"):
            logits, changed = faults.weight_fault(golden, w, index, bit)
        state = {k: v.copy() for k, v in before.items()}
        state[w.name] = _reference.bit_flip(state[w.name], int(np.ravel_multi_index(index, w.shape)), bit)
        twin = nn.build(model.config())
        twin.load_state(state)
        with np.errstate(all="ignore"):
            expected = twin.eval()(to_blocked(x))
        np.testing.assert_array_equal(logits, expected, err_msg=w.name)
        assert int(changed.old_bits[0]) ^ int(changed.new_bits[0]) == 1 << bit
        after = model.state()
        assert all(np.array_equal(after[k].view(np.uint32), before[k].view(np.uint32)) for k in before), w.name


def test_classify():
    golden = np.array([[5, 4, 3, 2, 1, 0, -1]] * 5, np.float32)
    faulty = golden.copy()
    faulty[1, 1] = 6                   # top-1 changes, class 0 is second: sdc1
    faulty[2, 1:6] = 9                 # class 0 falls out of the top 5: sdc5
    faulty[3, 2] = np.nan              # due
    faulty[4, 6] = np.inf              # due
    outcome, dev = faults.classify(golden, faulty)
    assert [faults.OUTCOMES[o] for o in outcome] == ["masked", "sdc1", "sdc5", "due", "due"]
    assert dev[0] == 0 and dev[1] == 2 and np.isinf(dev[3])


# -- campaigns -----------------------------------------------------------------------------------
def _array(x):
    return x.data if isinstance(x, BlockedTensor) else x


def test_batched_campaign_equals_single_runs_and_thread_counts(cnn):
    model, x = cnn
    kept = None
    records = {}
    for threads, batch in ((1, 1), (1, 4096), (2, 7), (2, 2048)):
        with threadpool_limits(threads, "openmp"):
            camp = faults.Campaign(model, to_blocked(x), target="activations", n=200, seed=11, batch=batch)
            if kept is None:
                kept = [_array(k).copy() for k in camp.golden.kept]
            with np.errstate(all="ignore"):
                records[(threads, batch)] = list(camp.records())
    first = records[(1, 1)]
    assert len(first) == 200 and [r["i"] for r in first] == list(range(200))
    for key, recs in records.items():
        assert recs == first, key
    assert {r["outcome"] for r in first} >= {"masked"}
    # the golden run's kept activations are never touched by the faults
    again = faults.Campaign(model, to_blocked(x), target="activations", n=1, seed=11)
    for a, b in zip(kept, again.golden.kept):
        np.testing.assert_array_equal(a, _array(b))


def test_weight_campaign_is_reproducible_and_leaves_weights_unchanged(cnn):
    model, x = cnn
    before = {k: v.copy() for k, v in model.state().items()}
    runs = []
    for threads in (1, 2):
        with threadpool_limits(threads, "openmp"):
            camp = faults.Campaign(model, to_blocked(x[:16]), target="weights", n=150, seed=5, bits="exponent")
            runs.append(list(camp.records()))
    assert runs[0] == runs[1]
    assert all(23 <= r["bit"] <= 30 and r["images"] == 16 for r in runs[0])
    after = model.state()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_draws_cover_the_fault_space_uniformly(cnn):
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x), target="activations", n=20000, seed=0, bits="sign")
    site, element, bit, sample = camp.draw(0, 20000)
    assert set(bit.tolist()) == {31}
    sizes = np.array([s.size for s in camp.sites], float)
    observed = np.bincount(site, minlength=len(sizes)) / 20000
    np.testing.assert_allclose(observed, sizes / sizes.sum(), atol=0.01)
    assert sample.min() == 0 and sample.max() == len(x) - 1
    assert all(element[site == s].max() < camp.sites[s].size for s in np.unique(site))
    # injection i is the same fault however the range is cut
    parts = [camp.draw(a, b) for a, b in ((0, 3000), (3000, 4100), (4100, 20000))]
    for whole, part in zip((site, element, bit, sample), zip(*parts)):
        np.testing.assert_array_equal(whole, np.concatenate(part))


def test_the_results_file_holds_the_records(cnn, tmp_path):
    model, x = cnn
    for target in ("activations", "weights"):
        camp = faults.Campaign(model, to_blocked(x[:8]), target=target, n=300, seed=2)
        path = tmp_path / f"{target}.jsonl"
        with np.errstate(all="ignore"):
            camp.run(str(path))
            records = list(camp.records())
        lines = path.read_text().splitlines()
        assert json.loads(lines[0]) == camp.header()
        assert [json.loads(line) for line in lines[1:]] == records


def test_campaign_on_the_recurrent_model():
    model = nn.digits_rnn(hidden=20, seed=1).eval()
    x = np.random.default_rng(0).standard_normal((8, 12, 8)).astype(np.float32)   # (T, N, F)
    single = faults.Campaign(model, x, target="activations", n=200, seed=4, batch=1)
    batched = faults.Campaign(model, x, target="activations", n=200, seed=4)
    with np.errstate(all="ignore"):
        assert list(single.records()) == list(batched.records())
    assert {s.layer for s in single.sites} == {"0", "1", "2"}
    assert single.sites[0].shape == (8, 20)
    weights = faults.Campaign(model, x, target="weights", n=100, seed=4)
    assert {s.param for s in weights.sites} >= {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    with np.errstate(all="ignore"):
        assert len(list(weights.records())) == 100


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"target": "neurons"}, ValueError, "target must be"),
    ({"layers": ["9"]}, ValueError, "layer '9' is not in the model"),
    ({"bits": "33"}, ValueError, "bit 33 is beyond"),
    ({"fault_model": "fixed8", "bits": "exponent"}, ValueError, "names a float field"),
    ({"fault_model": "ieee754"}, ValueError, "fault model must be"),
    ({"n": 0}, ValueError, "n must be 'auto' or an int"),
    ({"n": "many"}, ValueError, "n must be 'auto' or an int"),
    ({"seed": -1}, ValueError, "seed must be"),
    ({"batch": 0}, ValueError, "batch must be"),
    ({"target": "weights", "layers": ["4"]}, ValueError, "have no weights"),
])
def test_campaign_refuses_bad_parameters(cnn, kwargs, error, match):
    model, x = cnn
    with pytest.raises(error, match=match):
        faults.Campaign(model, to_blocked(x[:4]), **kwargs)


# -- the int8 variant ------------------------------------------------------------------------------
def test_int8_variant_stores_codes_and_flips_hit_them(cnn):
    model, x = cnn
    q, layers = compress.quantize_int8(model)
    assert set(layers) == {"0", "2.0", "2.2", "3.0", "3.2", "3.5", "5"}
    golden = faults.GoldenRun(q, to_blocked(x))
    dense = faults.GoldenRun(model, to_blocked(x))
    assert (golden.predictions == dense.predictions).mean() > 0.9
    conv = next(w for w in faults.weight_tensors(q) if w.name == "2.0.weight")
    assert conv.storage.dtype == np.int8 and conv.shape == (16, 16, 3, 3)
    codes = layers["2.0"]
    compute_before = q.modules[2].conv1.weight.data.copy()
    logits, changed = faults.weight_fault(golden, conv, [3, 4, 1, 2], 7)
    old = int(np.array([changed.old_bits[0]]).astype(np.uint8).view(np.int8)[0])
    assert codes.codes[3, 4, 1, 2] == old                                      # undone
    np.testing.assert_array_equal(q.modules[2].conv1.weight.data, compute_before)
    # the faulty run used the dequantized flipped code
    state = q.state()
    flipped = np.int8(np.uint8(np.int8(old).view(np.uint8) ^ np.uint8(0x80)).view(np.int8))
    state["2.0.weight"][3, 4, 1, 2] = np.float32(flipped) * codes.scales[3]
    twin = nn.build(q.config())
    twin.load_state(state)
    np.testing.assert_array_equal(logits, twin.eval()(to_blocked(x)))
    camp = faults.Campaign(q, to_blocked(x[:8]), target="weights", n=50, layers=list(layers), params=("weight",))
    assert {s.dtype for s in camp.sites} == {"int8"} and all(len(s.bits) == 8 for s in camp.sites)


def test_per_input_rate_of_weight_campaigns_agrees_between_run_and_report(cnn):
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x[:16]), target="weights", n=120, seed=8, bits="30")
    with np.errstate(all="ignore"):
        state = camp.run()
        records = list(camp.records())
    (row,) = faults.summarize(records)
    rate, low, high = state.per_image_rate()
    assert row.per_input.rate == pytest.approx(rate) and row.per_input.low == pytest.approx(low)
    assert row.per_input.high == pytest.approx(high)
    by_hand = np.mean([r["sdc1_images"] / r["images"] for r in records])
    assert rate == pytest.approx(by_hand) and low <= rate <= high
    assert faults.summarize(list(faults.Campaign(model, to_blocked(x), n=20).records()))[0].per_input is None


def test_resume_after_a_kill_during_the_header_or_right_after_it(cnn, tmp_path):
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x), n=50, seed=3)
    whole = tmp_path / "whole.jsonl"
    with np.errstate(all="ignore"):
        camp.run(str(whole))
        lines = whole.read_text().splitlines(keepends=True)
        for kept in (lines[0][:25], lines[0], "".join(lines[:3]) + lines[3][:10]):
            part = tmp_path / "part.jsonl"
            part.write_text(kept)
            state = camp.run(str(part), resume=True)
            assert part.read_text() == whole.read_text(), kept[:40]
            assert state.done == 50


@pytest.mark.parametrize("isa", ISAS)
def test_batching_is_exact_on_every_isa_path(cnn, isa, monkeypatch):
    """The batched campaign relies on each sample's result not depending on its batch: true on
    every microkernel path."""
    monkeypatch.setenv("DLCPU_ISA", isa)
    model, x = cnn
    with np.errstate(all="ignore"):
        one = list(faults.Campaign(model, to_blocked(x), n=120, seed=21, batch=1).records())
        many = list(faults.Campaign(model, to_blocked(x), n=120, seed=21).records())
    assert one == many


# -- review fixes: sampling without repetition, layer lists, other roots, pinned algorithm ----------
def test_permute_is_a_bijection_and_campaigns_never_repeat_a_fault(cnn):
    from dlcpu.faults.campaign import permute

    keys = np.arange(1, 5, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for n in (1, 2, 3, 17, 1000, 4096, 5001):
        p = permute(np.arange(n, dtype=np.uint64), n, keys)
        assert sorted(p.tolist()) == list(range(n))
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x[:4]), target="weights", layers=["5"], params=["bias"], bits="30-31",
                           n="auto")
    assert camp.population == 20 and camp.n == 20          # the formula never asks for more than N
    _, element, bit, _ = camp.draw(0, 20)
    assert len(set(zip(element.tolist(), bit.tolist()))) == 20
    with pytest.raises(ValueError, match="more than the 20 possible faults"):
        faults.Campaign(model, to_blocked(x[:4]), target="weights", layers=["5"], params=["bias"], bits="30-31", n=21)


def test_layer_lists_are_deduplicated_and_put_in_model_order(cnn):
    model, x = cnn
    a = faults.Campaign(model, to_blocked(x), layers=["2.0", "0"], n=60, seed=2)
    b = faults.Campaign(model, to_blocked(x), layers=["0", "2.0", "0"], n=60, seed=2)
    assert [s.layer for s in b.sites] == ["0", "2.0"] and a.population == b.population
    with np.errstate(all="ignore"):
        assert list(a.records()) == list(b.records())
    with pytest.raises(ValueError, match="layers 2 and 2.4 are the same tensor"):
        faults.Campaign(model, to_blocked(x), layers=["2", "2.4"], n=10)
    weights = faults.Campaign(model, to_blocked(x), target="weights", layers=["2"], n=10)
    assert {s.layer for s in weights.sites} == {"2.0", "2.1", "2.2", "2.3"}      # a block names its layers


class _Net(nn.Module):
    """A root that is not a Sequential (and does not call Module.__init__)."""

    def __init__(self):
        self.training = True
        self.name = "_Net"
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1, seed=2), nn.GlobalAvgPool(), nn.Linear(4, 3)

    def children(self):
        return [self.conv, self.pool, self.fc]

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def test_a_root_that_is_not_a_sequential():
    net = _Net()
    x = np.random.default_rng(4).standard_normal((5, 1, 6, 6)).astype(np.float32)
    golden = faults.GoldenRun(net, to_blocked(x))
    assert set(golden.formats) == {"0", "1", "2"}
    (w, _) = faults.weight_tensors(net, ["0"])
    with np.errstate(all="ignore"):
        logits, _ = faults.weight_fault(golden, w, [1, 0, 2, 2], 30)
    twin = _Net()
    state = net.state() if hasattr(net, "state") else None
    twin.conv.weight.data[...] = net.conv.weight.data
    twin.fc.weight.data[...], twin.fc.bias.data[...] = net.fc.weight.data, net.fc.bias.data
    with faults.flip(twin.conv.weight_b.data, (0, 0, 2, 2, 0, 1), 30), np.errstate(all="ignore"):
        np.testing.assert_array_equal(logits, twin.eval()(to_blocked(x)))
    del state
    logits, _ = faults.activation_faults(golden, "1", [3], [[2]], [31])
    expected = _hooked_logits_bits(net, x[3:4], "1", [2], 31)
    np.testing.assert_array_equal(logits[0], expected[0])


def test_convolutions_run_direct_under_a_golden_run_so_an_inf_stays_in_its_sample():
    # the fault goes into the batch-norm output, upstream of a convolution where 'auto' picks Winograd
    model = nn.Sequential(nn.BatchNorm2d(128), nn.Conv2d(128, 128, 3, padding=1, bias=False, seed=1),
                          nn.GlobalAvgPool(), nn.Linear(128, 10, seed=2)).eval()
    assert dlcpu_winograd_applies(model)
    x = np.random.default_rng(5).uniform(1.2, 1.9, (3, 128, 14, 14)).astype(np.float32)   # exponent 0x7f
    golden = faults.GoldenRun(model, to_blocked(x))
    assert model.modules[1].algorithm == "auto"                     # restored after the run
    rows, idx, bits = [0, 1, 2], [[0, 0, 0], [5, 3, 3], [7, 1, 1]], [30, 0, 0]   # sample 0's value -> NaN
    with np.errstate(all="ignore"):
        batched, _ = faults.activation_faults(golden, "0", rows, idx, bits)
        for j in range(3):
            single, _ = faults.activation_faults(golden, "0", [rows[j]], [idx[j]], [bits[j]])
            np.testing.assert_array_equal(batched[j], single[0])


def dlcpu_winograd_applies(model):
    """Whether conv2d's 'auto' would pick Winograd for the model's first layer on 14x14 inputs."""
    from dlcpu import cpu
    from dlcpu.conv import choose_algorithm, conv_shape

    shape = conv_shape((3, 128, 14, 14), (128, 128, 3, 3), 1, 1)
    return choose_algorithm(shape, cpu.resolve_isa()) != "direct"


def test_model_tensor_flips_never_hit_padding_and_refresh_int8_weights(cnn):
    model, _ = cnn
    conv = next(w for w in faults.weight_tensors(model) if w.name == "3.5.weight")       # 16 -> 32, 1x1
    before = conv.storage.copy()
    flips = conv.random_flips(200, np.random.default_rng(0))
    logical = np.stack(np.unravel_index(np.arange(conv.size), conv.shape), axis=1)
    assert set(flips.offsets.tolist()) <= set(conv.offsets(logical).tolist())
    flips.undo()
    np.testing.assert_array_equal(conv.storage.view(np.uint32), before.view(np.uint32))
    q, layers = compress.quantize_int8(model)
    codes = next(w for w in faults.weight_tensors(q) if w.name == "5.weight")
    compute = q.modules[5].weight.data.copy()
    flips = codes.bit_error_flips(0.01, np.random.default_rng(1))
    assert len(flips.offsets) > 0
    changed = q.modules[5].weight.data.reshape(-1)[flips.offsets]
    expected = codes.storage.reshape(-1)[flips.offsets].astype(np.float32) * layers["5"].scales[flips.offsets // 32]
    np.testing.assert_array_equal(changed, expected)
    flips.undo()
    np.testing.assert_array_equal(q.modules[5].weight.data, compute)


def test_fixed_point_records_carry_the_fixed_point_codes(cnn):
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x), fault_model="fixed8", n=200, seed=6)
    with np.errstate(all="ignore"):
        records = list(camp.records())
    for r in records:
        assert r["dtype"] == "fixed8" and 0 <= r["bit"] < 8 and len(r["old"]) == 4
        assert int(r["old"], 16) ^ int(r["new"], 16) == 1 << r["bit"]


def test_resume_refuses_other_inputs_of_the_same_size(cnn, tmp_path):
    model, x = cnn
    path = str(tmp_path / "r.jsonl")
    faults.Campaign(model, to_blocked(x), n=30).run(path)
    other = faults.Campaign(model, to_blocked(x[::-1].copy()), n=30)
    with pytest.raises(ValueError, match="inputs_sha256"):
        other.run(path, resume=True)


def test_per_input_interval_does_not_collapse_when_nothing_changed():
    from dlcpu.faults.stats import mean_fraction_interval

    mean, low, high = mean_fraction_interval(0.0, 0.0, 500)
    assert mean == 0 and low == 0 and 0.005 < high < 0.01


def test_resume_refuses_a_malformed_record(cnn, tmp_path):
    model, x = cnn
    camp = faults.Campaign(model, to_blocked(x), n=20, seed=3)
    path = tmp_path / "r.jsonl"
    camp.run(str(path))
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[5])
    del rec["outcome"]
    lines[5] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"r.jsonl:6: outcome must be one of"):
        camp.run(str(path), resume=True)
    assert path.read_bytes() == before
