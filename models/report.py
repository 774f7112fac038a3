"""``backtest --report DIR``: one self-contained HTML page (inline SVG, no network) of a backtest.

Charts: realised target vs the selected model's calibrated band over the last
test window; coverage of the 80 % band per fold; a calibration (PIT) chart of
the share of outcomes below q10/q50/q90 against 10/50/90 %; skill vs
persistence per family and fold. A small inline script measures every chart
once the page is laid out and records the count on ``<body data-charts>``, so
a headless browser can prove the page renders.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from chaincast.models.backtest import BacktestReport

W, H, PAD = 760, 260, 40
LAST_ROWS = 240  # four hours of 1-minute forecasts stay readable
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202 (a tiny local mapper)
    span = (hi - lo) or 1.0
    return lambda v: a + (np.asarray(v, dtype=float) - lo) / span * (b - a)


def _points(xs: np.ndarray, ys: np.ndarray) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))


def _frame(title: str, body: str, y_lo: float, y_hi: float, legend: list[tuple[str, str]]) -> str:
    keys = "".join(f'<tspan fill="{c}" dx="12">&#9632; {html.escape(n)}</tspan>' for n, c in legend)
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
            f'<rect x="{PAD}" y="10" width="{W - 2 * PAD}" height="{H - PAD - 10}" fill="none" stroke="#ccc"/>'
            f'<text x="4" y="18" font-size="10">{y_hi:.3g}</text><text x="4" y="{H - PAD}" font-size="10">{y_lo:.3g}</text>'
            f'{body}<text x="{PAD}" y="{H - 10}" font-size="11">{keys}</text></svg></figure>')


def band_chart(report: BacktestReport, model: str) -> str:
    test, pred = report.last_test, report.last_pred.get(model)
    if test is None or pred is None or not len(pred):
        return "<p>No test rows to chart.</p>"
    y, p = test.y[-LAST_ROWS:].astype(float), pred[-LAST_ROWS:]
    lo, hi = float(min(y.min(), p[:, 1].min())), float(max(y.max(), p[:, 3].max()))
    sx, sy = _scale(0, len(y) - 1, PAD, W - PAD), _scale(lo, hi, H - PAD, 10)
    xs = sx(np.arange(len(y)))
    area = _points(np.concatenate([xs, xs[::-1]]), np.concatenate([sy(p[:, 3]), sy(p[:, 1])[::-1]]))
    body = (f'<polygon points="{area}" fill="#1f77b4" fill-opacity="0.25"/>'
            f'<polyline points="{_points(xs, sy(p[:, 0]))}" fill="none" stroke="#1f77b4" stroke-width="1"/>'
            f'<polyline points="{_points(xs, sy(y))}" fill="none" stroke="#000" stroke-width="1"/>')
    title = f"Realised {report.target} (h={report.horizon}) vs {model}'s calibrated q10-q90 band, last {len(y)} test rows"
    return _frame(title, body, lo, hi, [("realised", "#000"), (f"{model} forecast and band", "#1f77b4")])


def _grouped_bars(title: str, rows: list[dict], value: str, line: float | None) -> str:
    folds = sorted({r["fold"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    vals = np.array([[next((r[value] for r in rows if r["fold"] == f and r["model"] == m), 0.0) for m in models]
                     for f in folds], dtype=float)
    lo, hi = min(0.0, float(vals.min()), line or 0.0), max(float(vals.max()), line or 0.0, 1e-9)
    sy = _scale(lo, hi, H - PAD, 10)
    group_w = (W - 2 * PAD) / max(len(folds), 1)
    bar_w = group_w * 0.8 / max(len(models), 1)
    body = []
    for i, f in enumerate(folds):
        for j, m in enumerate(models):
            x = PAD + i * group_w + group_w * 0.1 + j * bar_w
            y0, y1 = float(sy(0.0)), float(sy(vals[i, j]))
            body.append(f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bar_w * 0.9:.1f}" height="{abs(y1 - y0):.1f}" '
                        f'fill="{PALETTE[j % len(PALETTE)]}"><title>fold {f} {m}: {vals[i, j]:.4f}</title></rect>')
        body.append(f'<text x="{PAD + i * group_w + group_w / 2:.1f}" y="{H - PAD + 12}" font-size="10">fold {f}</text>')
    if line is not None:
        body.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{float(sy(line)):.1f}" y2="{float(sy(line)):.1f}" '
                    f'stroke="#000" stroke-dasharray="4 3"/>')
    legend = [(m, PALETTE[j % len(PALETTE)]) for j, m in enumerate(models)]
    return _frame(title, "".join(body), lo, hi, legend)


def calibration_chart(report: BacktestReport) -> str:
    sx, sy = _scale(0, 1, PAD, W - PAD), _scale(0, 1, H - PAD, 10)
    body = [f'<line x1="{float(sx(0)):.1f}" y1="{float(sy(0)):.1f}" x2="{float(sx(1)):.1f}" y2="{float(sy(1)):.1f}" '
            f'stroke="#000" stroke-dasharray="4 3"/>']
    legend = []
    for j, (m, shares) in enumerate(report.calibration.items()):
        color = PALETTE[j % len(PALETTE)]
        xs, ys = sx(np.array([0.1, 0.5, 0.9])), sy(np.array(shares))
        body.append(f'<polyline points="{_points(xs, ys)}" fill="none" stroke="{color}"/>')
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{m}: {s:.3f}</title></circle>'
                 for x, y, s in zip(xs, ys, shares)]
        legend.append((m, color))
    return _frame("Calibration: share of outcomes below q10 / q50 / q90 (diagonal = perfect)", "".join(body), 0, 1,
                  legend)


def results_table(report: BacktestReport) -> str:
    keys = [k for k in report.results[0] if k != "model"] if report.results else []
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["model", *keys])
    rows = []
    for r in report.results:
        cls = ' class="selected"' if r["model"] == report.selected else ""
        cells = "".join(f"<td>{r[k]:.5g}</td>" for k in keys)
        rows.append(f"<tr{cls}><td>{html.escape(r['model'])}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


SCRIPT = """
window.addEventListener('load', () => {
  const charts = [...document.querySelectorAll('svg.chart')];
  const drawn = charts.filter(s => { const b = s.getBBox(); return b.width > 0 && b.height > 0; });
  document.body.dataset.charts = String(drawn.length);
});
"""


def write_report(report: BacktestReport, out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` (and the JSON beside it); returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = report.to_json()
    (out / "backtest.json").write_text(json.dumps(doc, indent=2) + "\n")
    title = f"chaincast backtest: {report.target}, horizon {report.horizon}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{report.rows} test rows. Reference: <b>{report.reference}</b>. Selected on validation data only: "
        f"<b>{html.escape(report.selected)}</b>. Bands calibrated online (adaptive conformal, 80 %).</p>",
        results_table(report),
        band_chart(report, report.selected),
        _grouped_bars("Coverage of the 80 % band per fold (dashed: 0.8)", report.folds, "coverage_80", 0.8),
        calibration_chart(report),
        _grouped_bars("Skill vs persistence (1 - MAE/MAE_persistence) per family and fold", report.folds,
                      "skill_vs_persistence", 0.0),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:24px;max-width:900px}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}tr.selected{background:#e8f0ff}"
            f"figcaption{{font-weight:bold;margin-top:18px}}</style></head><body data-charts='0'>{''.join(parts)}"
            f"<script>{SCRIPT}</script></body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
