"""`dlcpu quantize MODEL --to int8|ternary --out FILE`: post-training quantization of a digits CNN
(dlcpu.nn.quantize) and the report table that goes with it."""
from typing import Annotated

import typer
from rich.table import Table

from .. import nn
from .. import train as training
from ._output import JsonFlag, bad_option, check_output_path, emit_json, out


def quantize(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="A digits CNN file written by `dlcpu train digits`.")],
    to: Annotated[str, typer.Option("--to", metavar="<format>", help="int8 or ternary.")] = "int8",
    block: Annotated[int, typer.Option("--block", help="Ternary: input channels (or the classifier's inputs) "
                                                       "per block (a multiple of 4 dividing them padded to 16).")] = 16,
    residual: Annotated[int, typer.Option("--residual", help="Ternary: residual levels on top of the base "
                                                             "ternarization.")] = 0,
    out_path: Annotated[str | None, typer.Option("--out", metavar="<file>", help="Where to save the quantized "
                                                 "model (dlcpu.nn.load runs it).")] = None,
    calibration: Annotated[int, typer.Option("--calibration-batches", min=1, max=100,
                                             help="Training batches of 64 images that set the activation "
                                                  "scales.")] = 4,
    fp32_linear: Annotated[bool, typer.Option("--fp32-linear", help="Keep the classifier (Linear layers) in "
                                              "fp32, as ternary networks usually keep their last layer.")] = False,
    act_bits: Annotated[int, typer.Option("--act-bits", help="Width of the quantized layers' u8 input codes: 8, or 7 "
                                          "(PyTorch's reduce_range; the AVX2 kernels multiply 7-bit codes in "
                                          "half the instructions).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="The train/test split of `dlcpu train digits`.")] = 0,
    as_json: JsonFlag = False,
):
    """Quantize a digits CNN's convolutions and classifier to int8 or block-ternary weights (u8
    activations, calibrated), save it, and report accuracy, weight error, multiplications and size against
    fp32 (ternary: for every number of residual levels)."""
    if to not in nn.QUANTIZE_TARGETS:
        raise bad_option("--to", f"must be one of {', '.join(nn.QUANTIZE_TARGETS)}, got {to!r}")
    if block < 1:
        raise bad_option("--block", f"must be >= 1, got {block}")
    if residual < 0:
        raise bad_option("--residual", f"must be >= 0 (residual levels), got {residual}")
    if act_bits not in (7, 8):
        raise bad_option("--act-bits", f"must be 8 or 7, got {act_bits}")
    if out_path is None:
        raise bad_option("--out", "is required: the file the quantized model goes to")
    check_output_path(out_path)
    model = nn.load(model_path)
    if isinstance(model, nn.Quantized):
        raise ValueError(f"{model_path}: the model is quantized already")  # noqa: TRY004 (a file's content)
    convs = [m for m in model._walk() if isinstance(m, nn.Conv2d)]
    if not convs or convs[0].args["in_channels"] != 1:
        raise ValueError(f"{model_path}: expected a digits CNN (a first Conv2d reading 1 channel of 8x8 images, as "
                         "`dlcpu train digits` saves), got " + (convs[0].describe() if convs else "no Conv2d"))
    data = training.load_digits_split(seed)
    batches = [training.image_batch(data.x_train[i:i + 64]) for i in range(0, min(len(data.x_train), 64 * calibration), 64)]
    linear = not fp32_linear
    q = nn.quantize(model, to, batches, block=block, residual=residual, linear=linear, act_bits=act_bits)
    nn.save(q, out_path)
    costs = nn.quantize_costs(model, training.image_batch(data.x_test[:1]))
    rows = [{"format": "fp32", "levels": None, "test_accuracy": training.evaluate(model, data.x_test, data.y_test),
             **nn.quantize_weight_report(model, costs)}]
    reloaded = nn.load(out_path)
    for levels in ([None] if to == "int8" else range(residual + 1, 0, -1)):
        if levels is not None:
            reloaded.set_levels(levels)
        rows.append({"format": to, "levels": levels,
                     "test_accuracy": training.evaluate(reloaded, data.x_test, data.y_test),
                     **nn.quantize_weight_report(model, costs, to, block, residual, levels, linear)})
    result = {"model": model_path, "saved_to": out_path, "to": to, "block": block if to == "ternary" else None,
              "residual": residual if to == "ternary" else None, "linear": linear, "act_bits": act_bits,
              "calibration_images": sum(len(b.data) for b in batches),
              "test_images": len(data.x_test), "rows": rows}
    if as_json:
        emit_json(result)
        return
    t = Table(title=f"quantized {model_path} -> {out_path} | {to}"
                    + (f", blocks of {block} channels, {residual} residual level(s)" if to == "ternary" else "")
                    + ("" if linear else ", fp32 classifier") + (", 7-bit activations" if act_bits == 7 else ""))
    for col in ("format", "levels", "test accuracy", "rel. weight error", "multiplications / image", "weight bytes"):
        t.add_column(col, justify="left" if col == "format" else "right")
    for r in rows:
        t.add_row(r["format"], "" if r["levels"] is None else str(r["levels"]), f"{100 * r['test_accuracy']:.2f}%",
                  f"{r['rel_weight_error']:.3f}", f"{r['multiplications']:,}", f"{r['weight_bytes']:,}")
    out.print(t)
    out.print(("Convolutions and classifier quantized (batch norm stays fp32)" if linear else
               "Convolutions quantized (the classifier and batch norm stay fp32)")
              + "; multiplications per image: dense = one "
              "per weight and output position, ternary = one per block, tap, output channel, level and position "
              "(the +-1 terms are additions); weight bytes: fp32 4 per weight, int8 1 + a scale per channel, "
              "ternary 2 bits per code and level + an alpha per block. Activations: u8 with scales calibrated on "
              f"{result['calibration_images']} training images.", highlight=False)
