"""Training on real data with dlcpu.nn: scikit-learn's bundled handwritten digits (1797 8x8
images, no download).  (The PyTorch twin that `dlcpu bench train` runs lives in dlcpu._peers.)

The split is fixed and seeded (stratified 80/20), pixels are scaled by the training set's mean
and deviation, and the model is checkpointed atomically after every epoch, so an interrupted or
diverged run keeps the last good model.  A saved model can be fine-tuned (`init_from`), and
pruned first (`prune`, nn.prune's masks are kept by SGD through the fine-tuning).

The loss is the cross-entropy of any kind nn.softmax_cross_entropy takes (softmax, Taylor,
soft-margin and SM-Taylor softmax, with the exact or the softmax-style gradient).  The prediction
is the class of highest probability under the loss's own kind (nn.predict_classes; the margin
is a training device and does not enter).  For softmax that is the argmax of the logits; for the
Taylor kinds it need not be: f_n is not monotonic (it falls to its minimum, at z = -1 for n = 2
and near -1.6 for n = 4, then rises again), so a very negative logit gets more probability than
a larger one.  Measured: an sm-taylor:4:0.6 CNN (seed 2) scored 89.7% by the logits' argmax and
99.2% by the argmax of its probabilities.  Model files do not record the loss kind: evaluate a
Taylor-trained model with evaluate(..., loss=kind).

The softmax-style gradient (p - onehot with the Taylor p: the paper's "infinite series") is
there for study, not for training: a wrong class keeps a gradient of at least min f_n / S > 0,
so its logit is pushed down without end, past f_n's minimum, where its probability rises again.
On the digits CNN taylor:4, taylor:8 and sm-taylor:4:0.4 reached a NaN loss within 15 epochs and
taylor:2 collapsed to 10% accuracy with logits near 1e24.
"""
import functools
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import nn
from .layout import to_blocked
from .nn.losses import check_gradient
from .nn.models import RNN_CELLS
from .nn.prune import check_sparsity
from .nn.recurrent import check_activation_impl


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class DigitsData:
    x_train: np.ndarray  # (n, 1, 8, 8) float32, standardized
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed=0, test_fraction=0.2):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ValueError("training on digits needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=test_fraction,
                                              random_state=seed, stratify=digits.target)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    norm = lambda a: np.ascontiguousarray((a - mean) / std, dtype=np.float32)
    return DigitsData(norm(x_tr), y_tr.astype(np.int64), norm(x_te), y_te.astype(np.int64))


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    images_per_second: float


@dataclass
class TrainResult:
    epochs: list = field(default_factory=list)
    total_seconds: float = 0.0
    checkpoint: str = None
    model: object = None    # the trained nn module
    sparsity: list = field(default_factory=list)   # nn.sparsity_report of the trained model
    loss: str = "softmax"           # the canonical loss kind (nn.parse_loss_kind)
    loss_gradient: str = "exact"
    cell: str = None                # 'lstm' or 'gru' for an RNN, None for the CNN
    activation_impl: str = None     # the RNN's sigmoid/tanh implementation, None for the CNN
    ranks: int = 1                  # data-parallel ranks (train_digits(dist=...)), 1 otherwise
    precision: str = "fp32"         # the products' number format (train_digits(precision=...))
    rank: int = 0                   # this process's rank
    communication: dict = None      # DataParallel.comm_summary() of a data-parallel run

    @property
    def test_accuracy(self):
        return self.epochs[-1].test_accuracy if self.epochs else float("nan")


def image_batch(x):
    """(n, 1, 8, 8) images -> the CNN's blocked input."""
    return to_blocked(x)


def row_sequence(x):
    """(n, 1, 8, 8) images -> the RNN's input: T=8 steps of 8 pixels, (8, n, 8)."""
    return np.ascontiguousarray(x[:, 0].transpose(1, 0, 2))


def count_correct(model, x, y, batch=512, inputs=image_batch, loss="softmax"):
    """How many of x the model (in eval mode) classifies as y, under the loss kind `loss`."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(inputs(x[i:i + batch]))
        correct += int((nn.predict_classes(logits, loss) == y[i:i + batch]).sum())
    return correct


def evaluate(model, x, y, batch=512, inputs=image_batch, loss="softmax"):
    """Test accuracy: the share of x whose predicted class (under the loss kind `loss`) is y."""
    return count_correct(model, x, y, batch, inputs, loss) / len(x)


MODEL_KINDS = {"cnn": "a digits CNN (nn.digits_resnet)", "rnn": "a digits RNN (nn.digits_rnn, recurrent layers)"}


def _recurrent_layers(module):
    own = [module] if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)) else []
    return own + [r for c in module.children() for r in _recurrent_layers(c)]


def _has_recurrent(module):
    return bool(_recurrent_layers(module))


def _check_rnn_options(model, cell, activation_impl):
    """cell (None, 'lstm', 'gru') and activation_impl (None or nn.LSTM's values) for `model`:
    the CNN has neither a recurrent cell nor a tanh, so it takes only None (and 'exact')."""
    if cell is not None and (not isinstance(cell, str) or cell not in RNN_CELLS):
        raise ValueError(f"train: cell must be 'lstm' or 'gru', got {cell!r}")
    if activation_impl is not None:
        check_activation_impl("train", activation_impl)
    if model == "cnn" and cell is not None:
        raise ValueError(f"train: cell={cell!r} applies to the digits RNN (model='rnn'); the CNN has no recurrent cell")
    if model == "cnn" and activation_impl not in (None, "exact"):
        raise ValueError(f"train: activation_impl={activation_impl!r} applies to the digits RNN (model='rnn'); "
                         f"the CNN has no sigmoid or tanh")


def check_cell(model, cell, where="the initial model"):
    """ValueError, naming `where`, unless every recurrent layer of `model` (a digits RNN to
    fine-tune) has cell `cell` ('lstm' or 'gru'; None accepts any)."""
    cells = {r.cell for r in _recurrent_layers(model)}
    if cell is not None and cells != {cell}:
        raise ValueError(f"{where} holds a {'/'.join(sorted(cells)).upper()} model, not cell={cell!r}")


def _adopt_rnn_options(model, where, cell, activation_impl):
    """A loaded RNN to fine-tune: its cell must be `cell` (when given); `activation_impl` (when
    given) replaces its layers' own.  Returns the (cell, activation_impl) it trains with."""
    check_cell(model, cell, where)
    layers = _recurrent_layers(model)
    cells = {r.cell for r in layers}
    for r in layers:
        if activation_impl is not None:
            r.activation_impl = activation_impl
    impls = {r.activation_impl for r in layers}
    return "/".join(sorted(cells)), "/".join(sorted(impls))


def load_pretrained(source, model="cnn"):
    """The model to fine-tune as `model` ('cnn' or 'rnn'): `source` is a path of a file written
    by nn.save (or a Module already loaded).  ValueError, naming the file, for a missing file, a
    file that is not a dlcpu model, a quantized model (nn.quantize: inference only), a model of
    the other kind (recurrent layers or not) or one that does not map digits to 10 classes."""
    if model not in MODEL_KINDS:
        raise ValueError(f"train: model must be 'cnn' or 'rnn', got {model!r}")
    if isinstance(source, nn.Module):
        where, m = "the initial model", source
    elif isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.exists(where):
            raise ValueError(f"model file {where} does not exist")
        m = nn.load(where)
    else:
        raise TypeError(f"train: init_from must be a model file path or a dlcpu.nn Module, got {type(source).__name__}")
    if isinstance(m, nn.Quantized):
        raise ValueError(  # noqa: TRY004 (a file's content, not an argument's type)
            f"{where} holds a quantized model ({m.describe()}, inference only): training and fault campaigns take the "
            "fp32 model it was quantized from")
    kind = "rnn" if _has_recurrent(m) else "cnn"
    if kind != model:
        raise ValueError(f"{where} holds {MODEL_KINDS[kind]}, not {MODEL_KINDS[model]}")
    inputs = image_batch if model == "cnn" else row_sequence
    m.eval()
    try:
        y = m(inputs(np.zeros((2, 1, 8, 8), np.float32)))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{where}: the model does not take 1x8x8 digit images ({exc})") from None
    finally:
        m.train()
    if getattr(y, "shape", None) != (2, 10):
        raise ValueError(f"{where}: the model maps digits to shape {getattr(y, 'shape', None)}, not to 10 class scores")
    first = m.modules[0] if isinstance(m, nn.Sequential) and m.modules else None
    if hasattr(first, "needs_input_grad"):  # not saved: its input is data, no dx wanted
        first.needs_input_grad = False
    return m


def digits_model(source):
    """(model, input builder) for a digits model file or Module of either kind, checked as
    load_pretrained checks it (ValueError naming the file otherwise); the model is in eval mode."""
    kind = "rnn" if isinstance(source, nn.Module) and _has_recurrent(source) else "cnn"
    if not isinstance(source, nn.Module):
        if not isinstance(source, (str, os.PathLike)) or not os.path.exists(source):
            raise ValueError(f"model file {source} does not exist")
        source = nn.load(source) if not isinstance(source, nn.Module) else source
        kind = "rnn" if _has_recurrent(source) else "cnn"
    model = load_pretrained(source, kind)
    return model.eval(), (row_sequence if kind == "rnn" else image_batch)


def train_digits(epochs=15, batch=64, lr=0.05, momentum=0.9, weight_decay=5e-4, width=16, seed=0,
                 out=None, on_step=None, on_epoch=None, data=None, model="cnn", prune=None, init_from=None,
                 prune_scope="layer", loss="softmax", loss_gradient="exact", activation_impl=None, cell=None,
                 dist=None, precision="fp32"):
    """Train on the digits split; returns TrainResult.  model 'cnn': nn.digits_resnet on the
    images; 'rnn': nn.digits_rnn (an LSTM, or a GRU with cell='gru') reading each image row by
    row.

    loss: the kind of nn.softmax_cross_entropy every step uses ('softmax', 'taylor:4',
    'sm-softmax:0.4', 'sm-taylor:4:0.6', ...) and loss_gradient its gradient ('exact' or
    'softmax'); accuracy counts the most probable class under that kind (module docstring).
    cell ('lstm' or 'gru') and activation_impl ('exact', 'fast' or 'ktanh', nn.LSTM's) are the
    RNN's; None means 'lstm' and 'exact' for a fresh model and the model's own with init_from
    (a given cell must then be the model's; a given activation_impl replaces its own).  Both
    are kept in a saved model's configuration; the loss kind is not (a model file holds the
    model, not how it was trained): TrainResult carries all four.

    init_from: fine-tune the model saved at this path (nn.save; or a Module) instead of a fresh
    one (`width` is then unused); it must be of the same kind (load_pretrained).  prune: a
    sparsity in [0, 1): nn.prune(scope=prune_scope) before training, its masks kept by SGD, so the
    trained model has exactly that fraction of zeros in every Conv2d/Linear/recurrent weight
    (prune_scope "layer") or over all of them together ("global").
    TrainResult.sparsity is the per-layer nn.sparsity_report of the trained model.

    precision: 'fp32', or 'bf16' / 'dfp16' for mixed-precision training (Module.set_precision):
    the convolutions and the classifier multiply bf16-rounded (DFP-16-quantized) operands, while
    weights, batch-norm statistics, the loss, the gradients and SGD stay fp32.  The RNN trains
    in the same formats (its LSTM/GRU products in the format, states and cell math fp32).

    on_step(epoch, step, steps, loss) and on_epoch(EpochStats) feed progress displays.  With
    `out`, the model is saved after every epoch (atomically); a path that cannot be written is
    refused with ValueError before training starts.  A NaN/inf loss stops training
    with TrainingDiverged, leaving the last checkpoint as it was."""
    if dist is not None and not isinstance(dist, bool):
        from .distributed import DataParallelOptions
        if not isinstance(dist, DataParallelOptions):
            raise TypeError(f"train: dist must be True or a dlcpu.distributed.DataParallelOptions, got {type(dist).__name__}")
    if epochs < 1 or batch < 1 or not lr > 0:
        raise ValueError(f"train: need epochs >= 1, batch >= 1 and lr > 0 (got {epochs}, {batch}, {lr})")
    if model not in MODEL_KINDS:
        raise ValueError(f"train: model must be 'cnn' or 'rnn', got {model!r}")
    if prune is not None:
        prune = check_sparsity(prune, "train")
    try:
        spec = nn.parse_loss_kind(loss)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"train: {exc}") from None
    check_gradient(loss_gradient, "train")
    _check_rnn_options(model, cell, activation_impl)
    precision = check_training_precision(model, precision)
    if out and not dist:
        nn.check_writable(out)  # before any training, not after the first epoch (data-parallel: rank 0's check)
    inputs = image_batch if model == "cnn" else row_sequence
    result = TrainResult(checkpoint=out, loss=str(spec), loss_gradient=loss_gradient)
    kind = model
    if init_from is not None:
        model = load_pretrained(init_from, model)
        if kind == "rnn":
            where = os.fspath(init_from) if isinstance(init_from, (str, os.PathLike)) else "the initial model"
            result.cell, result.activation_impl = _adopt_rnn_options(model, where, cell, activation_impl)
    elif kind == "cnn":
        model = nn.digits_resnet(width, seed=seed)
    else:
        result.cell, result.activation_impl = cell or "lstm", activation_impl or "exact"
        model = nn.digits_rnn(seed=seed, cell=result.cell, activation_impl=result.activation_impl)
    data = data or load_digits_split(seed)
    dp = None
    if dist:
        dp = _data_parallel(model, dist)
        if out:
            dp.comm.on_rank0(lambda: nn.check_writable(out), f"the checkpoint path {out}")
        result.ranks, result.rank = dp.size, dp.rank
        # ranks that differ here would run different step counts and mismatch their collectives
        dp.comm.agree([len(data.x_train), len(data.x_test), batch, epochs, seed,
                       sum(p.data.size for p in model.parameters())],
                      "the training and test set sizes, batch, epochs, seed and parameter count")
    if prune is not None:
        nn.prune(model, prune, scope=prune_scope)
    model.set_precision(precision)
    result.precision = precision
    opt = nn.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    # the loss's keywords only for another kind than softmax (for which both gradients agree)
    loss_args = {} if spec.name == "softmax" else {"kind": spec, "gradient": loss_gradient}
    start = time.perf_counter()
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected on the loss
            _run_epochs(model, opt, data, epochs, batch, lr, rng, out, on_step, on_epoch, result, inputs, loss_args, dp)
        if dp is not None:
            result.communication = dp.comm_summary()
            dp.write_timeline()
    finally:
        if dp is not None:
            dp.close()
    result.total_seconds = time.perf_counter() - start
    result.model = model
    result.sparsity = nn.sparsity_report(model)
    return result


#: the formats train_digits trains in, per model kind
TRAIN_PRECISIONS = {"cnn": ("fp32", "bf16", "dfp16"), "rnn": ("fp32", "bf16", "dfp16")}


def check_training_precision(model, precision):
    """precision for a `model` kind ('cnn' or 'rnn'), or ValueError naming what it trains in."""
    from .precision import check_precision

    precision = check_precision(precision, "train")
    if precision not in TRAIN_PRECISIONS[model]:
        raise ValueError(f"train: the digits {model.upper()} trains in {', '.join(TRAIN_PRECISIONS[model])}, not "
                         f"{precision} (int8 and ternary are inference formats)")
    return precision


def _data_parallel(model, dist):
    """dist: True (the defaults) or a distributed.DataParallelOptions -> a DataParallel, which
    broadcasts rank 0's weights to every rank."""
    from . import distributed

    if dist is True:
        dist = distributed.DataParallelOptions()
    if not isinstance(dist, distributed.DataParallelOptions):
        raise TypeError(f"train: dist must be True or a dlcpu.distributed.DataParallelOptions, got {type(dist).__name__}")
    return distributed.DataParallel(model, dist)


def _check_finite(loss, epoch, step, lr, out):
    """TrainingDiverged, before the update that would spoil the weights, for a NaN/inf loss."""
    if not math.isfinite(loss):
        kept = f"; the last good model is in {out}" if out and epoch > 1 else ""
        raise TrainingDiverged(f"training diverged: loss is {loss} at epoch {epoch}, step {step} "
                               f"(try a smaller --lr than {lr}){kept}")


def local_step(model, opt, x, y, inputs, loss_args, loss_kind, check):
    """One single-process step on the batch (x, y) -> (mean loss, correct predictions).
    inputs: the model's input builder (image_batch, row_sequence); loss_args:
    nn.softmax_cross_entropy's keywords; loss_kind: predictions' kind; check(loss): raises to
    stop before the update (divergence)."""
    logits = model(inputs(x))
    loss, dlogits = nn.softmax_cross_entropy(logits, y, **loss_args)
    check(loss)
    model.backward(dlogits)
    opt.step()
    opt.zero_grad()
    return loss, int((nn.predict_classes(logits, loss_kind) == y).sum())


def data_parallel_step(model, opt, dp, x, y, inputs, loss_args, loss_kind, check, where):
    """local_step's data-parallel twin (dp: a distributed.DataParallel; where: the step's name
    for timeout messages).  This rank takes its shard of the global batch (x, y) (possibly
    none, on a short last batch), the gradients are averaged over the ranks during backward, and
    the divergence check sees the global loss, so every rank decides alike.  -> (mean loss,
    correct predictions), both over the global batch."""
    mine = dp.my_slice(np.arange(len(x)))
    dp.begin(where)
    loss_sum, correct = 0.0, 0
    if len(mine):
        logits = model(inputs(x[mine]))
        loss, dlogits = nn.softmax_cross_entropy(logits, y[mine], **loss_args)
        loss_sum = loss * len(mine)
        correct = int((nn.predict_classes(logits, loss_kind) == y[mine]).sum())
    dp.start_gradients(len(mine), len(x), loss_sum, correct)
    if len(mine):
        model.backward(dlogits)
    loss_sum, correct, n = dp.finish_gradients()
    check(loss_sum / n)
    opt.step()
    opt.zero_grad()
    dp.end_step()
    return loss_sum / n, correct


def _run_epochs(model, opt, data, epochs, batch, lr, rng, out, on_step, on_epoch, result, inputs, loss_args, dp=None):
    n = len(data.x_train)
    steps = math.ceil(n / batch)
    loss_kind = loss_args.get("kind", "softmax")     # predictions: the kind's probabilities
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        loss_sum, correct = 0.0, 0
        for step in range(steps):
            idx = perm[step * batch:(step + 1) * batch]
            check = functools.partial(_check_finite, epoch=epoch, step=step + 1, lr=lr, out=out)
            x, y = data.x_train[idx], data.y_train[idx]
            if dp is None:
                loss, step_correct = local_step(model, opt, x, y, inputs, loss_args, loss_kind, check)
            else:
                loss, step_correct = data_parallel_step(model, opt, dp, x, y, inputs, loss_args, loss_kind, check,
                                                         f"epoch {epoch}, step {step + 1}")
            loss_sum += loss * len(idx)
            correct += step_correct
            if on_step:
                on_step(epoch, step + 1, steps, loss)
        seconds = time.perf_counter() - t0
        stats = EpochStats(epoch, loss_sum / n, correct / n, _test_accuracy(model, data, inputs, loss_kind, dp),
                           seconds, n / seconds)
        result.epochs.append(stats)
        if out and (dp is None or dp.rank == 0):     # one writer: rank 0
            nn.save(model, out)
        if on_epoch:
            on_epoch(stats)


def _test_accuracy(model, data, inputs, loss_kind, dp):
    """The test accuracy; data-parallel, after the ranks' BatchNorm statistics are averaged, each
    rank counts its shard of the test set and the counts are summed."""
    if dp is None:
        return evaluate(model, data.x_test, data.y_test, inputs=inputs, loss=loss_kind)
    dp.average_buffers()
    mine = dp.my_slice(np.arange(len(data.x_test)))
    correct = count_correct(model, data.x_test[mine], data.y_test[mine], inputs=inputs, loss=loss_kind) if len(mine) else 0
    return float(dp.sum_counts([correct], "the sum of the test counts")[0]) / len(data.x_test)


# ------------------------------------------------------------------------------------ sweeps
@dataclass(frozen=True)
class SweepConfig:
    """One configuration of a sweep: a loss kind (canonical, nn.parse_loss_kind) and, for the
    RNN, its cell and activation_impl (None: train_digits' default, or the --from model's)."""
    loss: str = "softmax"
    cell: str = None
    activation_impl: str = None

    def as_dict(self):
        return {"loss": self.loss, "cell": self.cell, "activation_impl": self.activation_impl}


@dataclass
class SweepRun:
    """One finished run of a sweep.  config is the configuration the run trained with (its
    loss canonical, cell and activation_impl resolved: 'lstm'/'exact' for a fresh RNN's None,
    None for the CNN), so runs of the same configuration group together however it was asked."""
    config: SweepConfig
    seed: int
    test_accuracy: float
    final_loss: float       # the last epoch's mean training loss
    seconds: float          # TrainResult.total_seconds: the training loop, data loading excluded
    result: TrainResult = field(default=None, repr=False, compare=False)  # the whole result, model included

    def as_dict(self):
        return {**self.config.as_dict(), "seed": self.seed, "test_accuracy": self.test_accuracy,
                "final_loss": self.final_loss, "seconds": self.seconds}


@dataclass
class SweepSummary:
    """The test accuracies of one configuration's runs.  std is the sample standard deviation
    (ddof=1) over the runs, NaN for a single run (one run says nothing about the spread)."""
    config: SweepConfig
    runs: int
    seeds: list
    mean: float
    std: float
    min: float
    max: float
    mean_seconds: float

    def as_dict(self):
        """JSON-ready: a single run's std (NaN) is None, as JSON has no NaN."""
        return {**self.config.as_dict(), "runs": self.runs, "seeds": list(self.seeds), "mean": self.mean,
                "std": None if math.isnan(self.std) else self.std, "min": self.min, "max": self.max,
                "mean_seconds": self.mean_seconds}


def _unique(values, what):
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"train: {what} {v!r} is listed twice")
        seen.add(v)
    return list(values)


def sweep_configs(losses=("softmax",), cells=(None,), activation_impls=(None,)):
    """The configurations of a sweep: the cartesian product cells × activation_impls × losses,
    in that order (the loss varies fastest).  Loss kinds are canonicalized (nn.parse_loss_kind);
    an unknown cell or activation_impl, or a value listed twice (after canonicalization: 'taylor:4'
    and ' TAYLOR:4' are one kind), is a ValueError naming it."""
    kinds = []
    for loss in losses:
        try:
            kinds.append(str(nn.parse_loss_kind(loss)))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"train: {exc}") from None
    for cell in cells:
        _check_rnn_options("rnn", cell, None)
    for impl in activation_impls:
        _check_rnn_options("rnn", None, impl)
    kinds, cells, impls = (_unique(kinds, "loss kind"), _unique(list(cells), "cell"),
                           _unique(list(activation_impls), "activation_impl"))
    if not (kinds and cells and impls):
        raise ValueError("train: a sweep needs at least one loss kind, cell and activation_impl")
    return [SweepConfig(loss, cell, impl) for cell in cells for impl in impls for loss in kinds]


def check_seeds(seeds):
    """A sweep's seeds: a non-empty list of distinct integers >= 0 (ValueError otherwise)."""
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"train: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    return _unique([int(s) for s in seeds], "seed")


def sweep_digits(configs, seeds, model="cnn", on_start=None, data=None, **train_args):
    """Run train_digits once for every (config, seed) of configs × seeds, sequentially, the seed
    varying fastest; yield a SweepRun as each run finishes (a consumer that stops, or a Ctrl-C,
    keeps every run yielded so far).  Every config and seed is checked before the first run.

    configs: SweepConfig objects (sweep_configs builds the product).  on_start(index, total,
    config, seed) is called before each run (index from 0).  data: one DigitsData for every run;
    by default each seed gets its own split (load_digits_split(seed), loaded once per seed), as a
    single train_digits(seed=...) run does.  train_args (epochs, batch, lr, loss_gradient, prune,
    init_from, on_step, on_epoch, ...) go to every run; init_from should be a path, so that
    each run fine-tunes a fresh copy (a Module would be trained on, run after run)."""
    configs, seeds = list(configs), check_seeds(seeds)
    if model not in MODEL_KINDS:
        raise ValueError(f"train: model must be 'cnn' or 'rnn', got {model!r}")
    if not configs or not all(isinstance(c, SweepConfig) for c in configs):
        raise TypeError("train: configs must be a non-empty list of SweepConfig (see sweep_configs)")
    for bad in ("seed", "loss", "cell", "activation_impl"):
        if bad in train_args:
            raise TypeError(f"train: sweep_digits takes {bad} from configs and seeds, not as a keyword")
    try:
        configs = [SweepConfig(str(nn.parse_loss_kind(c.loss)), c.cell, c.activation_impl) for c in configs]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"train: {exc}") from None
    _unique(configs, "configuration")
    for c in configs:
        _check_rnn_options(model, c.cell, c.activation_impl)
    splits = {}
    total = len(configs) * len(seeds)
    for i, (config, seed) in enumerate((c, s) for c in configs for s in seeds):
        if on_start:
            on_start(i, total, config, seed)
        if data is None and seed not in splits:
            splits[seed] = load_digits_split(seed)
        result = train_digits(seed=seed, data=data if data is not None else splits[seed], model=model,
                              loss=config.loss, cell=config.cell, activation_impl=config.activation_impl, **train_args)
        final_loss = result.epochs[-1].loss if result.epochs else float("nan")
        yield SweepRun(SweepConfig(result.loss, result.cell, result.activation_impl), seed, result.test_accuracy,
                       final_loss, result.total_seconds, result)


def summarize_runs(runs):
    """One SweepSummary per configuration, in the order each first appears in `runs`: the mean,
    sample standard deviation (ddof=1; NaN for one run), min and max of the test accuracy, and
    the mean training time."""
    groups = {}
    for r in runs:
        groups.setdefault(r.config, []).append(r)
    rows = []
    for config, group in groups.items():
        acc = np.array([r.test_accuracy for r in group], dtype=np.float64)
        rows.append(SweepSummary(config, len(group), [r.seed for r in group], float(acc.mean()),
                                 float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                                 float(acc.min()), float(acc.max()), float(np.mean([r.seconds for r in group]))))
    return rows
