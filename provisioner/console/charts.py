"""The console's charts: SVG drawn on the server by matplotlib (installed from PyPI), inlined in the page.

No chart library is fetched from a CDN at run time: the browser only receives SVG markup.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files and strings only

import matplotlib.pyplot as plt

from provisioner.budget_alerts import BudgetStatus
from provisioner.console.views import AllocationView, FleetLine

NO_MATH: Any = {"text.parse_math": False, "svg.fonttype": "none", "font.size": 9}
STATE_COLOURS = {
    "requested": "#bdc3c7",
    "provisioning": "#f1c40f",
    "running": "#27ae60",
    "draining": "#e67e22",
}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG sits inside the HTML page


def fleet_chart(lines: Sequence[FleetLine]) -> str | None:
    """Stacked bars: live units per backend and market, by state."""
    if not lines:
        return None
    with plt.rc_context(NO_MATH):
        keys = sorted({f"{f.backend}\n{f.market}" for f in lines})
        by_state: dict[str, dict[str, int]] = defaultdict(dict)
        for f in lines:
            key = f"{f.backend}\n{f.market}"
            by_state[f.state][key] = by_state[f.state].get(key, 0) + f.units
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(keys) + 1.5), 2.8))
        bottom = [0] * len(keys)
        for state, colour in STATE_COLOURS.items():
            values = [by_state.get(state, {}).get(k, 0) for k in keys]
            if any(values):
                ax.bar(keys, values, bottom=bottom, label=state, color=colour)
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("units")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def allocation_chart(allocations: Sequence[AllocationView]) -> str | None:
    """Per allocation: node-hours used against the grant, with the even burn line marked."""
    if not allocations:
        return None
    with plt.rc_context(NO_MATH):
        fig, ax = plt.subplots(figsize=(6.5, 0.7 * len(allocations) + 0.9))
        names = [a.name for a in allocations]
        ax.barh(names, [a.granted for a in allocations], color="#ecf0f1", label="granted")
        ax.barh(
            names,
            [a.used for a in allocations],
            color=["#c0392b" if a.paced else "#8e44ad" for a in allocations],
            height=0.5,
            label="used",
        )
        for i, a in enumerate(allocations):
            ax.plot([a.target, a.target], [i - 0.4, i + 0.4], color="#2c3e50", linewidth=2)
        ax.plot([], [], color="#2c3e50", linewidth=2, label="burn line (even pace)")
        ax.set_xlabel("node-hours")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def budget_chart(statuses: Sequence[BudgetStatus]) -> str | None:
    """Per experiment: spend so far and month-end forecast against the monthly budget."""
    shown = [s for s in statuses if s.budget is not None or s.spend > 0]
    if not shown:
        return None
    with plt.rc_context(NO_MATH):
        fig, ax = plt.subplots(figsize=(6.5, 0.8 * len(shown) + 0.9))
        names = [s.experiment for s in shown]
        ax.barh(names, [float(s.forecast) for s in shown], color="#f5cba7", label="month-end forecast")
        ax.barh(names, [float(s.spend) for s in shown], color="#3b6ea8", height=0.5, label="spent")
        for i, s in enumerate(shown):
            if s.budget is not None:
                colour = "#c0392b" if s.alert else "#2c3e50"
                ax.plot([float(s.budget)] * 2, [i - 0.42, i + 0.42], color=colour, linewidth=2.5)
        ax.plot([], [], color="#2c3e50", linewidth=2.5, label="budget")
        ax.set_xlabel("USD this month")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)
