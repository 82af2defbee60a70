"""PNG charts for the cost report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from accounting.reports import CostReport

matplotlib.use("Agg")  # files only, never a display; switching is allowed until a figure exists
# Dollar amounts in labels must stay text: with math parsing on, "$817 of $1.5k" renders as italics.
NO_MATH: Any = {"text.parse_math": False}

SPEND = "#3b6ea8"
BUDGET = "#9aa5b1"
OVER = "#c0392b"
FORECAST = "#e67e22"
MARKET_COLOURS = {"on_demand": "#3b6ea8", "spot": "#27ae60", "allocation": "#8e44ad", "backfill": "#95a5a6"}
DPI = 110


def _dollars(value: float, _pos: object = None) -> str:
    if abs(value) >= 1_000_000:
        return f"${value / 1_000_000:.1f}M"
    if abs(value) >= 10_000:
        return f"${value / 1_000:.0f}k"
    if abs(value) >= 1_000:
        return f"${value / 1_000:.1f}k"
    return f"${value:,.0f}"


def spend_by_experiment(report: CostReport, path: Path) -> Path:
    """Horizontal bars: spend and month-end forecast per experiment against its budget."""
    lines = report.by_experiment or []
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.6 * len(lines) + 1.4)))
    names = [line.name for line in lines][::-1]
    spend = [float(line.spend) for line in lines][::-1]
    budget = [float(line.budget) if line.budget is not None else None for line in lines][::-1]
    forecast = [float(line.forecast) if line.forecast is not None else None for line in lines][::-1]
    y = range(len(names))
    ax.barh(y, [b or 0 for b in budget], height=0.7, color=BUDGET, alpha=0.35, label="budget")
    colours = [OVER if b is not None and s > b else SPEND for s, b in zip(spend, budget, strict=True)]
    ax.barh(y, spend, height=0.4, color=colours, label="spend")
    for i, f in enumerate(forecast):
        if f is not None:
            ax.plot(
                [f, f],
                [i - 0.3, i + 0.3],
                color=FORECAST,
                linewidth=2.5,
                label="forecast" if i == 0 else None,
            )
    for i, (s, b) in enumerate(zip(spend, budget, strict=True)):
        text = _dollars(s) + (f" of {_dollars(b)}" if b else " (no budget)")
        ax.text(s, i, "  " + text, va="center", fontsize=8)
    ax.set_yticks(list(y), names)
    ax.xaxis.set_major_formatter(FuncFormatter(_dollars))
    top = max([*spend, *[b or 0 for b in budget], *[f or 0 for f in forecast], 1.0])
    ax.set_xlim(0, top * 1.35)
    ax.set_title(f"Spend by experiment vs budget, {report.month}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def daily_burn(report: CostReport, path: Path) -> Path:
    """Daily spend (bars), cumulative spend (line) and the linear forecast to month end (dashed)."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    days = [d for d, _ in report.daily]
    values = [float(v) for _, v in report.daily]
    # Bars centred on noon of their day; the cumulative line steps at each day's end.
    ax.bar(
        [mdates.date2num(d) + 0.5 for d in days],
        values,
        color=SPEND,
        alpha=0.6,
        label="daily spend",
        width=0.8,
    )
    ax.set_ylabel("daily spend")
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax2 = ax.twinx()
    cumulative: list[float] = []
    running = Decimal(0)
    for _, v in report.daily:
        running += v
        cumulative.append(float(running))
    if days:
        ax2.plot(
            [mdates.date2num(d + timedelta(days=1)) for d in days],
            cumulative,
            color="#2c3e50",
            label="cumulative",
        )
    f = report.forecast
    if f is not None and f.daily_rate > 0:
        start = f.as_of
        ax2.plot(
            [mdates.date2num(start), mdates.date2num(report.month.end)],
            [float(f.spend_to_date), float(f.month_end)],
            linestyle="--",
            color=FORECAST,
            label=f"forecast {_dollars(float(f.month_end))}",
        )
    budget = report.total.budget
    if budget is not None:
        ax2.axhline(float(budget), color=OVER, linestyle=":", label=f"budget {_dollars(float(budget))}")
    ax2.set_ylabel("cumulative")
    ax2.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax2.set_ylim(bottom=0)
    ax.set_xlim(mdates.date2num(report.month.start), mdates.date2num(report.month.end))
    ax.xaxis.set_major_locator(mdates.DayLocator(bymonthday=[1, 8, 15, 22, 29]))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
    ax.set_title(f"Daily burn and month-end forecast, {report.month}")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def spend_by_backend_market(report: CostReport, path: Path) -> Path:
    """Stacked bars: spend per backend split by market (on-demand, spot, allocation, backfill)."""
    backends = sorted({b for b, _ in report.backend_market})
    markets = sorted({m for _, m in report.backend_market}, key=lambda m: list(MARKET_COLOURS).index(m)
                     if m in MARKET_COLOURS else 99)  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bottom = [0.0] * len(backends)
    for market in markets:
        heights = [float(report.backend_market.get((b, market), Decimal(0))) for b in backends]
        ax.bar(backends, heights, bottom=bottom, label=market, color=MARKET_COLOURS.get(market, "#7f8c8d"))
        bottom = [x + h for x, h in zip(bottom, heights, strict=True)]
    for i, total in enumerate(bottom):
        ax.text(i, total, _dollars(total), ha="center", va="bottom", fontsize=8)
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.set_ylim(0, max([*bottom, 1.0]) * 1.15)
    ax.set_title(f"Spend by backend and market, {report.month}")
    if markets:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def render_all(report: CostReport, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"cost_{report.month}"
    with plt.rc_context(NO_MATH):
        return {
            "experiment": spend_by_experiment(report, out_dir / f"{stem}_by_experiment.png"),
            "burn": daily_burn(report, out_dir / f"{stem}_daily_burn.png"),
            "backend": spend_by_backend_market(report, out_dir / f"{stem}_by_backend_market.png"),
        }
