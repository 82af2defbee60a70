"""Finance reports from the cost ledger: spend against budget, per HS23-hour, savings, forecast."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable
from sqlalchemy import Table
from sqlmodel import Session

from accounting.billing import load_units, slices, usage
from accounting.ledger import ledger_totals
from accounting.period import Month
from accounting.spot_prices import StoredSpotPrices
from policies.pacing import burn_line
from provisioner.domain import Market, Offering
from provisioner.model import ResourceRow

RESOURCES: Table = ResourceRow.__table__  # type: ignore[attr-defined]
CENT = Decimal("0.01")
DEFAULT_BURN_DAYS = 7
HISTORY_MONTHS = 6


def usd(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class SpendLine:
    name: str
    spend: Decimal
    list_value: Decimal
    hs23_hours: float  # delivered: busy time × HS23 (the work)
    egress_gb: float = 0.0
    budget: Decimal | None = None
    forecast: Decimal | None = None
    hs23_hours_held: float = 0.0  # held: billable time × HS23 (the capacity paid for)

    @property
    def remaining(self) -> Decimal | None:
        return None if self.budget is None else self.budget - self.spend

    @property
    def budget_used(self) -> float | None:
        if self.budget is None or self.budget == 0:
            return None
        return float(self.spend / self.budget)

    @property
    def cost_per_hs23_hour(self) -> Decimal | None:
        """USD per HS23-hour DELIVERED (busy), not per hour held."""
        return None if self.hs23_hours <= 0 else self.spend / Decimal(repr(self.hs23_hours))


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One day's spend, spot paid and at list price, and HS23-hours delivered."""

    day: date
    spend: Decimal = Decimal(0)
    spot_paid: Decimal = Decimal(0)
    spot_list: Decimal = Decimal(0)
    hs23_hours_delivered: float = 0.0

    @property
    def spot_savings(self) -> Decimal:
        return self.spot_list - self.spot_paid

    @property
    def cost_per_hs23_hour(self) -> Decimal | None:
        return (
            None if self.hs23_hours_delivered <= 0 else self.spend / Decimal(repr(self.hs23_hours_delivered))
        )


@dataclass(frozen=True, slots=True)
class AllocationLine:
    """An allocation's node-hours (one unit = one node), from the billing model.

    `node_hours_used`: run inside the report's month up to as-of. Since the allocation started:
    `settled` (run so far, finished pilots and the elapsed part of running ones), `in_flight`
    (running pilots' remaining walltime), `committed` (queued pilots' walltime); `left` = granted −
    all three. `burn_plan`: what the pacing plan's burn line (`policies.pacing.burn_line`) says should
    be used by as-of; None when the allocation's period is not known (a grant without its offering).
    """

    offering_id: str
    name: str
    node_hours_used: float
    node_hours_granted: float | None
    settled: float = 0.0
    in_flight: float = 0.0
    committed: float = 0.0
    burn_plan: float | None = None

    @property
    def booked(self) -> float:
        return self.settled + self.in_flight + self.committed

    @property
    def left(self) -> float | None:
        return None if self.node_hours_granted is None else max(0.0, self.node_hours_granted - self.booked)

    @property
    def over_committed(self) -> float:
        """Booked beyond the grant. The planner never books past it (`node_hours_on_pace` is capped
        at the hours left), but pilots it did not size (another broker, a hand-submitted pilot, a
        grant lowered in the policy) can: shown, not hidden behind `left` = 0."""
        if self.node_hours_granted is None:
            return 0.0
        return max(0.0, self.booked - self.node_hours_granted)

    @property
    def vs_plan(self) -> float | None:
        """Settled + in flight − the burn plan: > 0 ahead of the plan, < 0 behind it."""
        return None if self.burn_plan is None else self.settled + self.in_flight - self.burn_plan

    @property
    def used_fraction(self) -> float | None:
        if not self.node_hours_granted:
            return None
        return self.settled / self.node_hours_granted


@dataclass(frozen=True, slots=True)
class Forecast:
    """Month-end spend projected linearly from the recent burn rate."""

    method: str
    window_days: int
    daily_rate: Decimal
    spend_to_date: Decimal
    month_end: Decimal
    as_of: datetime


@dataclass(slots=True)
class CostReport:
    month: Month
    experiment: str | None
    as_of: datetime
    total: SpendLine
    by_experiment: list[SpendLine] = field(default_factory=list)
    by_backend: list[SpendLine] = field(default_factory=list)
    by_family: list[SpendLine] = field(default_factory=list)
    by_market: list[SpendLine] = field(default_factory=list)
    by_month: list[SpendLine] = field(default_factory=list)
    backend_market: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    daily: list[tuple[date, Decimal]] = field(default_factory=list)
    egress_spend: Decimal = Decimal(0)
    idle_spend: Decimal = Decimal(0)
    spot_paid: Decimal = Decimal(0)
    spot_list: Decimal = Decimal(0)
    allocations: list[AllocationLine] = field(default_factory=list)
    forecast: Forecast | None = None
    days: list[DayFigures] = field(default_factory=list)
    committed: Decimal = Decimal(0)  # what running units will still cost this month (committed burn)

    @property
    def egress_share(self) -> float | None:
        return None if self.total.spend == 0 else float(self.egress_spend / self.total.spend)

    @property
    def spot_savings(self) -> Decimal:
        return self.spot_list - self.spot_paid

    @property
    def total_budget(self) -> Decimal | None:
        budgets = [line.budget for line in self.by_experiment if line.budget is not None]
        return sum(budgets, Decimal(0)) if budgets else None


def _lines(
    session: Session,
    month: Month,
    by: str,
    experiment: str | None,
    budgets: Mapping[str, Decimal] | None = None,
    *,
    end: datetime,
) -> list[SpendLine]:
    out = []
    for t in ledger_totals(session, month.start, end, [by], experiment=experiment):
        name = t.key[0]
        budget = None if budgets is None else budgets.get(name)
        out.append(
            SpendLine(
                name,
                t.amount,
                t.list_amount,
                t.hs23_hours,
                t.egress_gb,
                budget,
                hs23_hours_held=t.hs23_hours_held,
            )
        )
    if budgets is not None:  # experiments with a budget and no spend still belong in the report
        seen = {line.name for line in out}
        for name, budget in budgets.items():
            if name not in seen and (experiment is None or name == experiment):
                out.append(SpendLine(name, Decimal(0), Decimal(0), 0.0, 0.0, budget))
    return sorted(out, key=lambda line: (-line.spend, line.name))


def linear_forecast(
    daily: Mapping[date, Decimal],
    month: Month,
    as_of: datetime,
    window_days: int = DEFAULT_BURN_DAYS,
    committed: Decimal = Decimal(0),
) -> Forecast:
    """Spend so far + the rest of the month: the larger of the recent trend (mean daily spend over
    the last `window_days` full days × days left) and what running units are already committed to
    (`committed_burn`). A fleet that just grew burns more than its past days show; a trend that
    includes units since drained would otherwise be all the forecast knows.

    Before one full day has passed, the rate is the spend so far divided by the time elapsed.
    After the month has ended, the forecast is the actual spend.
    """
    as_of = min(as_of, month.end)
    spent = sum(
        (v for d, v in daily.items() if month.start.date() <= d < month.end.date() and d <= as_of.date()),
        Decimal(0),
    )
    if as_of >= month.end:
        return Forecast("month closed: actual spend", 0, Decimal(0), spent, spent, as_of)
    today = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
    full_days = (today - month.start).days
    window = min(window_days, full_days)
    days_left = Decimal(repr((month.end - as_of).total_seconds() / 86400))
    if window > 0:
        first = (today - timedelta(days=window)).date()
        recent = sum((v for d, v in daily.items() if first <= d < today.date()), Decimal(0))
        rate = recent / window
        method = f"linear: mean daily spend of the last {window} full days × {float(days_left):.1f} days left"
    else:
        elapsed = Decimal(repr(max((as_of - month.start).total_seconds(), 3600.0) / 86400))
        rate = spent / elapsed
        method = (
            f"linear: spend so far / {float(elapsed):.2f} days elapsed × {float(days_left):.1f} days left"
        )
    trend = rate * days_left
    if committed > trend:
        method = (
            f"committed: units running now, to their walltime or the month end (above the trend, {method})"
        )
        return Forecast(method, window, rate, spent, spent + committed, as_of)
    return Forecast(method, window, rate, spent, spent + trend, as_of)


def _allocation_start(offering: Offering | None, month: Month) -> datetime:
    if offering is not None and offering.allocation is not None:
        return min(offering.allocation.starts, month.start)
    return month.start


def allocation_usage(
    session: Session,
    month: Month,
    *,
    experiment: str | None = None,
    granted: Mapping[str, float] | None = None,
    offerings: Mapping[str, Offering] | None = None,
    as_of: datetime,
) -> list[AllocationLine]:
    """Node-hours of allocation offerings as of `as_of` (billing model), against the grant."""
    offerings = offerings or {}
    starts = [_allocation_start(o, month) for o in offerings.values() if o.market == Market.ALLOCATION]
    lo = min([month.start, *starts])
    units = [
        u
        for u in load_units(session, lo, month.end, as_of=as_of, experiment=experiment, include_unbilled=True)
        if u.market == Market.ALLOCATION
    ]
    used: dict[str, float] = defaultdict(float)
    settled: dict[str, float] = defaultdict(float)
    in_flight: dict[str, float] = defaultdict(float)
    committed: dict[str, float] = defaultdict(float)
    live = {"requested", "provisioning", "running", "draining"}
    for u in units:
        known = offerings.get(u.offering_id)
        ends = known.allocation.ends if known is not None and known.allocation is not None else None
        used[u.offering_id] += usage(slices(u, month.start, min(month.end, as_of), as_of=as_of)).node_hours
        settled[u.offering_id] += usage(
            slices(u, _allocation_start(known, month), as_of, as_of=as_of)
        ).node_hours
        span = u.span(as_of)
        limit = u.walltime_hours or 0.0
        if span is not None and span[1] >= as_of and u.state in live:  # running at as-of
            stop = span[0] + timedelta(hours=limit)
            stop = min(stop, ends) if ends is not None else stop
            in_flight[u.offering_id] += max(0.0, (stop - as_of).total_seconds() / 3600)
        elif u.charged_from is None and u.state in live:  # queued
            hours = limit if ends is None else min(limit, max(0.0, (ends - as_of).total_seconds() / 3600))
            committed[u.offering_id] += hours
    granted = dict(granted or {})
    for oid, off in offerings.items():
        if off.allocation is not None and off.market == Market.ALLOCATION:
            granted.setdefault(oid, off.allocation.node_hours_granted)
    out = []
    for oid in sorted(set(used) | set(granted) | set(committed)):
        known = offerings.get(oid)
        info = known.allocation if known is not None else None
        plan = None
        if info is not None and oid in granted:
            # the grant the report shows (a given figure overrides the policy's) over the policy's period
            plan = burn_line(replace(info, node_hours_granted=granted[oid]), as_of)
        out.append(
            AllocationLine(
                oid, info.name if info is not None else oid, used.get(oid, 0.0), granted.get(oid),
                settled.get(oid, 0.0), in_flight.get(oid, 0.0), committed.get(oid, 0.0), plan,
            )
        )  # fmt: skip
    return out


def committed_burn(
    session: Session, month: Month, *, as_of: datetime, experiment: str | None = None
) -> dict[str, Decimal]:
    """Experiment → what units running at `as_of` will still cost before the month ends, at the
    price in force: pilots (any unit with a walltime) to their walltime, VMs to the month end
    unless something drains them (the running fleet's burn); a VM already draining is on its way
    out and commits nothing more."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    if as_of >= month.end:
        return {}
    prices = StoredSpotPrices(session)  # the spot price in force now, in the zone each unit runs in
    for u in load_units(session, month.start, month.end, as_of=as_of, experiment=experiment, prices=prices):
        span = u.span(as_of)
        if span is None or span[1] < as_of or (u.charged_until is not None and u.charged_until <= as_of):
            continue
        if u.walltime_hours is None and u.state == "draining":
            continue
        stop = month.end
        if u.walltime_hours is not None:
            stop = min(stop, span[0] + timedelta(hours=u.walltime_hours))
        if stop > as_of:
            hours = Decimal(repr((stop - as_of).total_seconds() / 3600))
            out[u.experiment or "unknown"] += Decimal(u.price_at(as_of)) / 1_000_000 * hours
    return dict(out)


def cost_report(
    session: Session,
    month: Month,
    *,
    experiment: str | None = None,
    budgets: Mapping[str, Decimal] | None = None,
    allocations_granted: Mapping[str, float] | None = None,
    offerings: Mapping[str, Offering] | None = None,
    now: datetime,
    burn_days: int = DEFAULT_BURN_DAYS,
) -> CostReport:
    """Everything finance asks about one month as of `now` (the as-of time; never the wall clock):
    money from the cost ledger's hours before it, allocations and committed burn from the billing
    model as known then."""
    budgets = dict(budgets or {})
    as_of = min(now, month.end)
    start, end = month.start, max(month.start, as_of if as_of < month.end else month.end)
    totals = ledger_totals(session, start, end, [], experiment=experiment)
    t = totals[0] if totals else None
    total_budget = (
        budgets.get(experiment)
        if experiment is not None
        else (sum(budgets.values(), Decimal(0)) if budgets else None)
    )
    total = SpendLine(
        "total",
        t.amount if t else Decimal(0),
        t.list_amount if t else Decimal(0),
        t.hs23_hours if t else 0.0,
        t.egress_gb if t else 0.0,
        total_budget,
        hs23_hours_held=t.hs23_hours_held if t else 0.0,
    )
    report = CostReport(month, experiment, as_of, total)
    report.by_backend = _lines(session, month, "backend", experiment, end=end)
    report.by_family = _lines(session, month, "offering_family", experiment, end=end)
    report.by_market = _lines(session, month, "market", experiment, end=end)
    for kt in ledger_totals(session, start, end, ["kind"], experiment=experiment):
        if kt.key[0] == "egress":
            report.egress_spend = kt.amount
        elif kt.key[0] == "idle":
            report.idle_spend = kt.amount
    for line in report.by_market:
        if line.name == Market.SPOT:
            report.spot_paid, report.spot_list = line.spend, line.list_value
    for bm in ledger_totals(session, start, end, ["backend", "market"], experiment=experiment):
        report.backend_market[(bm.key[0], bm.key[1])] = bm.amount
    first = month
    for _ in range(HISTORY_MONTHS - 1):
        first = first.previous()
    report.by_month = [
        SpendLine(
            m.key[0], m.amount, m.list_amount, m.hs23_hours, m.egress_gb, hs23_hours_held=m.hs23_hours_held
        )
        for m in ledger_totals(session, first.start, end, ["month"], experiment=experiment)
    ]
    daily: dict[date, Decimal] = {}
    per_exp_daily: dict[str, dict[date, Decimal]] = defaultdict(dict)
    for d in ledger_totals(session, start, end, ["experiment", "day"], experiment=experiment):
        day = date.fromisoformat(d.key[1])
        daily[day] = daily.get(day, Decimal(0)) + d.amount
        per_exp_daily[d.key[0]][day] = d.amount
    report.daily = sorted(daily.items())
    days: dict[date, DayFigures] = {}
    for d in ledger_totals(session, start, end, ["day", "market"], experiment=experiment):
        day = date.fromisoformat(d.key[0])
        acc = days.get(day) or DayFigures(day)
        spot = d.key[1] == Market.SPOT
        days[day] = DayFigures(
            day,
            acc.spend + d.amount,
            acc.spot_paid + (d.amount if spot else Decimal(0)),
            acc.spot_list + (d.list_amount if spot else Decimal(0)),
            acc.hs23_hours_delivered + d.hs23_hours,
        )
    report.days = [days[d] for d in sorted(days)]
    committed = committed_burn(session, month, as_of=as_of, experiment=experiment)
    report.committed = sum(committed.values(), Decimal(0))
    report.forecast = linear_forecast(daily, month, as_of, burn_days, report.committed)
    report.by_experiment = [
        SpendLine(
            line.name,
            line.spend,
            line.list_value,
            line.hs23_hours,
            line.egress_gb,
            line.budget,
            linear_forecast(
                per_exp_daily.get(line.name, {}),
                month,
                as_of,
                burn_days,
                committed.get(line.name, Decimal(0)),
            ).month_end,
            hs23_hours_held=line.hs23_hours_held,
        )
        for line in _lines(session, month, "experiment", experiment, budgets, end=end)
    ]
    report.allocations = allocation_usage(
        session, month, experiment=experiment, granted=allocations_granted, offerings=offerings, as_of=as_of
    )
    return report


# ---- output: terminal and CSV ----------------------------------------------------------------


def _money(value: Decimal | None) -> str:
    return "—" if value is None else f"${usd(value):,}"


def _pct(value: float | None, *, small: bool = False) -> str:
    """A percentage; with `small`, fractions under 1 % keep two significant digits (0.012 %)."""
    if value is None:
        return "—"
    if small and 0 < abs(value) < 0.01:
        return f"{value * 100:.2g}%"
    return f"{value * 100:.1f}%"


def report_title(report: CostReport) -> str:
    """The report's title: month, scope and the as-of time every figure is computed at."""
    scope = f" — {report.experiment}" if report.experiment else ""
    return f"Cost report {report.month}{scope}, as of {report.as_of:%Y-%m-%d %H:%M} UTC"


def headline(report: CostReport) -> list[tuple[str, str]]:
    """The key figures as (label, value) text, shared by the terminal, CSV and HTML outputs."""
    f = report.forecast
    cph = report.total.cost_per_hs23_hour
    return [
        ("Month", str(report.month)),
        ("Experiment", report.experiment or "all"),
        ("As of", report.as_of.strftime("%Y-%m-%d %H:%M UTC")),
        ("Spend", _money(report.total.spend)),
        ("Budget", _money(report.total.budget)),
        ("Budget used", _pct(report.total.budget_used, small=True)),
        ("Committed by running units to month end", _money(report.committed)),
        ("Forecast month-end spend", _money(f.month_end if f else None)),
        ("Forecast method", f.method if f else "—"),
        ("HS23-hours delivered (a job running)", f"{report.total.hs23_hours:,.0f}"),
        ("HS23-hours held (paid for)", f"{report.total.hs23_hours_held:,.0f}"),
        ("Cost per HS23-hour delivered", "—" if cph is None else f"${cph:.5f}"),
        ("Egress spend", _money(report.egress_spend)),
        ("Egress share of spend", _pct(report.egress_share)),
        ("Idle spend (paid, no job running)", _money(report.idle_spend)),
        ("Spot paid", _money(report.spot_paid)),
        ("Spot at on-demand list price", _money(report.spot_list)),
        ("Spot savings (list − paid)", _money(report.spot_savings)),
    ]


ALLOCATION_COLUMNS = (
    "allocation",
    "this month",
    "settled",
    "in flight",
    "committed",
    "left",
    "granted",
    "settled %",
    "burn plan",
    "vs plan",
)
ALLOCATION_NOTE = (
    "Node-hours. This month: run inside the month. Since the allocation began: settled (run so far), "
    "in flight (running pilots' remaining walltime), committed (queued pilots' walltime), left (granted − "
    "the three; never negative: booked beyond the grant shows as over-committed, in red). Burn plan: what "
    "the pacing plan's even burn line says should be used by as-of; vs plan: settled + in flight against it."
)


def _vs_plan(a: AllocationLine) -> str:
    lead = a.vs_plan
    if lead is None:
        return "—"
    if round(lead, 1) == 0:
        return "on plan"
    return f"{lead:+,.1f} {'ahead' if lead > 0 else 'behind'}"


def allocation_row(a: AllocationLine) -> list[str]:
    """One allocation as text: node-hours this month; since it started settled, in flight, committed,
    left (or how far over the grant it is booked); the burn plan at as-of and where it stands against it."""
    granted = "—" if a.node_hours_granted is None else f"{a.node_hours_granted:,.0f}"
    left = "—" if a.left is None else f"{a.left:,.1f}"
    if a.over_committed > 0:
        left = f"over-committed by {a.over_committed:,.1f}"
    plan = "—" if a.burn_plan is None else f"{a.burn_plan:,.1f}"
    return [a.name, f"{a.node_hours_used:,.1f}", f"{a.settled:,.1f}", f"{a.in_flight:,.1f}",
            f"{a.committed:,.1f}", left, granted, _pct(a.used_fraction, small=True), plan,
            _vs_plan(a)]  # fmt: skip


def print_report(report: CostReport, console: Console | None = None) -> None:
    console = console or Console()
    head = RichTable(title=report_title(report), show_header=False)
    head.add_column("figure")
    head.add_column("value", justify="right")
    for label, value in headline(report):
        head.add_row(label, value)
    console.print(head)
    exp = RichTable(title="Spend by experiment against budget")
    for col in ("experiment", "spend", "budget", "used", "forecast", "HS23-h delivered", "HS23-h held",
                "$/HS23-h delivered"):  # fmt: skip
        exp.add_column(col, justify="left" if col == "experiment" else "right")
    for line in report.by_experiment:
        cph = line.cost_per_hs23_hour
        exp.add_row(
            line.name, _money(line.spend), _money(line.budget), _pct(line.budget_used, small=True),
            _money(line.forecast), f"{line.hs23_hours:,.0f}", f"{line.hs23_hours_held:,.0f}",
            "—" if cph is None else f"{cph:.5f}",
        )  # fmt: skip
    console.print(exp)
    for title, lines in (
        ("Spend by backend", report.by_backend),
        ("Spend by offering family", report.by_family),
        ("Spend by market", report.by_market),
        ("Spend by month", report.by_month),
    ):
        table = RichTable(title=title)
        for col in ("name", "spend", "list value", "HS23-h"):
            table.add_column(col, justify="left" if col == "name" else "right")
        for line in lines:
            table.add_row(line.name, _money(line.spend), _money(line.list_value), f"{line.hs23_hours:,.0f}")
        console.print(table)
    if report.allocations:
        alloc = RichTable(title="HPC allocations (node-hours)", caption=ALLOCATION_NOTE)
        for col in ALLOCATION_COLUMNS:
            alloc.add_column(col, justify="left" if col == "allocation" else "right")
        for a in report.allocations:
            alloc.add_row(*allocation_row(a), style="bold red" if a.over_committed > 0 else None)
        console.print(alloc)


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _opt(value: object | None) -> object:
    return "" if value is None else value


def _usd_or_blank(value: Decimal | None) -> object:
    return "" if value is None else usd(value)


def write_csv(report: CostReport, out_dir: Path) -> list[Path]:
    """One CSV per view, amounts in USD with cents (exact, from micro-dollars)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"cost_{report.month}"
    files = [_csv(out_dir / f"{stem}_summary.csv", ("figure", "value"), headline(report))]
    header = (
        "experiment", "spend_usd", "budget_usd", "remaining_usd", "budget_used", "forecast_usd",
        "list_value_usd", "hs23_hours", "usd_per_hs23_hour", "egress_gb", "hs23_hours_held",
    )  # fmt: skip
    rows = []
    for line in report.by_experiment:
        cph = line.cost_per_hs23_hour
        used = line.budget_used
        rows.append(
            (
                line.name,
                usd(line.spend),
                _usd_or_blank(line.budget),
                _usd_or_blank(line.remaining),
                "" if used is None else round(used, 4),
                _usd_or_blank(line.forecast),
                usd(line.list_value),
                round(line.hs23_hours, 3),
                "" if cph is None else round(cph, 6),
                round(line.egress_gb, 3),
                round(line.hs23_hours_held, 3),
            )
        )
    files.append(_csv(out_dir / f"{stem}_by_experiment.csv", header, rows))
    for name, lines in (
        ("backend", report.by_backend),
        ("offering_family", report.by_family),
        ("market", report.by_market),
        ("month", report.by_month),
    ):
        files.append(
            _csv(
                out_dir / f"{stem}_by_{name}.csv",
                (name, "spend_usd", "list_value_usd", "hs23_hours", "egress_gb"),
                [
                    (
                        line.name,
                        usd(line.spend),
                        usd(line.list_value),
                        round(line.hs23_hours, 3),
                        round(line.egress_gb, 3),
                    )
                    for line in lines
                ],
            )
        )
    files.append(
        _csv(
            out_dir / f"{stem}_daily.csv",
            (
                "day",
                "spend_usd",
                "spot_paid_usd",
                "spot_list_usd",
                "spot_savings_usd",
                "hs23_hours_delivered",
                "usd_per_hs23_hour_delivered",
            ),
            [
                (
                    d.day.isoformat(),
                    usd(d.spend),
                    usd(d.spot_paid),
                    usd(d.spot_list),
                    usd(d.spot_savings),
                    round(d.hs23_hours_delivered, 3),
                    "" if d.cost_per_hs23_hour is None else round(d.cost_per_hs23_hour, 6),
                )
                for d in report.days
            ],
        )
    )
    files.append(
        _csv(
            out_dir / f"{stem}_allocations.csv",
            (
                "offering_id",
                "allocation",
                "node_hours_this_month",
                "node_hours_settled",
                "node_hours_in_flight",
                "node_hours_committed",
                "node_hours_left",
                "node_hours_granted",
                "node_hours_over_committed",
                "node_hours_burn_plan",
                "node_hours_vs_plan",
            ),
            [
                (
                    a.offering_id,
                    a.name,
                    round(a.node_hours_used, 3),
                    round(a.settled, 3),
                    round(a.in_flight, 3),
                    round(a.committed, 3),
                    "" if a.left is None else round(a.left, 3),
                    _opt(a.node_hours_granted),
                    round(a.over_committed, 3),
                    "" if a.burn_plan is None else round(a.burn_plan, 3),
                    "" if a.vs_plan is None else round(a.vs_plan, 3),
                )
                for a in report.allocations
            ],
        )
    )
    return files
