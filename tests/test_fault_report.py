"""dlcpu.faults.report: reading campaign JSONL files, rates with Wilson intervals, the heatmap."""
import json
import math

import numpy as np
import pytest

from dlcpu.faults.report import FORMAT, Results, SummaryRow, heatmap, plot_heatmap, read_results, summarize
from dlcpu.faults.stats import wilson_interval

LAYERS = ["0", "2.0", "2.1", "10"]


def _header(**extra):
    h = {"kind": "header", "format": FORMAT, "model": "m.npz", "model_sha256": "ab" * 32,
         "target": "activations", "fault_model": "ieee", "bits": "all", "layers": LAYERS,
         "seed": 0, "n": 0, "population": 123456, "confidence": 0.95, "margin": 0.01}
    h.update(extra)
    return h


def _record(i, layer, bit, outcome, target="activations"):
    return {"kind": "injection", "i": i, "layer": layer, "layer_type": "Conv2d", "target": target,
            "param": None if target == "activations" else "weight", "index": [0, 1, 2],
            "sample": 3 if target == "activations" else None, "bit": bit, "dtype": "float32",
            "old": "0x3f800000", "new": "0x7f800000", "old_value": 1.0,
            "new_value": math.inf if outcome == "due" else 2.0, "outcome": outcome,
            "max_abs_dev": 0.5}


# A synthetic campaign with known counts. (layer, bit, target) -> outcomes
PLAN = {
    ("0", 30, "activations"): ["sdc5"] * 6 + ["sdc1"] * 2 + ["due"] * 1 + ["masked"] * 1,
    ("0", 3, "activations"): ["masked"] * 20,
    ("2.0", 30, "weights"): ["due"] * 5 + ["sdc1"] * 5,
    ("2.0", 22, "weights"): ["sdc1"] * 1 + ["masked"] * 9,
    ("10", 31, "activations"): ["masked"] * 4 + ["sdc5"] * 1,
}


def _records():
    recs = []
    for (layer, bit, target), outcomes in PLAN.items():
        for outcome in outcomes:
            recs.append(_record(len(recs), layer, bit, outcome, target))
    # shuffle the file order: read_results sorts by i, summarize must not depend on order
    order = np.random.default_rng(0).permutation(len(recs))
    return [recs[k] for k in order]


def _write(path, header, records, tail=""):
    lines = [json.dumps(header)] + [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


@pytest.fixture
def results_file(tmp_path):
    recs = _records()
    return _write(tmp_path / "r.jsonl", _header(n=len(recs)), recs)


# ---------------------------------------------------------------- read_results


def test_read_results(results_file):
    res = read_results(results_file)
    header, records = res
    assert isinstance(res, Results) and res.header is header and res.records is records
    assert res.warning is None
    assert header["format"] == FORMAT and header["layers"] == LAYERS
    assert [r["i"] for r in records] == list(range(55))
    assert any(r["new_value"] == math.inf for r in records)


def test_truncated_last_line_is_tolerated(tmp_path):
    recs = sorted(_records(), key=lambda r: r["i"])
    partial = json.dumps(_record(len(recs), "0", 1, "masked"))[:37]     # killed mid-write
    path = _write(tmp_path / "r.jsonl", _header(n=len(recs) + 5), recs, tail=partial)
    _, records = res = read_results(path)
    assert len(records) == len(recs)
    assert "line 57" in res.warning and "truncated" in res.warning
    assert f"{len(recs)} of the {len(recs) + 5} planned" in res.warning
    # garbage (not just a cut) in the last line is tolerated too
    path.write_text(path.read_text()[: -len(partial)] + "\x00\x00garbage")
    assert len(read_results(path).records) == len(recs)


def test_corrupt_middle_line_is_refused(tmp_path):
    recs = sorted(_records(), key=lambda r: r["i"])
    lines = [json.dumps(_header())] + [json.dumps(r) for r in recs]
    lines[5] = lines[5][:20]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:6: corrupt line") as info:
        read_results(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mutate, match", [
    (lambda recs: recs.append(dict(recs[3])), "duplicate injection i=3"),
    (lambda recs: recs.pop(7), r"missing 1: 7"),
    (lambda recs: recs.__setitem__(2, {**recs[2], "outcome": "crash"}), "outcome must be one of"),
    (lambda recs: recs.__setitem__(2, {**recs[2], "i": "2"}), "integer 'i'"),
    (lambda recs: recs.__setitem__(2, {**recs[2], "bit": -1}), "bit must be"),
    (lambda recs: recs.insert(4, _header()), "second header"),
])
def test_bad_records_are_refused(tmp_path, mutate, match):
    recs = sorted(_records(), key=lambda r: r["i"])
    mutate(recs)
    with pytest.raises(ValueError, match=match):
        read_results(_write(tmp_path / "r.jsonl", _header(), recs))


def test_bad_headers_are_refused(tmp_path):
    recs = _records()
    path = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match="first line must be a dlcpu-faults/2 header"):
        read_results(_write(path, recs[0], recs[1:]))
    with pytest.raises(ValueError, match="unsupported results format 'dlcpu-faults/1'"):
        read_results(_write(path, _header(format="dlcpu-faults/1"), recs))
    path.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_results(path)
    path.write_text('{"kind": "head')                  # a lone truncated header is not tolerated
    with pytest.raises(ValueError, match="first line must be"):
        read_results(path)
    with pytest.raises(ValueError, match="cannot read results file"):
        read_results(tmp_path / "missing.jsonl")


def test_other_kinds_and_blank_lines_are_skipped(tmp_path):
    recs = sorted(_records(), key=lambda r: r["i"])
    lines = [json.dumps(_header())] + [json.dumps(r) for r in recs[:3]] + [""] + \
            [json.dumps(r) for r in recs[3:]] + [json.dumps({"kind": "footer", "seconds": 1.5})]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines))                  # no final newline either
    _, records = res = read_results(path)
    assert len(records) == len(recs) and res.warning is None


# ---------------------------------------------------------------- summarize


def _check_rate(rate, count, n):
    assert rate.count == count
    assert rate.rate == pytest.approx(count / n)
    assert (rate.low, rate.high) == pytest.approx(wilson_interval(count, n))


def test_summarize_overall(results_file):
    _, records = read_results(results_file)
    (row,) = summarize(records)
    assert isinstance(row, SummaryRow) and row.key is None and row.n == 55
    # SDC-1 counts sdc1 and sdc5 outcomes; SDC-5 only sdc5
    _check_rate(row.sdc1, 6 + 2 + 5 + 1 + 1, 55)
    _check_rate(row.sdc5, 6 + 1, 55)
    _check_rate(row.due, 1 + 5, 55)
    _check_rate(row.masked, 1 + 20 + 9 + 4, 55)
    assert row.sdc1.count + row.due.count + row.masked.count == row.n
    d = row.as_dict()
    assert d["sdc1"]["count"] == 15 and d["n"] == 55 and d["confidence"] == 0.95
    json.dumps(d)


def test_summarize_by_layer_in_model_order(results_file):
    header, records = read_results(results_file)
    rows = summarize(records, by="layer", layers=header["layers"])
    assert [r.key for r in rows] == ["0", "2.0", "10"]          # "2.1" has no injections
    assert [r.n for r in rows] == [30, 20, 5]
    _check_rate(rows[0].sdc1, 8, 30)
    _check_rate(rows[0].sdc5, 6, 30)
    _check_rate(rows[1].due, 5, 20)
    _check_rate(rows[1].sdc1, 6, 20)
    _check_rate(rows[2].sdc5, 1, 5)
    # without the header's order, dotted names sort naturally ("10" after "2.0")
    assert [r.key for r in summarize(records, by="layer")] == ["0", "2.0", "10"]
    # the header order wins over the natural one
    rows = summarize(records, by="layer", layers=["10", "2.0", "0"])
    assert [r.key for r in rows] == ["10", "2.0", "0"]


def test_summarize_by_bit_and_target(results_file):
    _, records = read_results(results_file)
    rows = summarize(records, by="bit")
    assert [r.key for r in rows] == [31, 30, 22, 3]
    assert [r.n for r in rows] == [5, 20, 10, 20]
    _check_rate(rows[1].sdc1, 8 + 5, 20)
    _check_rate(rows[1].due, 6, 20)
    _check_rate(rows[3].masked, 20, 20)
    assert rows[3].masked.high == 1.0 and rows[3].sdc1.low == 0.0
    rows = summarize(records, by="target", confidence=0.99)
    assert [r.key for r in rows] == ["activations", "weights"]
    assert [r.n for r in rows] == [35, 20]
    assert rows[1].sdc1.count == 6 and rows[1].confidence == 0.99
    assert (rows[1].sdc1.low, rows[1].sdc1.high) == pytest.approx(wilson_interval(6, 20, 0.99))


def test_summarize_empty_and_bad_arguments(results_file):
    (row,) = summarize([])
    assert row.n == 0 and math.isnan(row.sdc1.rate) and (row.sdc1.low, row.sdc1.high) == (0, 1)
    assert summarize([], by="layer") == []
    _, records = read_results(results_file)
    with pytest.raises(ValueError, match="by must be one of"):
        summarize(records, by="sample")
    with pytest.raises(ValueError, match="confidence"):
        summarize(records, confidence=1.5)
    with pytest.raises(ValueError, match="record 0: outcome must be one of"):
        summarize([{"outcome": "boom"}])


# ---------------------------------------------------------------- heatmap


def test_heatmap_grid(results_file):
    header, records = read_results(results_file)
    layers, bits, rates, counts = heatmap(records, layers=header["layers"])
    assert layers == LAYERS
    assert bits == list(range(31, -1, -1))
    assert rates.shape == counts.shape == (4, 32)
    assert counts.sum() == 55
    assert counts[0, 31 - 30] == 10 and rates[0, 31 - 30] == pytest.approx(0.8)
    assert counts[0, 31 - 3] == 20 and rates[0, 31 - 3] == 0.0
    assert rates[1, 31 - 30] == pytest.approx(0.5) and rates[1, 31 - 22] == pytest.approx(0.1)
    assert rates[3, 0] == pytest.approx(0.2)
    assert counts[2].sum() == 0 and np.isnan(rates[2]).all()              # layer 2.1: no data
    assert np.isnan(rates[counts == 0]).all() and not np.isnan(rates[counts > 0]).any()
    # fixed8 campaigns: bits 7..0
    small = [_record(0, "0", 5, "sdc1") | {"dtype": "int8"}]
    assert heatmap(small)[1] == list(range(7, -1, -1))


def test_plot_heatmap_writes_a_png(results_file, tmp_path):
    pytest.importorskip("matplotlib")
    header, records = read_results(results_file)
    out = tmp_path / "heat.png"
    assert plot_heatmap(records, out, title="test campaign", layers=header["layers"]) == out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="no injection records"):
        plot_heatmap([], tmp_path / "empty.png")


def test_plot_heatmap_without_matplotlib(results_file, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    _, records = read_results(results_file)
    with pytest.raises(ValueError, match=r"plotting needs matplotlib: pip install 'dlcpu\[plot\]'"):
        plot_heatmap(records, tmp_path / "x.png")
