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
    """Horizontal bars: each experiment's spend and forecast as a share of its budget, labelled in dollars.

    One axis, "% of monthly budget", so a $30 spend against a $50k budget is as readable as a $45k
    one: the label gives the amounts and the share, and a spend too small to see still gets a mark.
    """
    lines = report.by_experiment or []
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.6 * len(lines) + 1.4)))
    names = [line.name for line in lines][::-1]
    y = list(range(len(names)))
    shares: list[float] = []
    seen: set[str] = set()

    def once(label: str) -> str | None:
        if label in seen:
            return None
        seen.add(label)
        return label

    for i, line in enumerate(lines[::-1]):
        budget = float(line.budget) if line.budget else None
        spend = float(line.spend)
        if budget is None:
            ax.text(0, i, f"  {_dollars(spend)} (no budget)", va="center", fontsize=8)
            shares.append(0.0)
            continue
        share = 100 * spend / budget
        shares.append(share)
        colour = OVER if share > 100 else SPEND
        ax.barh(
            i,
            share,
            height=0.45,
            color=colour,
            label=once("spend"),
        )
        if line.forecast is not None:
            f = 100 * float(line.forecast) / budget
            shares.append(f)
            ax.plot(
                [f, f],
                [i - 0.3, i + 0.3],
                color=FORECAST,
                linewidth=2.5,
                label=once("forecast"),
            )
        text = f"{_cents(spend)} of {_dollars(budget)} ({_share(share)})"
        ax.text(max(share, float(line.forecast or 0) * 100 / budget), i, "  " + text, va="center", fontsize=8)
    ax.set_yticks(y, names)
    largest = max([*shares, 0.0])
    if largest >= 40:
        ax.axvline(100, color=OVER, linestyle=":", linewidth=1, label="budget")
        ax.set_xlabel("% of monthly budget")
        ax.set_xlim(0, max(largest, 100.0) * 1.45)
    else:  # small fractions: zoom in so the bars can be read; the budget (100 %) is off the scale
        ax.set_xlabel("% of monthly budget (zoomed: the budget, 100 %, is off the scale)")
        ax.set_xlim(0, max(largest, 0.01) * 1.8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: _share_tick(v)))
    ax.set_title(f"Spend by experiment vs budget, {report.month} (as of {report.as_of:%Y-%m-%d %H:%M} UTC)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _cents(value: float) -> str:
    return f"${value:,.2f}" if abs(value) < 1_000 else _dollars(value)


def _share_tick(percent: float) -> str:
    return f"{percent:.2g}%" if 0 < percent < 10 else f"{percent:.0f}%"


def _share(percent: float) -> str:
    return f"{percent:.2g}%" if 0 < percent < 1 else f"{percent:.0f}%"


def _day_axis(ax: Any, report: CostReport) -> None:
    ax.set_xlim(mdates.date2num(report.month.start), mdates.date2num(report.month.end))
    ax.xaxis.set_major_locator(mdates.DayLocator(bymonthday=[1, 8, 15, 22, 29]))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))


def daily_burn(report: CostReport, path: Path) -> Path:
    """Two panels, one quantity and one axis each: cumulative spend with the forecast and the budget
    (top), and spend per day (bottom); the as-of time is marked on both."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True, height_ratios=[3, 2])
    days = [d for d, _ in report.daily]
    # Cumulative spend at each day's end (days without spend included), the last point at as-of.
    per_day = dict(report.daily)
    xs = [mdates.date2num(report.month.start)]
    cumulative = [0.0]
    running = Decimal(0)
    day = report.month.start
    while day < report.as_of:
        running += per_day.get(day.date(), Decimal(0))
        xs.append(mdates.date2num(min(day + timedelta(days=1), report.as_of)))
        cumulative.append(float(running))
        day += timedelta(days=1)
    top.plot(xs, cumulative, color=SPEND, label="spend to date")
    f = report.forecast
    if f is not None and f.month_end > f.spend_to_date:
        top.plot(
            [mdates.date2num(f.as_of), mdates.date2num(report.month.end)],
            [float(f.spend_to_date), float(f.month_end)],
            linestyle="--",
            color=FORECAST,
            label=f"forecast {_dollars(float(f.month_end))}",
        )
    budget = report.total.budget
    data_top = max([*cumulative, float(f.month_end) if f is not None else 0.0, 1.0])
    if budget is not None and float(budget) <= 3 * data_top:
        top.axhline(float(budget), color=OVER, linestyle=":", label=f"budget {_dollars(float(budget))}")
        data_top = max(data_top, float(budget))
    elif budget is not None:  # far above the spend: drawing it would flatten the spend to nothing
        used = 100 * (cumulative[-1] if cumulative else 0.0) / float(budget)
        top.plot(
            [],
            [],
            color=OVER,
            linestyle=":",
            label=f"budget {_dollars(float(budget))} ({_share(used)} used, off scale)",
        )
    top.set_ylabel("cumulative spend (USD)")
    top.yaxis.set_major_formatter(FuncFormatter(_dollars))
    top.set_ylim(0, data_top * 1.15)
    top.grid(axis="y", alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([mdates.date2num(d) + 0.5 for d in days], [float(v) for _, v in report.daily], color=SPEND,
               alpha=0.7, width=0.8)  # fmt: skip
    bottom.set_ylabel("spend per day (USD)")
    bottom.yaxis.set_major_formatter(FuncFormatter(_dollars))
    bottom.grid(axis="y", alpha=0.3)
    for ax in (top, bottom):
        ax.axvline(mdates.date2num(report.as_of), color="#555", linewidth=0.8)
    top.text(mdates.date2num(report.as_of), 0, " as of", fontsize=7, color="#555", va="bottom")
    _day_axis(bottom, report)
    top.set_title(
        f"Daily burn and month-end forecast, {report.month} (as of {report.as_of:%Y-%m-%d %H:%M} UTC)"
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def value_over_time(report: CostReport, path: Path) -> Path:
    """Two panels, one quantity and one axis each: USD per HS23-hour delivered per day (top) and
    what spot saved against the on-demand list price per day (bottom)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True)
    days = report.days
    points = [(d.day, float(d.cost_per_hs23_hour)) for d in days if d.cost_per_hs23_hour is not None]
    if points:
        top.plot([mdates.date2num(d) + 0.5 for d, _ in points], [v for _, v in points], marker="o",
                 markersize=3, color=SPEND)  # fmt: skip
    top.set_ylabel("USD per HS23-h delivered")
    top.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _p: f"${v:.2g}" if 0 < abs(v) < 0.1 else f"${v:.2f}")
    )
    top.set_ylim(bottom=0)
    top.grid(axis="y", alpha=0.3)
    bottom.bar([mdates.date2num(d.day) + 0.5 for d in days], [float(d.spot_savings) for d in days],
               color=MARKET_COLOURS["spot"], width=0.8)  # fmt: skip
    bottom.set_ylabel("spot savings per day (USD)")
    bottom.yaxis.set_major_formatter(FuncFormatter(_dollars))
    bottom.grid(axis="y", alpha=0.3)
    _day_axis(bottom, report)
    top.set_title(f"Cost of delivered work and spot savings, {report.month}")
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


def allocations_against_plan(report: CostReport, path: Path) -> Path:
    """Per allocation, as shares of its grant (allocations of 30 and 30,000 node-hours read alike):
    settled, in flight and committed stacked, booked beyond the grant in red, the burn plan at
    as-of marked; the node-hours written next to each bar."""
    lines = [a for a in report.allocations if a.node_hours_granted]
    fig, ax = plt.subplots(figsize=(8, 0.75 * max(1, len(lines)) + 1.6))
    names = [a.name for a in lines]
    ax.barh(names, [100.0] * len(lines), color="#ecf0f1", label="granted")
    left = [0.0] * len(lines)
    for label, colour, attr in (
        ("settled", "#8e44ad", "settled"),
        ("in flight", "#bb8fce", "in_flight"),
        ("committed", "#d7bde2", "committed"),
    ):
        shares = [100 * getattr(a, attr) / (a.node_hours_granted or 1) for a in lines]
        ax.barh(names, shares, left=left, height=0.5, color=colour, label=label)
        left = [x + v for x, v in zip(left, shares, strict=True)]
    over = [100 * a.over_committed / (a.node_hours_granted or 1) for a in lines]
    if any(over):
        ax.barh(names, over, left=[100.0] * len(lines), height=0.5, color=OVER, label="over-committed")
    for i, a in enumerate(lines):
        if a.burn_plan is not None:
            ax.plot([100 * a.burn_plan / (a.node_hours_granted or 1)] * 2, [i - 0.4, i + 0.4],
                    color="#2c3e50", linewidth=2.5)  # fmt: skip
        plan = "" if a.burn_plan is None else f", plan {a.burn_plan:,.0f}"
        ax.text(max(100.0, left[i]) + 1.5, i, f"{a.booked:,.0f} of {a.node_hours_granted:,.0f} booked{plan}",
                va="center", fontsize=8)  # fmt: skip
    if any(a.burn_plan is not None for a in lines):
        ax.plot([], [], color="#2c3e50", linewidth=2.5, label="burn plan at as-of")
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlim(0, max([100.0, *left]) + 45)
    ax.set_xticks(range(0, int(max([100.0, *left])) + 1, 20))  # no ticks under the labels on the right
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f}%"))
    ax.set_xlabel("share of the grant (node-hours since the allocation began)")
    ax.set_title(f"HPC allocations against the burn plan, as of {report.as_of:%Y-%m-%d %H:%M} UTC")
    fig.legend(fontsize=8, frameon=False, loc="lower center", ncol=6)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def render_all(report: CostReport, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"cost_{report.month}"
    with plt.rc_context(NO_MATH):
        charts = {
            "experiment": spend_by_experiment(report, out_dir / f"{stem}_by_experiment.png"),
            "burn": daily_burn(report, out_dir / f"{stem}_daily_burn.png"),
            "value": value_over_time(report, out_dir / f"{stem}_value_over_time.png"),
            "backend": spend_by_backend_market(report, out_dir / f"{stem}_by_backend_market.png"),
        }
        if report.allocations:
            charts["allocations"] = allocations_against_plan(report, out_dir / f"{stem}_allocations.png")
        return charts
