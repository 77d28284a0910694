"""Statistical fault-injection campaigns: a seeded sample of single-bit faults, run in batches,
recorded one injection per JSONL line so that an interrupted campaign resumes where it stopped.

Design:
- The fault space is every (sample, element, bit) of the targeted layers' outputs (activation
  campaigns) or every (element, bit) of their weights (weight campaigns, each fault evaluated on
  all the campaign's inputs).  Its size N gives the sample size of Leveugle et al. (stats.py).
- Injection i is fault number permute(i) of the fault space (a keyed pseudo-random permutation,
  seeded by `seed`): faults are drawn uniformly and without repetition, as the sample-size
  formula assumes, and injection i is the same fault whatever the batch size, the thread count,
  or where an earlier run was interrupted.
- Activation faults run `batch` at a time, grouped by layer (inject.activation_faults); weight
  faults one at a time on the kept inputs of their layer (inject.weight_fault).
- The results file starts with a header record holding the campaign's parameters; each
  injection is one line, written and flushed as soon as its batch is evaluated, in order of i.
  `resume` checks the header against this campaign, drops a truncated last line (a kill during
  a write) and continues at the first injection not on file: nothing is repeated or lost.
  Lines reach the OS at every flush, so they survive Ctrl-C and SIGKILL (not a power cut: no
  fsync per line, which would cost more than the injection).
"""
import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .. import __version__
from .bitflip import is_float_storage, parse_bits, storage_width
from .inject import DUE, OUTCOMES, SDC1, SDC5, GoldenRun, activation_faults, check_fault_model, classify, weight_fault
from .report import FORMAT, check_record
from .sites import find_layer, model_layers, weight_tensors
from .stats import mean_fraction_interval, sample_size

TARGETS = ("activations", "weights")
#: header fields that must agree for --resume to continue a file
RESUME_KEYS = ("model_sha256", "target", "fault_model", "bits", "layers", "params", "seed", "n", "confidence",
               "margin", "inputs", "inputs_sha256")


@dataclass(frozen=True)
class Site:
    """One injectable tensor: an activation (layer output, per sample) or a weight tensor."""

    layer: str
    kind: str
    param: object         # parameter name for weights, None for activations
    shape: tuple           # logical shape (per sample for activations)
    dtype: str
    bits: tuple            # allowed bit positions
    tensor: object = None  # the WeightTensor (weights)
    width: int = 32        # bits per stored element

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def hex_digits(self):
        """Hex digits of one stored element's bit pattern in the records."""
        return self.width // 4


class Campaign:
    """A single-bit fault-injection campaign on `model` over `inputs` (the model's input for the
    evaluation samples: a blocked image batch for CNNs, a (T, N, F) sequence for recurrent models).

    target 'activations' (transient: one layer output of one sample during one inference) or
    'weights' (persistent for one injection, evaluated on every input); bits: a parse_bits spec;
    layers: names of the targeted layers (default: every leaf layer with an output, or every
    layer with weights); params: for weight campaigns, only these parameter names (e.g.
    ('weight',) leaves biases and batch-norm shifts out); fault_model 'ieee' (flip the stored bits) or 'fixed8'/'fixed16'
    (PyTorchFI's fixed-point model); n: an int or 'auto' (the statistical sample size for
    `margin` at `confidence`); batch: faulty inferences per call in activation campaigns.
    `model_id` (default: model_digest(model)) goes into the header so that a file is only
    resumed by the same model."""

    def __init__(self, model, inputs, *, target="activations", bits="all", layers=None, params=None, fault_model="ieee",
                 n="auto", confidence=0.95, margin=0.01, seed=0, batch=2048, model_id=None, model_path=None,
                 input_module=None):
        if target not in TARGETS:
            raise ValueError(f"campaign: target must be 'activations' or 'weights', got {target!r}")
        self._width = check_fault_model(fault_model)     # bits of a fixed-point code (32 for ieee)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"campaign: seed must be an int >= 0, got {seed!r}")
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or not 1 <= batch <= 65536:
            raise ValueError(f"campaign: batch must be an int in 1..65536, got {batch!r}")
        if layers is not None:
            # one order for any spelling of the list: the draws map onto sites in this order
            refs = {find_layer(model, str(name)).name: None for name in layers}
            layers = sorted(refs, key=_path_key)
        self.target, self.fault_model, self.seed, self.batch = target, fault_model, int(seed), int(batch)
        self.bits_spec = str(bits)
        self.model_path = model_path
        self.model_id = model_id or model_digest(model)
        self.golden = GoldenRun(model, inputs, input_module)
        self.params = None if params is None else tuple(str(p) for p in params)
        self.sites = self._sites(layers)
        if not self.sites:
            raise ValueError(f"campaign: no {target} to inject into in the selected layers")
        per_input = np.array([s.size * len(s.bits) for s in self.sites], np.int64)
        self._cum = np.concatenate([[0], np.cumsum(per_input)])
        self._n_bits = np.array([len(s.bits) for s in self.sites], np.int64)
        self._bit_table = np.zeros((len(self.sites), self._n_bits.max()), np.int64)
        for i, s in enumerate(self.sites):
            self._bit_table[i, :len(s.bits)] = s.bits
        self.inputs = self.golden.n
        self.inputs_id = _array_digest(inputs)
        self.population = int(self._cum[-1]) * (self.inputs if target == "activations" else 1)
        if self.population >= 2**62:
            raise ValueError(f"campaign: the fault space has {self.population:.3g} faults, more than this sampler "
                             f"handles (2^62); target fewer layers or inputs")
        self.confidence, self.margin = confidence, margin
        self.auto = isinstance(n, str) and n == "auto"
        planned = sample_size(self.population, margin, confidence)    # also checks margin and confidence
        if self.auto:
            self.n = planned
        elif isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1:
            self.n = int(n)
        else:
            raise ValueError(f"campaign: n must be 'auto' or an int >= 1, got {n!r}")
        if self.n > self.population:
            raise ValueError(f"campaign: n = {self.n} is more than the {self.population} possible faults; faults are "
                             f"drawn without repetition, so n must be at most that")
        self._keys = np.random.default_rng([self.seed, 0xF1]).integers(0, 2**63, _FEISTEL_ROUNDS, dtype=np.uint64)

    # -- the fault space ------------------------------------------------------------------------
    def _sites(self, layers):
        float_model = self.fault_model == "ieee"
        out = []
        if self.target == "activations":
            refs = ([find_layer(self.golden.model, name) for name in layers] if layers is not None
                    else [r for r in model_layers(self.golden.model) if r.is_leaf])
            for ref in refs:
                fmt = self.golden.formats.get(ref.name)
                if fmt is None:
                    raise ValueError(f"campaign: layer {ref.name} ({ref.module.describe()}) produced no output in the golden run")
                width = self._width
                bits = parse_bits(self.bits_spec, width, float_model)
                dtype = "float32" if float_model else self.fault_model   # fixed8: the stored 8-bit code
                out.append(Site(ref.name, "activations", None, fmt.sample_shape, dtype, tuple(bits), width=width))
            same = [(a.layer, self.golden.aliases[a.layer]) for a in out
                    if self.golden.aliases.get(a.layer) in {b.layer for b in out}]
            if same:
                a, b = same[0]
                raise ValueError(f"campaign: layers {a} and {b} are the same tensor ({a}'s output is {b}'s output); "
                                 f"select one of them")
            return out
        for w in weight_tensors(self.golden.model, layers):
            if self.params is not None and w.param not in self.params:
                continue
            dtype = w.storage.dtype
            if float_model:
                width, is_float = storage_width(dtype), is_float_storage(dtype)
            else:
                if dtype != np.float32:
                    raise ValueError(f"campaign: the {self.fault_model} fault model needs float32 weights, "
                                     f"{w.name} stores {dtype}")
                width, is_float = self._width, False
            bits = parse_bits(self.bits_spec, width, is_float)
            name = str(dtype) if float_model else self.fault_model
            out.append(Site(w.layer.name, "weights", w.param, w.shape, name, tuple(bits), w, width))
        return out

    def draw(self, start, stop):
        """Injections start..stop-1 as arrays (site, element, bit, sample).  Injection i is fault
        number permute(i) of the fault space, a keyed pseudo-random permutation: faults are drawn
        without repetition (as the sample-size formula assumes), and injection i is the same fault
        however the campaign is cut into batches or resumed."""
        u = permute(np.arange(start, stop, dtype=np.uint64), self.population, self._keys).astype(np.int64)
        per_input = int(self._cum[-1])
        sample, u = (u // per_input, u % per_input) if self.target == "activations" else (np.zeros_like(u), u)
        site = np.searchsorted(self._cum, u, side="right") - 1
        within = u - self._cum[site]
        n_bits = self._n_bits[site]
        return site, within // n_bits, self._bit_table[site, within % n_bits], sample

    # -- running ------------------------------------------------------------------------------
    def header(self):
        return {"kind": "header", "format": FORMAT, "model": self.model_path, "model_sha256": self.model_id,
                "target": self.target, "fault_model": self.fault_model, "bits": self.bits_spec,
                "layers": sorted({s.layer for s in self.sites}, key=_path_key),
                "params": None if self.params is None else list(self.params),
                "sites": [{"layer": s.layer, "param": s.param, "shape": list(s.shape), "dtype": s.dtype,
                           "bits": len(s.bits)} for s in self.sites],
                "seed": self.seed, "n": self.n, "n_auto": self.auto, "population": self.population,
                "confidence": self.confidence, "margin": self.margin, "inputs": self.inputs,
                "inputs_sha256": self.inputs_id, "dlcpu_version": __version__}

    def records(self, start=0, stop=None):
        """Yield the injection records start..stop-1 (dicts), batch by batch."""
        stop = self.n if stop is None else stop
        step = self.batch if self.target == "activations" else 64
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            yield from (self._activation_batch if self.target == "activations" else self._weight_batch)(lo, hi)

    def _activation_batch(self, lo, hi):
        site, element, bit, sample = self.draw(lo, hi)
        n = hi - lo
        outcome = np.zeros(n, np.int8)
        dev = np.zeros(n)
        old_bits, new_bits = np.zeros(n, np.uint32), np.zeros(n, np.uint32)
        old_vals, new_vals = np.zeros(n, np.float32), np.zeros(n, np.float32)
        indices = [None] * n
        with np.errstate(all="ignore"):        # a flipped exponent overflows on purpose
            for s in np.unique(site):
                pick = np.flatnonzero(site == s)
                idx = np.stack(np.unravel_index(element[pick], self.sites[s].shape), axis=1)
                for j, row in zip(pick.tolist(), idx.tolist()):
                    indices[j] = row
                logits, changed = activation_faults(self.golden, self.sites[s].layer, sample[pick], idx, bit[pick],
                                                    self.fault_model)
                outcome[pick], dev[pick] = classify(self.golden.logits[sample[pick]], logits)
                old_bits[pick], new_bits[pick] = changed.old_bits, changed.new_bits
                old_vals[pick], new_vals[pick] = changed.old_values, changed.new_values
        # plain Python values for the records: numpy scalars would cost more than the inference
        columns = zip(site.tolist(), indices, sample.tolist(), bit.tolist(), old_bits.tolist(),
                      new_bits.tolist(), old_vals.tolist(), new_vals.tolist(), outcome.tolist(), dev.tolist())
        for j, (s, index, smp, b, ob, nb, ov, nv, o, d) in enumerate(columns):
            yield _record(lo + j, self.sites[s], index, smp, b, ob, nb, ov, nv, o, d)

    def _weight_batch(self, lo, hi):
        site, element, bit, _ = self.draw(lo, hi)
        golden = self.golden.logits
        for j in range(hi - lo):
            s = self.sites[site[j]]
            index = [int(v) for v in np.unravel_index(element[j], s.shape)]
            with np.errstate(all="ignore"):
                logits, changed = weight_fault(self.golden, s.tensor, index, int(bit[j]), self.fault_model)
                outcome, dev = classify(golden, logits)
            rec = _record(lo + j, s, index, None, int(bit[j]), int(changed.old_bits[0]), int(changed.new_bits[0]),
                          changed.old_values[0].item(), changed.new_values[0].item(), int(outcome.max()),
                          float(dev.max()))
            rec["images"] = len(outcome)
            rec["sdc1_images"] = int((outcome == SDC1).sum() + (outcome == SDC5).sum())
            rec["sdc5_images"] = int((outcome == SDC5).sum())
            rec["due_images"] = int((outcome == DUE).sum())
            yield rec

    def run(self, out=None, resume=False, on_record=None, on_start=None):
        """Run the campaign; with `out`, append records to that JSONL file (header first), flushed
        one by one; `resume` continues a file this campaign wrote.  Returns CampaignState (the
        counts).  on_record(record, state) is called after each record; on_start() once the
        results file has been checked, before the first injection."""
        state = CampaignState(self.n)
        start = 0
        if out is not None:
            start, existing, state.note = open_results(out, self.header(), resume)
            for rec in existing:
                state.add(rec)
        if on_start:
            on_start()
        with open(out, "a", encoding="utf-8") if out is not None else contextlib.nullcontext() as f:
            if f is not None and f.tell() == 0:          # a new file (open_results emptied a cut header)
                f.write(_encode(self.header()) + "\n")
                f.flush()
            for rec in self.records(start):
                if f is not None:
                    f.write(_encode(rec) + "\n")
                    f.flush()
                state.add(rec)
                if on_record:
                    on_record(rec, state)
        return state


#: rounds of the Feistel network of `permute` (4 make a pseudo-random permutation, Luby-Rackoff)
_FEISTEL_ROUNDS = 4


def _mix(z):
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic): the Feistel round function."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permute(i, n, keys):
    """A keyed pseudo-random permutation of [0, n) evaluated at the uint64 array i: a balanced
    Feistel network on the smallest even number of bits that holds n, cycle-walking (applying it
    again) to the values that land at or beyond n.  Each value is a pure function of (i, keys),
    which is what lets a campaign be cut into batches and resumed anywhere."""
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    out = np.array(i, np.uint64)
    todo = np.ones(out.shape, bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = out[todo]
            left, right = x >> half, x & mask
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
            out[todo] = (left << half) | right
            todo[todo] = out[todo] >= np.uint64(n)
    return out


def _array_digest(x):
    """SHA-256 of an input batch (a BlockedTensor's data or an array): the header records it so
    that --resume refuses other inputs of the same size."""
    data = getattr(x, "data", x) if not isinstance(x, np.ndarray) else x
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def model_digest(model):
    """SHA-256 of a model's configuration and parameters: what a results file records, so that
    --resume continues only with the same weights."""
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, value in sorted(model.state().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _path_key(name):
    """Sort key of a layer name in model order: '2.10' after '2.9'."""
    return [int(p) for p in name.split(".")] if name else []


def _number(v):
    """A JSON-safe number: non-finite floats become the strings 'nan', 'inf', '-inf'."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _record(i, site, index, sample, bit, old, new, old_value, new_value, outcome, dev):
    """One injection record (Python scalars in, a JSON-ready dict out)."""
    digits = site.hex_digits
    return {"kind": "injection", "i": i, "layer": site.layer, "target": site.kind, "param": site.param,
            "index": index, "sample": sample, "bit": bit, "dtype": site.dtype,
            "old": f"0x{old:0{digits}x}", "new": f"0x{new:0{digits}x}",
            "old_value": _number(old_value), "new_value": _number(new_value),
            "outcome": OUTCOMES[outcome], "max_abs_dev": _number(dev)}


#: the JSON encoder of the record lines, made once (json.dumps builds one per call: 12.6 us a
#: record here, this one 11.5 us)
_encode = json.JSONEncoder(check_circular=False).encode


@dataclass
class CampaignState:
    """Running counts of a campaign (what the progress bar shows)."""

    n: int
    done: int = 0
    sdc1: int = 0
    sdc5: int = 0
    due: int = 0
    note: str = None
    image_sdc1: float = 0.0      # sum over injections of the fraction of inputs whose top-1 changed
    image_sdc1_sq: float = 0.0   # and of its square

    def add(self, rec):
        self.done += 1
        o = rec["outcome"]
        self.sdc1 += o in ("sdc1", "sdc5")
        self.sdc5 += o == "sdc5"
        self.due += o == "due"
        frac = rec["sdc1_images"] / rec["images"] if "images" in rec else float(o in ("sdc1", "sdc5"))
        self.image_sdc1 += frac
        self.image_sdc1_sq += frac * frac

    def per_image_rate(self, confidence=0.95):
        """(rate, low, high): the fraction of (fault, input) pairs whose top-1 changed, with
        stats.mean_fraction_interval (a weight fault's inputs are not independent draws).  For
        one input per fault it is the plain SDC-1 rate."""
        return mean_fraction_interval(self.image_sdc1, self.image_sdc1_sq, self.done, confidence)


def open_results(path, header, resume):
    """Prepare a results file: (first injection to run, records already on file, note).
    Stricter than report.read_results, which only reads: a file this returns is one the
    campaign can append to (header matching, injections 0..k-1 in order, cut line removed).

    Without resume the file must not exist (or be empty).  With resume its header must match
    `header` on RESUME_KEYS; a truncated or corrupt last line is cut off (and reported in the
    note); records must be injections 0, 1, 2, ... in order."""
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if not resume:
        if exists:
            raise ValueError(f"{path} already holds results; continue it with --resume or choose another --out")
        return 0, [], None
    if not exists:
        return 0, [], None
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    good_end, records, note = 0, [], None
    pos = 0
    for lineno, raw in enumerate(lines, 1):
        end = pos + len(raw) + 1
        last = lineno == len(lines) or (lineno == len(lines) - 1 and lines[-1] == b"")
        if raw.strip() == b"":
            pos = end
            continue
        try:
            rec = json.loads(raw)
            complete = end <= len(data)      # a line without its newline was cut mid-write
            if not isinstance(rec, dict) or not complete:
                raise ValueError("incomplete")
        except ValueError:
            if last:
                note = (f"{path}: line {lineno} is truncated (the run was stopped while writing it); dropped, "
                        f"the campaign continues at injection {len(records)}")
                break
            raise ValueError(f"{path}: line {lineno} is not a JSON record; the file is damaged") from None
        if lineno == 1:
            _check_header(path, rec, header)
        else:
            if rec.get("kind") != "injection" or rec.get("i") != len(records):
                raise ValueError(f"{path}: line {lineno} should be injection {len(records)}, got "
                                 f"{rec.get('kind')} {rec.get('i')}; the file is damaged")
            check_record(rec, f"{path}:{lineno}")
            records.append(rec)
        good_end = end
        pos = end
    if good_end == 0:
        if b"\n" not in data:          # killed while writing its header: nothing was recorded yet
            with open(path, "r+b") as f:
                f.truncate(0)
            return 0, [], f"{path}: the header line was cut mid-write; the campaign starts from the beginning"
        raise ValueError(f"{path}: no campaign header on line 1; not a dlcpu faults results file")
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(min(good_end, len(data)))
    if len(records) > header["n"]:
        raise ValueError(f"{path} holds {len(records)} injections, more than this campaign's n={header['n']}")
    return len(records), records, note


def _check_header(path, found, wanted):
    if not isinstance(found, dict) or found.get("kind") != "header" or found.get("format") != FORMAT:
        raise ValueError(f"{path}: line 1 is not a {FORMAT} campaign header; not a dlcpu faults results file")
    differ = [k for k in RESUME_KEYS if found.get(k) != wanted.get(k)]
    if differ:
        what = "; ".join(f"{k}: file {found.get(k)!r}, now {wanted.get(k)!r}" for k in differ)
        raise ValueError(f"{path} was written by another campaign ({what}); --resume needs the same model, "
                         f"target, seed and parameters")
