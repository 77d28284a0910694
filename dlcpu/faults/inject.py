"""Running a model with faults: the golden run, weight and activation injections, and outcomes.

Design: `GoldenRun` runs the fault-free model once over the evaluation inputs (eval mode, so
every sample is independent of the others in its batch) and keeps the input of every top-level
layer.  A fault in top-level layer s therefore re-runs only layers s, s+1, ... on the affected
samples; a fault in the output of a top-level layer starts from the kept output itself.  The
kernels give every sample bitwise the same result whatever the batch and thread count (tested),
so a batch of B faulty inferences, each sample carrying its own fault, equals B single runs.

Activation faults are transient: they are applied to a copy of the kept activations, or by an
output hook (Module.register_output_hook) on a layer inside a block, during one batched call.
Weight faults persist for one injection: the stored weight is flipped in place, the model re-run
from that layer on every evaluation input, and the flip undone bitwise before the next one.

Outcome of a faulty run against the golden one, per sample (most severe first):
  due    the output holds a NaN or Inf (a detected, unrecoverable error)
  sdc5   the fault-free top-1 class left the top 5 (implies the top-1 changed)
  sdc1   the top-1 class changed, the fault-free one is still among the top 5
  masked the top-1 class is unchanged
"""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .bitflip import fixed_point_codes, flip_bits, storage_width
from .sites import LayerRef, WeightTensor, activation_format, batch_size, check_index, find_layer, take_rows

OUTCOMES = ("masked", "sdc1", "sdc5", "due")
MASKED, SDC1, SDC5, DUE = range(4)

#: the fault models: IEEE/integer bit flips of the stored bits, or PyTorchFI's fixed-point model
FAULT_MODELS = ("ieee", "fixed8", "fixed16")


def check_fault_model(fault_model):
    """The bits of one fault-model code (32 for 'ieee': the stored word decides); ValueError for
    an unknown model."""
    if fault_model not in FAULT_MODELS:
        raise ValueError(f"fault model must be one of {', '.join(FAULT_MODELS)}, got {fault_model!r}")
    return 32 if fault_model == "ieee" else int(fault_model[5:])


def classify(golden, faulty):
    """(outcome codes, max-abs deviation) per row of faulty logits (n, classes) against golden."""
    golden = np.asarray(golden, np.float32)
    faulty = np.asarray(faulty, np.float32)
    finite = np.isfinite(faulty).all(axis=1)
    ref = golden.argmax(axis=1)
    top1 = np.where(finite, np.nan_to_num(faulty).argmax(axis=1), -1)
    at_ref = faulty[np.arange(len(faulty)), ref]
    # the fault-free class left the top 5 when at least 5 classes score strictly higher
    above = (faulty > at_ref[:, None]).sum(axis=1)
    outcome = np.full(len(faulty), MASKED, np.int8)
    outcome[top1 != ref] = SDC1
    outcome[(above >= 5) & (top1 != ref)] = SDC5
    outcome[~finite] = DUE
    with np.errstate(invalid="ignore", over="ignore"):
        dev = np.abs(faulty.astype(np.float64) - golden).max(axis=1)
    dev[~finite] = np.inf
    return outcome, dev


class GoldenRun:
    """The fault-free run of `model` on `inputs` (the model's input for all evaluation samples),
    keeping each top-level layer's input; profiles every layer's output format and range.

    The model is left in eval mode.  While a GoldenRun runs the model (here and in run_from),
    its convolutions use the direct algorithm: conv2d's 'auto' may pick Winograd and then
    recompute a whole call with direct when any sample holds an Inf, which would make one
    sample's fault change the rounding of the others in its batch."""

    def __init__(self, model, inputs, input_module=None):
        from ..nn.layers import Conv2d, Sequential
        from .sites import model_layers

        self.model = model.eval()
        self.sequential = isinstance(model, Sequential)
        self.stages = model.modules if self.sequential else [model]
        self.input_format = activation_format(inputs, input_module or self.stages[0])
        self.n = batch_size(inputs, self.input_format)
        self.formats, self.ranges, self.aliases = {}, {}, {}
        self.layers = model_layers(model)
        self._convs = [r.module for r in self.layers if isinstance(r.module, Conv2d)] + (
            [model] if isinstance(model, Conv2d) else [])
        self._outputs = {}
        handles = [ref.module.register_output_hook(self._profiler(ref)) for ref in self.layers]
        try:
            self.kept = [inputs]
            with self.direct_convolutions():
                x = inputs
                for stage in self.stages:
                    x = stage(x)
                    self.kept.append(x)
        finally:
            for h in handles:
                h.remove()
            self._outputs = {}
        # the layout of each kept input (a 3-d sequence is batch-first if its producer says so)
        self.kept_formats = [self.input_format] + [activation_format(y, m) for y, m in zip(self.kept[1:-1], self.stages)]
        self.logits = np.asarray(self.kept[-1], np.float32)
        if self.logits.ndim != 2:
            raise ValueError(f"faults: the model's output must be (N, classes) scores, got shape {self.logits.shape}")

    def _profiler(self, ref):
        name = ref.name

        def hook(module, y):
            fmt = activation_format(y, module)
            self.formats[name] = fmt
            values = fmt.storage(y)
            finite = values[np.isfinite(values)]
            self.ranges[name] = max(self.ranges.get(name, 0.0), float(np.abs(finite).max()) if finite.size else 0.0)
            # a block returns its last layer's output object: both names are one tensor
            for other, out in self._outputs.items():
                if out is y and other.startswith(name + "."):
                    self.aliases[name], self.aliases[other] = other, name
            self._outputs[name] = y
            return y
        return hook

    @contextmanager
    def direct_convolutions(self):
        """Run the model's Conv2d layers with algorithm='direct' inside the block, and a
        quantized model's layers one by one: the golden run hooks every layer, which stops
        the folds of nn.quantize (ConvQuantization.folding), so a faulty run, which hooks one,
        must not fold either, or its other layers would round differently."""
        saved = [m.algorithm for m in self._convs]
        quants = [m.quant for m in self._convs if getattr(m.quant, "folding", False)]
        for m in self._convs:
            m.algorithm = "direct"
        for q in quants:
            q.folding = False
        try:
            yield
        finally:
            for m, a in zip(self._convs, saved):
                m.algorithm = a
            for q in quants:
                del q.folding          # back to the class default

    @property
    def predictions(self):
        return self.logits.argmax(axis=1)

    def run_from(self, stage, x):
        """Layers stage, stage+1, ... on x."""
        with self.direct_convolutions():
            for m in self.stages[stage:]:
                x = m(x)
        return np.asarray(x, np.float32)

    def stage_of(self, ref):
        """The top-level stage holding layer `ref` (0 when the root is not a Sequential)."""
        return ref.path[0] if self.sequential and ref.path else 0

    def is_stage(self, ref):
        """Whether `ref` is a whole top-level stage (its output is the next stage's kept input)."""
        return self.sequential and len(ref.path) == 1


@dataclass
class ChangedValues:
    """What the faults did to the targeted elements: bit patterns (as stored) and values."""

    old_bits: np.ndarray
    new_bits: np.ndarray
    old_values: np.ndarray
    new_values: np.ndarray


def _apply(storage, offsets, bits, fault_model, value_range, restores):
    """Apply the faults to `storage` in place; returns ChangedValues.  Before anything changes,
    a function that writes the saved old elements back is appended to `restores`, so whatever
    interrupts the caller afterwards (Ctrl-C included), running `restores` restores the storage
    bitwise."""
    if not storage.flags.c_contiguous:
        raise ValueError(f"faults: the target storage must be C-contiguous (shape {storage.shape})")
    flat = storage.reshape(-1)
    old = flat[offsets].copy()

    def restore():
        flat[offsets] = old
    restores.append(restore)
    if fault_model == "ieee":
        flips = flip_bits(storage, offsets, bits)
        return ChangedValues(flips.old, flips.new, _values_of(flips.old, storage.dtype),
                             _values_of(flips.new, storage.dtype))
    if storage.dtype != np.float32:
        raise ValueError(f"the {fault_model} fault model applies to float32 values, the target stores {storage.dtype}")
    total_bits = check_fault_model(fault_model)
    code, flipped, new = fixed_point_codes(old, bits, value_range, total_bits)
    flat[offsets] = new
    mask = (1 << total_bits) - 1
    return ChangedValues((code & mask).astype(np.uint32), (flipped & mask).astype(np.uint32), old, new)


def _values_of(patterns, dtype):
    """Values of stored bit patterns (uint32 words) in `dtype`."""
    width = storage_width(dtype)
    words = patterns.astype({8: np.uint8, 16: np.uint16, 32: np.uint32}[width])
    return words.view(dtype)


def activation_faults(golden, layer, rows, indices, bits, fault_model="ieee"):
    """Run one batch of activation faults: sample rows[j] of the golden inputs with bit bits[j] of
    element indices[j] (logical, per sample) of `layer`'s output flipped.  Returns (faulty logits
    (n, classes), ChangedValues)."""
    if not isinstance(golden, GoldenRun):
        raise TypeError(f"activation_faults: golden must be a GoldenRun, got {type(golden).__name__}")
    check_fault_model(fault_model)
    if isinstance(layer, LayerRef):
        ref = layer
    elif isinstance(layer, str):
        ref = find_layer(golden.model, layer)
    else:
        raise TypeError(f"activation_faults: layer must be a layer name such as '2.0' or a LayerRef, got "
                        f"{type(layer).__name__}")
    if ref.name not in golden.formats:
        raise ValueError(f"activation_faults: layer {ref.name} ({ref.module.describe()}) produced no output in the golden run")
    fmt = golden.formats[ref.name]
    rows = _check_ints(rows, "activation_faults: rows")
    n = len(rows)
    if n and (rows.min() < 0 or rows.max() >= golden.n):
        raise ValueError(f"activation_faults: rows must be samples 0..{golden.n - 1} of the golden run, got {rows.tolist()[:8]}")
    idx = check_index(fmt.sample_shape, indices, f"layer {ref.name} output")
    bits = _check_ints(bits, "activation_faults: bits")
    if not len(idx) == len(bits) == n:
        raise ValueError(f"activation_faults: rows, indices and bits must describe the same number of faults, got "
                         f"{n}, {len(idx)} and {len(bits)}")
    offsets = fmt.offsets(n, np.arange(n), idx)
    value_range = golden.ranges[ref.name] or 1.0
    stage = golden.stage_of(ref)
    changed = {}
    if golden.is_stage(ref):        # the output of a top-level layer is the next one's kept input
        x = take_rows(golden.kept[stage + 1], fmt, rows)
        changed["v"] = _apply(fmt.storage(x), offsets, bits, fault_model, value_range, [])
        return golden.run_from(stage + 1, x), changed["v"]

    def hook(module, y):
        if "v" not in changed:        # once, even if the layer is called again in the same forward
            changed["v"] = _apply(fmt.storage(y), offsets, bits, fault_model, value_range, [])
        return y

    x = take_rows(golden.kept[stage], golden.kept_formats[stage], rows)
    with ref.module.register_output_hook(hook):
        logits = golden.run_from(stage, x)
    return logits, changed["v"]


def tensor_range(tensor):
    """max |w| over a weight tensor's finite stored values (the fixed-point models' range)."""
    values = tensor.storage[np.isfinite(tensor.storage)] if tensor.storage.dtype.kind == "f" else tensor.storage
    return float(np.abs(values).max()) if values.size and np.abs(values).max() > 0 else 1.0


def _check_ints(values, what):
    """A 1-d int64 array of `values`; TypeError for non-integers."""
    arr = np.atleast_1d(np.asarray(values))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise TypeError(f"{what} must be a 1-d list of integers, got {arr.dtype} with shape {arr.shape}")
    return arr.astype(np.int64)


def weight_fault(golden, tensor, index, bit, fault_model="ieee"):
    """Run the golden inputs with bit `bit` of weight element `index` (logical) of `tensor` (a
    WeightTensor) flipped; the flip is undone before returning.  Returns (faulty logits,
    ChangedValues)."""
    if not isinstance(golden, GoldenRun):
        raise TypeError(f"weight_fault: golden must be a GoldenRun, got {type(golden).__name__}")
    if not isinstance(tensor, WeightTensor):
        raise TypeError(f"weight_fault: tensor must be a WeightTensor (faults.weight_tensors), got {type(tensor).__name__}")
    check_fault_model(fault_model)
    if tensor.layer.module is not find_layer(golden.model, tensor.layer.name).module:
        raise ValueError(f"weight_fault: {tensor.name} is not a weight of the golden run's model")
    idx = check_index(tensor.shape, index, tensor.name)
    if len(idx) != 1:
        raise ValueError(f"weight_fault: one index at a time, got {len(idx)}")
    offsets = tensor.offsets(idx)
    bits = _check_ints(bit, "weight_fault: bit")
    if len(bits) != 1:
        raise ValueError(f"weight_fault: one bit at a time, got {bits.tolist()}")
    value_range = 1.0 if fault_model == "ieee" else tensor_range(tensor)
    restores = []
    try:
        changed = _apply(tensor.storage, offsets, bits, fault_model, value_range, restores)
        if tensor.after_change:
            tensor.after_change(offsets)
        stage = golden.stage_of(tensor.layer)
        logits = golden.run_from(stage, golden.kept[stage])
    finally:
        try:
            for restore in restores:
                restore()
        finally:
            if tensor.after_change and restores:
                tensor.after_change(offsets)
    return logits, changed
