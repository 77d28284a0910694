"""`dlcpu faults {inject,campaign,report,compare}`: single-bit fault injection into dlcpu.nn models
saved by `dlcpu train` / nn.save, on scikit-learn's digits test split (dlcpu.faults does the work).

Every check (model file, layer, index, bit, results file) happens before anything runs, and fails
as one line.  `campaign` appends one JSONL line per injection and flushes it, so Ctrl-C or a kill
loses nothing: `--resume` continues after the last complete line.
"""
import os
from typing import Annotated

import typer
from rich.table import Table

from .. import cpu
from ._output import (
    EXIT_INTERRUPTED,
    JsonFlag,
    bad_option,
    check_output_path,
    command,
    emit_json,
    err,
    group,
    out,
    progress,
)

app = group("Bit-flip fault injection: single faults, statistical campaigns, reports, the compression study.")

TARGETS = ("weights", "activations")
Model = Annotated[str, typer.Argument(metavar="MODEL", help="A model file written by `dlcpu train` or dlcpu.nn.save.")]
Target = Annotated[str, typer.Option("--target", metavar="<target>",
                                     help="weights (persistent for one injection) or activations (layer outputs, one inference).")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, max=cpu.MAX_THREADS, help="Kernel threads (default: all cores).")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seeds the draw of every fault.")]
FaultModel = Annotated[str, typer.Option("--fault-model", metavar="<model>",
                                         help="Fault model: ieee (flip the stored bit) or fixed8/fixed16 (PyTorchFI's fixed-point model).")]


def _target(value):
    if value not in TARGETS:
        raise bad_option("--target", f"must be 'weights' or 'activations', got {value!r}")
    return value


def _fault_model(value):
    from ..faults.inject import FAULT_MODELS

    if value not in FAULT_MODELS:
        raise bad_option("--fault-model", f"must be one of {', '.join(FAULT_MODELS)}, got {value!r}")
    return value


def _threads(n):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n or cpu.resolve_threads(), user_api="openmp")


def _digits(model_path):
    """(model, input builder, digits split) for a model file; ValueError for anything else."""
    from ..train import digits_model, load_digits_split

    model, inputs = digits_model(model_path)
    return model, inputs, load_digits_split(0)


def _ints(text, option):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_option(option, f"must be a comma list of integers, got {text!r}") from None


@command(app, "inject")
def inject(
    model_path: Model,
    layer: Annotated[str | None, typer.Option("--layer", metavar="<name>", help="Layer name: its path of child indices, e.g. 2.0 (listed by the list flag).")] = None,
    target: Target = "activations",
    index: Annotated[str | None, typer.Option("--index", metavar="<list>",
                                       help="Logical index: (c,h,w) / (f,) / (t,f) of an activation, "
                                            "(k,c,r,s) / (out,in) / (c,) of a weight.")] = None,
    bit: Annotated[int | None, typer.Option("--bit", min=0, help="Bit to flip (0 = least significant).")] = None,
    sample: Annotated[int, typer.Option("--sample", min=0, help="Test image the inference runs on.")] = 0,
    param: Annotated[str, typer.Option("--param", help="Which parameter of the layer (weights): weight, bias, "
                                                       "weight_ih_l0, ...")] = "weight",
    fault_model: FaultModel = "ieee",
    list_layers: Annotated[bool, typer.Option("--list", help="List the model's layers and their targets, then stop.")] = False,
    threads: Threads = None,
    as_json: JsonFlag = False,
):
    """Inject one specified fault and show the golden and faulty predictions and the changed value."""
    from .. import faults
    from ..faults.inject import DUE
    from ..faults.sites import layer_weights

    _target(target)
    _fault_model(fault_model)
    model, build_inputs, data = _digits(model_path)
    if list_layers:
        return _list(model, build_inputs, data, as_json)
    for name, value in (("--layer", layer), ("--index", index), ("--bit", bit)):
        if value is None:
            raise bad_option(name, "is required (dlcpu faults inject MODEL --list shows the layers)")
    if sample >= len(data.x_test):
        raise bad_option("--sample", f"must be below the {len(data.x_test)} test images, got {sample}")
    idx = _ints(index, "--index")
    with _threads(threads):
        if target == "activations":
            golden = faults.GoldenRun(model, build_inputs(data.x_test[sample:sample + 1]))
            ref = faults.find_layer(model, layer)
            logits, changed = faults.activation_faults(golden, ref, [0], [idx], [bit], fault_model)
            where = f"output of layer {ref.name} ({ref.module.describe()}) at {idx}, test image {sample}"
        else:
            golden = faults.GoldenRun(model, build_inputs(data.x_test[sample:sample + 1]))
            ref = faults.find_layer(model, layer)
            tensors = {w.param: w for w in layer_weights(ref)}
            if param not in tensors:
                has = f"it has {', '.join(tensors)}" if tensors else "it has no weights of its own"
                raise ValueError(f"layer {ref.name} ({ref.module.describe()}) has no parameter {param!r}; {has}")
            logits, changed = faults.weight_fault(golden, tensors[param], idx, bit, fault_model)
            where = f"{param} of layer {ref.name} ({ref.module.describe()}) at {idx}"
    outcome, dev = faults.classify(golden.logits, logits)
    if fault_model != "ieee":
        width = int(fault_model[5:])
    else:
        width = 32 if target == "activations" else faults.storage_width(tensors[param].storage.dtype)
    digits = width // 4
    result = {"model": model_path, "target": target, "layer": ref.name, "layer_type": ref.kind,
              "param": param if target == "weights" else None, "index": idx, "bit": bit, "sample": sample,
              "fault_model": fault_model, "label": int(data.y_test[sample]),
              "golden_prediction": int(golden.logits[0].argmax()),
              "faulty_prediction": int(logits[0].argmax()) if outcome[0] != DUE else None,
              "old_bits": f"0x{int(changed.old_bits[0]):0{digits}x}", "new_bits": f"0x{int(changed.new_bits[0]):0{digits}x}",
              "old_value": float(changed.old_values[0]), "new_value": float(changed.new_values[0]),
              "outcome": faults.OUTCOMES[outcome[0]], "max_abs_dev": float(dev[0])}
    if as_json:
        emit_json(result)
        return
    out.print(f"fault: bit {bit} of the {where}", highlight=False)
    out.print(f"value: {result['old_value']!r} ({result['old_bits']}) -> {result['new_value']!r} ({result['new_bits']})",
              highlight=False)
    faulty = "none (NaN/Inf in the output)" if result["faulty_prediction"] is None else result["faulty_prediction"]
    out.print(f"prediction: golden {result['golden_prediction']} (label {result['label']}), faulty {faulty}; "
              f"outcome {result['outcome']}, max |logit change| {result['max_abs_dev']:.4g}", highlight=False)


def _list(model, build_inputs, data, as_json):
    from .. import faults

    golden = faults.GoldenRun(model, build_inputs(data.x_test[:1]))
    rows = []
    for ref in faults.model_layers(model):
        fmt = golden.formats.get(ref.name)
        weights = {w.param: list(w.shape) for w in faults.weight_tensors(model, [ref.name])} if ref.module.own_parameters() \
            or hasattr(ref.module, "fault_targets") else {}
        rows.append({"layer": ref.name, "type": ref.kind, "describe": ref.module.describe(),
                     "output": list(fmt.sample_shape) if fmt else None, "weights": weights})
    if as_json:
        emit_json(rows)
        return
    t = Table(title="layers (names for --layer; output = activation index per sample)")
    for c in ("layer", "module", "output", "weights"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["layer"], r["describe"], str(tuple(r["output"])) if r["output"] else "-",
                  ", ".join(f"{k} {tuple(v)}" for k, v in r["weights"].items()) or "-")
    out.print(t)


@command(app, "campaign")
def campaign(
    model_path: Model,
    target: Target = "activations",
    bits: Annotated[str, typer.Option("--bits", metavar="<spec>",
                                      help="Bit positions to draw from: all, sign, exponent, mantissa, N or N-M.")] = "all",
    layers: Annotated[str | None, typer.Option("--layers", metavar="<list>", help="Comma list of layer names (default: all).")] = None,
    n: Annotated[str, typer.Option("--n", metavar="<count>", help="Injections: a number, or auto (the statistical sample size).")] = "auto",
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999999, help="Confidence level.")] = 0.95,
    margin: Annotated[float, typer.Option("--margin", min=1e-6, max=0.5, help="Margin of error for --n auto.")] = 0.01,
    seed: Seed = 0,
    out_path: Annotated[str | None, typer.Option("--out", metavar="<file>", help="Results file (JSONL, one line per injection).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the results file of an interrupted campaign.")] = False,
    images: Annotated[int, typer.Option("--images", min=1, help="Weight campaigns: test images each fault is evaluated on.")] = 64,
    batch: Annotated[int, typer.Option("--batch", min=1, max=65536, help="Activation campaigns: faulty inferences per call.")] = 2048,
    fault_model: FaultModel = "ieee",
    threads: Threads = None,
    as_json: JsonFlag = False,
):
    """Run a statistical single-bit campaign, each record written to the results file as it is made."""
    from .. import faults

    _target(target)
    _fault_model(fault_model)
    if n != "auto" and not (n.isdigit() and int(n) >= 1):
        raise bad_option("--n", f"must be 'auto' or a positive integer, got {n!r}")
    if out_path is None:
        raise bad_option("--out", "is required: the campaign writes its records there")
    if not resume:
        check_output_path(out_path)
        if os.path.exists(out_path) and os.path.getsize(out_path) > 0:
            raise bad_option("--out", f"{out_path} already holds results; continue it with --resume or choose another file")
    model, build_inputs, data = _digits(model_path)
    x = data.x_test if target == "activations" else data.x_test[:images]
    with _threads(threads):
        camp = faults.Campaign(model, build_inputs(x), target=target, bits=bits,
                               layers=None if layers is None else [v.strip() for v in layers.split(",") if v.strip()],
                               fault_model=fault_model, n="auto" if n == "auto" else int(n), confidence=confidence,
                               margin=margin, seed=seed, batch=batch, model_path=model_path)
        t = faults.z_for_confidence(confidence)
        plan = (f"fault space N = {camp.population:,} ({target}, bits {bits}, {len(camp.sites)} tensors, "
                f"{camp.inputs} inputs); " + (f"n = {camp.n:,} for margin e = {margin} at {confidence:.0%} "
                                              f"(t = {t:.4f}, p = 0.5)" if n == "auto" else f"n = {camp.n:,} (given)"))
        try:
            # the plan is printed once the results file has been checked, so that a file of another
            # campaign or a damaged one is refused with one line
            state = _run_with_progress(camp, out_path, resume, lambda: err.print(plan, highlight=False))
        except KeyboardInterrupt:
            err.print(f"interrupted; the records made so far are in {out_path}: continue with --resume", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    summary = {"results": out_path, "target": target, "population": camp.population, "n": camp.n, "done": state.done,
               "seed": seed, "confidence": confidence, "margin": margin}
    rows = faults.summarize(faults.read_results(out_path).records, confidence=confidence)
    summary["rates"] = {k: v for k, v in rows[0].as_dict().items() if k not in ("key", "n", "confidence")}
    if as_json:
        emit_json(summary)
        return
    r = rows[0]
    out.print(f"{state.done:,} injections in {out_path}: SDC-1 {_pct(r.sdc1)}, SDC-5 {_pct(r.sdc5)}, "
              f"DUE {_pct(r.due)} ({confidence:.0%} Wilson intervals)", highlight=False)


def _pct(rate):
    return f"{100 * rate.rate:.3f}% [{100 * rate.low:.3f}, {100 * rate.high:.3f}]"


def _run_with_progress(camp, out_path, resume, on_start):
    from rich.progress import TextColumn

    from .. import faults

    with progress(TextColumn("{task.fields[status]}")) as bar:
        task = bar.add_task("injections", total=camp.n, status="")
        every = max(1, camp.n // 200)

        def on_record(rec, state):
            if state.done % every == 0 or state.done == camp.n:
                lo, hi = faults.wilson_interval(state.sdc1, state.done)
                bar.update(task, completed=state.done,
                           status=f"SDC-1 {100 * state.sdc1 / state.done:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]")

        state = camp.run(out_path, resume=resume, on_record=on_record, on_start=on_start)
    if state.note:
        err.print(state.note, highlight=False)
    return state


@command(app, "report")
def report(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="A results file written by `dlcpu faults campaign`.")],
    by: Annotated[str | None, typer.Option("--by", metavar="<group>", help="Group the rates.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", metavar="<file>", help="Save a bit x layer SDC-1 heatmap.")] = None,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999999, help="Interval confidence.")] = 0.95,
    as_json: JsonFlag = False,
):
    """SDC-1, SDC-5 and DUE rates of a campaign with Wilson intervals, overall or by layer/bit/target."""
    from .. import faults

    if by not in (None, "layer", "bit", "target"):
        raise bad_option("--by", f"must be layer, bit or target, got {by!r}")
    if plot is not None:
        check_output_path(plot, "--plot")
    if not os.path.exists(results):
        raise ValueError(f"results file {results} does not exist")
    res = faults.read_results(results)
    if res.warning:
        err.print(f"{results}: {res.warning}", highlight=False)
    layers = res.header.get("layers")
    rows = faults.summarize(res.records, by=by, confidence=confidence, layers=layers)
    if plot:
        faults.plot_heatmap(res.records, plot, title=f"{res.header.get('model')}: {res.header.get('target')}, "
                                                   f"{len(res.records):,} injections", layers=layers)
        err.print(f"heatmap saved to {plot}", highlight=False)
    if as_json:
        emit_json({"header": res.header, "by": by, "rows": [r.as_dict() for r in rows]})
        return
    t = Table(title=f"{results}: {len(res.records):,} of {res.header.get('n')} injections, {res.header.get('target')}, "
                    f"{confidence:.0%} Wilson intervals")
    per_input = bool(rows) and rows[0].per_input is not None
    columns = [by or "all", "n", "SDC-1 %", "SDC-5 %", "DUE %", "masked %"]
    columns += ["SDC-1 % per (fault, image), normal CI over faults"] if per_input else []
    for c in columns:
        t.add_column(c, justify="left" if c == (by or "all") else "right")
    for r in rows:
        cells = ["all" if by is None else str(r.key), f"{r.n:,}", _pct(r.sdc1), _pct(r.sdc5), _pct(r.due),
                 f"{100 * r.masked.rate:.2f}"]
        cells += [_pct(r.per_input)] if per_input else []
        t.add_row(*cells)
    out.print(t)
    if per_input:
        out.print(f"weight faults: a fault counts as SDC when it changes the top-1 of any of the "
                  f"{res.header.get('inputs')} test images; the last column is the rate per (fault, image) pair.",
                  highlight=False)


@command(app, "compare")
def compare(
    model_path: Model,
    target: Target = "weights",
    sparsities: Annotated[str, typer.Option("--sparsities", metavar="<list>", help="Pruning sparsities.")] = "0.5,0.75,0.9",
    prune_scope: Annotated[str, typer.Option("--prune-scope", metavar="<scope>",
                                             help="global (one magnitude threshold) or layer (each layer alike).")] = "global",
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=1000, help="Fine-tuning epochs after pruning.")] = 3,
    lr: Annotated[float, typer.Option("--lr", min=1e-9, max=10.0, help="Fine-tuning learning rate.")] = 0.01,
    n: Annotated[str, typer.Option("--n", metavar="<count>", help="Injections per variant.")] = "auto",
    bits: Annotated[str, typer.Option("--bits", metavar="<spec>", help="Bit positions to draw from: all, sign, exponent, mantissa, N or N-M.")] = "all",
    margin: Annotated[float, typer.Option("--margin", min=1e-6, max=0.5, help="Margin of error for --n auto.")] = 0.01,
    seed: Seed = 0,
    out_dir: Annotated[str | None, typer.Option("--out-dir", metavar="<dir>",
                                         help="Keep fine-tuned models and results here; a rerun resumes from them.")] = None,
    threads: Threads = None,
    as_json: JsonFlag = False,
):
    """The LASCAS 2020 study: SDC rates of dense, pruned, int8 and pruned + int8 variants."""
    from ..faults import compress
    from ..train import image_batch

    _target(target)
    try:
        fractions = [float(v) for v in sparsities.split(",") if v.strip()]
    except ValueError:
        raise bad_option("--sparsities", f"must be a comma list of fractions, got {sparsities!r}") from None
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise bad_option("--sparsities", f"every sparsity must be in (0, 1), got {sparsities!r}")
    if n != "auto" and not (n.isdigit() and int(n) >= 1):
        raise bad_option("--n", f"must be 'auto' or a positive integer, got {n!r}")
    if prune_scope not in ("global", "layer"):
        raise bad_option("--prune-scope", f"must be 'global' or 'layer', got {prune_scope!r}")
    if out_dir is not None and not os.path.isdir(out_dir):
        raise bad_option("--out-dir", f"{out_dir} is not a directory")
    model, build_inputs, data = _digits(model_path)
    if build_inputs is not image_batch:
        raise ValueError(f"{model_path} is a recurrent model; the compression study runs on the digits CNN")

    def on_variant(row):
        err.print(f"{row.name:>22}: accuracy {100 * row.accuracy:.2f}%, SDC-1 {100 * row.rate:.3f}% "
                  f"[{100 * row.low:.3f}, {100 * row.high:.3f}] over {row.n:,} injections", highlight=False)

    with _threads(threads):
        rows = compress.compare(model, data, target=target, sparsities=fractions, prune_scope=prune_scope,
                                finetune_epochs=epochs,
                                finetune_lr=lr, n="auto" if n == "auto" else int(n), bits=bits, seed=seed,
                                margin=margin, out_dir=out_dir, on_variant=on_variant)
    if as_json:
        emit_json({"model": model_path, "target": target, "seed": seed, "rows": [r.as_dict() for r in rows]})
        return
    per = "per (fault, test image) pair" if target == "weights" else "per fault (one test image each)"
    t = Table(title=f"Resilience to single-bit {target} faults ({model_path}); SDC-1 rate {per}, factor = dense "
                    f"rate / variant rate")
    columns = ["variant", "accuracy %", "sparsity %", "fault model", "n", "SDC-1 % [95% CI]"]
    columns += ["faults changing any image %"] if target == "weights" else []
    columns += ["DUE %", "factor (>= at 95%)", "paper"]
    for c in columns:
        t.add_column(c, justify="left" if c == "variant" else "right")
    for r in rows:
        d = r.as_dict()
        factor = "-" if r.kind == "dense" else ("inf" if r.factor is None else f"{r.factor:.1f}")
        low = f" (>= {r.factor_low:.1f})" if r.kind != "dense" and r.factor_low else ""
        cells = [r.name, f"{100 * r.accuracy:.2f}", f"{100 * d['sparsity_measured']:.1f}",
                 f"{r.fault_model} ({r.bits_per_element}-bit)", f"{r.n:,}",
                 f"{100 * r.rate:.3f} [{100 * r.low:.3f}, {100 * r.high:.3f}]"]
        cells += [f"{100 * r.any_input_rate:.2f}"] if target == "weights" else []
        cells += [f"{100 * r.due_rate:.3f}", factor + low, f"{d['paper_factor']}x" if d["paper_factor"] else "-"]
        t.add_row(*cells)
    out.print(t)
