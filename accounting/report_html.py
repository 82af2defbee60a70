"""The cost report as one HTML page with its PNG charts written next to it."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from accounting.charts import render_all
from accounting.reports import (
    ALLOCATION_COLUMNS,
    ALLOCATION_NOTE,
    CostReport,
    SpendLine,
    _money,
    _pct,
    allocation_row,
    headline,
    report_title,
)

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
p.note { color: #666; font-size: 12px; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e3e3; }
th { background: #f4f6f8; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.over td { color: #c0392b; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; } .grid > div { flex: 1 1 420px; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], over: Sequence[bool] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="over"' if over and over[i] else ""
        cells = "".join(
            f'<td class="n">{escape(c)}</td>' if j else f"<td>{escape(c)}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _spend_rows(lines: Sequence[SpendLine]) -> list[list[str]]:
    return [
        [line.name, _money(line.spend), _money(line.list_value), f"{line.hs23_hours:,.0f}",
         f"{line.hs23_hours_held:,.0f}"]
        for line in lines
    ]  # fmt: skip


def write_html(report: CostReport, out_dir: Path) -> Path:
    """Render charts (PNG) and the page; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = render_all(report, out_dir)
    figures = [(label, value) for label, value in headline(report) if label not in ("Month", "As of")]
    exp_rows = []
    over = []
    for line in report.by_experiment:
        cph = line.cost_per_hs23_hour
        exp_rows.append(
            [
                line.name, _money(line.spend), _money(line.budget), _pct(line.budget_used, small=True),
                _money(line.forecast), f"{line.hs23_hours:,.0f}", "—" if cph is None else f"${cph:.5f}",
            ]
        )  # fmt: skip
        over.append(line.budget is not None and (line.forecast or line.spend) > line.budget)
    alloc_rows = [allocation_row(a) for a in report.allocations]
    spend_header = ("name", "spend", "list value", "HS23-h delivered", "HS23-h held")
    title = report_title(report)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<p class='note'>From the cost ledger (the billing model's figures). Amounts in USD; list value is "
        "the same time at the on-demand list price. HS23-hours delivered: time a job was running; held: "
        "time paid for.</p>",
        _table(("figure", "value"), [list(f) for f in figures]),
        "<h2>Spend by experiment against budget</h2>",
        "<p class='note'>Red: spend or month-end forecast above the budget.</p>",
        _table(
            ("experiment", "spend", "budget", "used", "forecast", "HS23-h delivered", "$/HS23-h delivered"),
            exp_rows,
            over,
        ),
        f"<img src='{charts['experiment'].name}' alt='spend by experiment vs budget'>",
        "<h2>Daily burn and forecast</h2>",
        f"<img src='{charts['burn'].name}' alt='daily burn with forecast'>",
        "<h2>Cost of delivered work and spot savings over time</h2>",
        f"<img src='{charts['value'].name}' alt='USD per HS23-hour delivered and spot savings per day'>",
        "<h2>Spend by backend and market</h2>",
        f"<img src='{charts['backend'].name}' alt='spend by backend and market'>",
        "<div class='grid'>",
        f"<div><h2>By backend</h2>{_table(spend_header, _spend_rows(report.by_backend))}</div>",
        f"<div><h2>By market</h2>{_table(spend_header, _spend_rows(report.by_market))}</div>",
        f"<div><h2>By offering family</h2>{_table(spend_header, _spend_rows(report.by_family))}</div>",
        f"<div><h2>By month</h2>{_table(spend_header, _spend_rows(report.by_month))}</div>",
        "</div>",
    ]
    if alloc_rows:
        parts += [
            "<h2>HPC allocations (node-hours)</h2>",
            f"<p class='note'>{escape(ALLOCATION_NOTE)}</p>",
            _table(ALLOCATION_COLUMNS, alloc_rows, [a.over_committed > 0 for a in report.allocations]),
            f"<img src='{charts['allocations'].name}' alt='allocations: node-hours against the burn plan'>",
        ]
    parts.append("</body></html>")
    path = out_dir / f"cost_{report.month}.html"
    path.write_text("\n".join(parts))
    return path
