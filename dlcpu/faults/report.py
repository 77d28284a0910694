"""Reading fault-injection campaign results and turning them into rates with confidence intervals.

Design
------
A campaign writes a JSONL file: one ``{"kind": "header", "format": "dlcpu-faults/2", ...}`` line,
then one ``{"kind": "injection", "i": ..., "outcome": ...}`` line per injection. ``read_results``
checks that shape. A campaign that was killed may leave half a line at the end, so a corrupt *last*
line is dropped and reported in ``Results.warning``; a corrupt line anywhere else means the file
is damaged and is refused, naming the line. Lines of other kinds (a footer, say) are skipped.

Outcomes per injection are exclusive: ``masked`` (top-1 unchanged), ``sdc1`` (top-1 changed but the
golden class is still in the top 5), ``sdc5`` (the golden class left the top 5) and ``due``
(NaN/Inf in the output). The *rates* reported are the usual metrics, which nest:

* SDC-1 rate: top-1 changed, i.e. outcomes ``sdc1`` + ``sdc5``;
* SDC-5 rate: outcome ``sdc5``;
* DUE rate: outcome ``due``; masked rate: outcome ``masked``.

So ``masked + sdc1 + due`` rates sum to one. Each rate carries a Wilson score interval
(``dlcpu.faults.stats``). Layers are listed in model order (the header's ``layers`` when given,
otherwise a natural sort of the dotted names: "2" < "2.0" < "10"), bits from the top bit down.
Plotting needs matplotlib, imported only inside ``plot_heatmap``, through the Agg canvas without
touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from .inject import OUTCOMES
from .stats import mean_fraction_interval, wilson_interval

__all__ = [
    "FORMAT",
    "OUTCOMES",
    "Rate",
    "Results",
    "SummaryRow",
    "heatmap",
    "plot_heatmap",
    "read_results",
    "summarize",
]

FORMAT = "dlcpu-faults/2"
# rate name -> the outcomes it counts (SDC-1 means "top-1 changed", which sdc5 implies)
_RATES = {"sdc1": ("sdc1", "sdc5"), "sdc5": ("sdc5",), "due": ("due",), "masked": ("masked",)}
_BY = (None, "layer", "bit", "target")
_DTYPE_BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int32": 32,
               "int16": 16, "uint16": 16, "uint32": 32, "int8": 8, "uint8": 8, "fixed8": 8, "fixed16": 16}


class Results(tuple):
    """``(header, records)`` as returned by :func:`read_results`; unpacks like a pair.

    ``warning`` is None, or one line saying what was tolerated (a truncated last line, fewer
    injections than the header planned).
    """

    def __new__(cls, header: dict, records: list, warning: str | None = None):
        self = super().__new__(cls, (header, records))
        self.warning = warning
        return self

    @property
    def header(self) -> dict:
        return self[0]

    @property
    def records(self) -> list:
        return self[1]


def check_record(rec: dict, where: str) -> None:
    """ValueError naming `where` unless `rec` is a well-formed injection record."""
    i = rec.get("i")
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"{where}: injection record needs an integer 'i' >= 0, got {i!r}")
    if rec.get("outcome") not in OUTCOMES:
        raise ValueError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}, "
                         f"got {rec.get('outcome')!r}")
    if not isinstance(rec.get("layer"), str):
        raise ValueError(f"{where}: injection record needs a string 'layer', got {rec.get('layer')!r}")  # noqa: TRY004 (bad file content)
    bit = rec.get("bit")
    if bit is not None and (isinstance(bit, bool) or not isinstance(bit, int) or bit < 0):
        raise ValueError(f"{where}: bit must be an integer >= 0 or null, got {bit!r}")


def read_results(path) -> Results:
    """Read and check a campaign's JSONL file; returns ``Results(header, records)``.

    Records are sorted by ``i``. Raises ValueError (naming the line) when the header is missing
    or not ``dlcpu-faults/2``, a line before the last is not valid JSON or not a valid record, or
    the ``i`` values are duplicated or have gaps.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise ValueError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    numbered = [(k + 1, line) for k, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: empty file, expected a {FORMAT} header line")
    lineno, first = numbered[0]
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise ValueError(f"{path}:{lineno}: first line must be a {FORMAT} header "
                         '({"kind": "header", ...})')
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}:{lineno}: unsupported results format {header.get('format')!r}, "
                         f"expected {FORMAT!r}")
    warnings = []
    records = []
    seen: dict[int, int] = {}
    last = numbered[-1][0]
    for lineno, line in numbered[1:]:
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == last:
                warnings.append(f"line {lineno} is truncated or corrupt and was ignored "
                                "(was the campaign interrupted?)")
                break
            raise ValueError(f"{where}: corrupt line ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            if lineno == last:
                warnings.append(f"line {lineno} is not a record and was ignored")
                break
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        kind = rec.get("kind")
        if kind == "header":
            raise ValueError(f"{where}: a second header line (are two result files concatenated?)")
        if kind != "injection":
            continue
        check_record(rec, where)
        i = rec["i"]
        if i in seen:
            raise ValueError(f"{where}: duplicate injection i={i} (first on line {seen[i]})")
        seen[i] = lineno
        records.append(rec)
    records.sort(key=lambda r: r["i"])
    if records and records[-1]["i"] != len(records) - 1:
        missing = sorted(set(range(records[-1]["i"] + 1)) - set(seen))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{path}: injections i must run 0..{records[-1]['i']} without gaps; "
                         f"missing {len(missing)}: {shown}")
    planned = header.get("n")
    if isinstance(planned, int) and not isinstance(planned, bool) and len(records) < planned:
        warnings.append(f"holds {len(records)} of the {planned} planned injections")
    return Results(header, records, "; ".join(warnings) or None)


@dataclass(frozen=True)
class Rate:
    """``count`` of ``n`` injections, ``rate`` = count/n (NaN when n is 0), Wilson (low, high)."""

    count: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"count": self.count, "rate": self.rate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class SummaryRow:
    """One group of injections: ``key`` (layer name, bit, target, or None for all), ``n`` and rates.

    ``sdc1`` is the SDC-1 rate (top-1 changed: outcomes sdc1 and sdc5), ``sdc5`` the SDC-5 rate,
    ``due`` and ``masked`` their outcomes. ``confidence`` is the level of the intervals.
    """

    key: str | int | None
    n: int
    sdc1: Rate
    sdc5: Rate
    due: Rate
    masked: Rate
    confidence: float
    per_input: Rate = None   # weight faults: SDC-1 per (fault, input) pair, normal interval

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        out = {"key": self.key, "n": self.n, "confidence": self.confidence}
        for name in _RATES:
            out[name] = getattr(self, name).as_dict()
        if self.per_input is not None:
            out["sdc1_per_input"] = self.per_input.as_dict()
        return out


def _natural_key(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"[./]", name)]


def _layer_order(names, layers=None) -> list[str]:
    """``layers`` (model order) first, then any other names in natural order."""
    order = [str(x) for x in layers] if layers is not None else []
    known = set(order)
    return order + sorted({n for n in names if n not in known}, key=_natural_key)


def _outcome_counts(records) -> np.ndarray:
    return np.array([sum(r["outcome"] in outs for r in records) for outs in _RATES.values()],
                    dtype=np.int64)


def _check_records(records) -> list:
    records = list(records)
    for k, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {k}: expected a dict, got {type(rec).__name__}")  # noqa: TRY004 (bad record content)
        if rec.get("outcome") not in OUTCOMES:
            raise ValueError(f"record {k}: outcome must be one of {', '.join(OUTCOMES)}, "
                             f"got {rec.get('outcome')!r}")
    return records


def summarize(records, by: str | None = None, confidence: float = 0.95, *,
              layers=None) -> list[SummaryRow]:
    """Rates of SDC-1, SDC-5, DUE and masked with Wilson intervals, overall or per group.

    ``by``: None (one row, key None), "layer" (model order: ``layers``, e.g. the header's, then
    natural order), "bit" (top bit first) or "target". Groups without injections are left out,
    except that ``by=None`` always gives its one row (rates NaN, interval (0, 1) when empty).
    """
    if by not in _BY:
        raise ValueError(f"summarize: by must be one of None, 'layer', 'bit', 'target', got {by!r}")
    records = _check_records(records)
    if by is None:
        groups = {None: records}
    else:
        groups = {}
        for k, rec in enumerate(records):
            if by not in rec:
                raise ValueError(f"summarize: record {k} has no {by!r} field")
            key = str(rec[by]) if by == "layer" else rec[by]
            groups.setdefault(key, []).append(rec)
    if by == "layer":
        keys = _layer_order(groups, layers)
        keys = [k for k in keys if k in groups]
    elif by == "bit":
        keys = sorted(groups, key=lambda b: (b is None, -(b or 0)))
    else:
        keys = sorted(groups, key=lambda k: (k is None, str(k)))
    if not keys:
        return []
    counts = np.stack([_outcome_counts(groups[k]) for k in keys])          # (groups, rates)
    n = np.array([len(groups[k]) for k in keys], dtype=np.int64)[:, None]
    low, high = wilson_interval(counts, np.broadcast_to(n, counts.shape), confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, counts / np.maximum(n, 1), np.nan)
    rows = []
    for g, key in enumerate(keys):
        rates = {name: Rate(int(counts[g, j]), float(rate[g, j]), float(low[g, j]),
                            float(high[g, j]))
                 for j, name in enumerate(_RATES)}
        rows.append(SummaryRow(key=key, n=int(n[g, 0]), confidence=float(confidence),
                               per_input=_per_input(groups[key], confidence), **rates))
    return rows


def _per_input(records, confidence):
    """For weight-fault records (each evaluated on `images` inputs): the fraction of (fault,
    input) pairs whose top-1 changed; None for other records."""
    if not records or not all("images" in r and "sdc1_images" in r for r in records):
        return None
    frac = np.array([r["sdc1_images"] / r["images"] for r in records], np.float64)
    mean, low, high = mean_fraction_interval(frac.sum(), (frac * frac).sum(), len(frac), confidence)
    return Rate(int(sum(r["sdc1_images"] for r in records)), mean, low, high)


def heatmap(records, *, layers=None):
    """Bit-position x layer grid of SDC-1 rates (top-1 changed).

    Returns ``(layers, bits, rates, counts)``: layer names in model order (``layers`` first, e.g.
    the header's, then any others seen), bits from the top bit of the widest dtype seen (or the
    highest bit seen) down to 0, and float64 ``rates`` / int64 ``counts`` of shape
    ``(len(layers), len(bits))``. Cells without injections have count 0 and rate NaN. Records
    without a bit (``bit`` null) are left out.
    """
    records = [r for r in _check_records(records) if r.get("bit") is not None]
    names = _layer_order({str(r.get("layer")) for r in records}, layers)
    top = -1
    for r in records:
        top = max(top, int(r["bit"]), _DTYPE_BITS.get(str(r.get("dtype")), 0) - 1)
    bits = list(range(top, -1, -1))
    li = {name: k for k, name in enumerate(names)}
    counts = np.zeros((len(names), len(bits)), dtype=np.int64)
    sdc = np.zeros_like(counts)
    for r in records:
        a, b = li[str(r["layer"])], top - int(r["bit"])
        counts[a, b] += 1
        sdc[a, b] += r["outcome"] in _RATES["sdc1"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(counts > 0, sdc / np.maximum(counts, 1), np.nan)
    return names, bits, rates, counts


def plot_heatmap(records, path, title: str | None = None, *, layers=None):
    """Write the bit x layer SDC-1 heatmap as a PNG at ``path`` (returns ``path``).

    Bits run down the y axis (top bit first), layers along x in model order; cells without
    injections are grey. Needs matplotlib (``pip install 'dlcpu[plot]'``).
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'dlcpu[plot]'") from None
    names, bits, rates, counts = heatmap(records, layers=layers)
    if not bits or not names or counts.sum() == 0:
        raise ValueError("plot_heatmap: no injection records with a bit position to plot")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    grid = np.ma.masked_invalid(rates.T)                     # rows: bits, columns: layers
    width = min(40.0, max(4.0, 1.2 + 0.35 * len(names)))
    height = max(3.0, 1.0 + 0.22 * len(bits))
    fig = Figure(figsize=(width + 1.5, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    step = 1 if len(bits) <= 32 else max(1, math.ceil(len(bits) / 32))
    ax.set_yticks(range(0, len(bits), step))
    ax.set_yticklabels([str(b) for b in bits[::step]], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("bit position")
    total = int(counts.sum())
    ax.set_title(title if title is not None else f"SDC-1 rate by bit and layer ({total} injections)")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("SDC-1 rate")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=120)
    return path
