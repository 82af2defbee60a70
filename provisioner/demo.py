"""`provisioner demo`: a realistic day at a facility, simulated end to end on embedded defaults.

Two experiments share the facility. ATLAS asks for a CPU burst whose input data sits in AWS
us-east-1, and runs preemptible simulation that idle backfill nodes can take. LSST runs an
ARM-validated simulation campaign (replayed from a real batch trace) and asks for GPUs to train a
model. An HPC allocation is about to expire and another must be burnt evenly. The broker plans,
provisions on simulated backends, reacts to spot interruptions and idle units, and reports cost.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import Session, select

import policies
from accounting.billing import load_units, slices, usage_by
from accounting.period import Month
from accounting.pipeline import demo_accounting
from accounting.spot_prices import StoredSpotPrices
from backends.simulated import SimulatedBackend, SimulatedCloud
from provisioner.broker import EXAMPLE_POLICY, Broker, build_broker, simulated_backends
from provisioner.catalog import load_catalog
from provisioner.clock import SimulatedClock
from provisioner.demo_invoice import reconcile_demo
from provisioner.domain import (
    LIVE_STATES,
    Arch,
    DemandGroup,
    FleetUnit,
    Offering,
    Plan,
    PlanningConstraints,
)
from provisioner.engine import CycleReport
from provisioner.ids import SeededIds
from provisioner.model import MICRO, BurstRequestRow, ResourceRow
from provisioner.planner import plan
from provisioner.requests import (
    BurstRequestSpec,
    RequestStatus,
    admit,
    load_request_groups,
    new_request_id,
    record_admission,
)
from provisioner.settings import Settings
from provisioner.simulate import BatchSimulator
from provisioner.sources.swf import read_swf
from provisioner.sources.trace import TraceMapping, TraceSource

START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DEFAULT_SEED = 7  # the README's excerpt is this seed's run
DEFAULT_STATE = Path(".provisioner") / "demo"
TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "alea_hpc2n_subset.swf"


@dataclass(frozen=True)
class DemoRequest:
    at_hours: float
    spec: BurstRequestSpec
    label: str


def scenario_requests() -> list[DemoRequest]:
    return [
        DemoRequest(
            0.0,
            BurstRequestSpec(
                experiment="atlas",
                cores=2048,
                duration_hours=6,
                data_location="aws:us-east-1",
                input_gb=4000,
                output_gb=400,
                max_cost_usd=Decimal(2500),
                deadline=START + timedelta(hours=20),
            ),
            "ATLAS Run-3 reprocessing burst: 2,048 cores for 6 h, 4 TB input in aws:us-east-1",
        ),
        DemoRequest(
            1.0,
            BurstRequestSpec(
                experiment="lsst",
                gpus=16,
                gpu_model="A100",
                cores_per_gpu=8,
                memory_gb_per_core=8,
                duration_hours=8,
                max_cost_usd=Decimal(1500),
            ),
            "LSST model training: 16 × A100 for 8 h",
        ),
        DemoRequest(
            2.0,
            BurstRequestSpec(experiment="lsst", gpus=128, gpu_model="H100", duration_hours=4),
            "LSST asks for 128 × H100 (over its GPU rule)",
        ),
    ]


def trace_sources(clock: SimulatedClock) -> list[TraceSource]:
    jobs = list(read_swf(TRACE, limit=1500))
    lsst = TraceSource(
        "lsst-sims",
        jobs[:900],
        TraceMapping(
            experiment="lsst",
            archs=frozenset({Arch.ARM64, Arch.X86_64}),
            max_cores=16,
            time_scale=40.0,
        ),
        start=START,
        now=clock.now,
    )
    atlas_sim = TraceSource(
        "atlas-sim",
        jobs[900:],
        TraceMapping(experiment="atlas", max_cores=8, time_scale=40.0, preemptible=True),
        start=START + timedelta(hours=1),
        now=clock.now,
    )
    return [lsst, atlas_sim]


def plan_without_time_limit(
    groups: Sequence[DemandGroup],
    offerings: Sequence[Offering],
    fleet: Sequence[FleetUnit],
    constraints: PlanningConstraints,
) -> Plan:
    """The engine's planner with no wall-clock limit on its MILP: a seeded simulation must make the
    same decisions on a loaded machine as on an idle one (the demo's instances solve in well under a
    second, so nothing waits long)."""
    return plan(groups, offerings, fleet, constraints, time_limit=math.inf)


def _decision_lines(plan: Plan, broker: Broker) -> list[str]:
    lines = []
    for item in plan.items:
        offering = broker.offerings.get(item.offering_id)
        what = f"{offering.instance_type} ({offering.market})" if offering else item.offering_id
        lines.append(
            f"  [green]+[/green] {item.units:>4} × {what:<34} for [bold]{item.group_id}[/bold]"
            f"  ${item.cost_per_hs23_hour.total:.4f}/HS23-h, est. ${item.cost:,.2f}"
        )
    for exp in plan.explanations:
        if exp.unserved_jobs and exp.unserved_reason is not None:
            lines.append(
                f"  [yellow]![/yellow] {exp.group_id}: {exp.unserved_jobs} jobs wait — {exp.unserved_reason.value}"
                + (f" ({exp.note})" if exp.note else "")
            )
    for drain in plan.drains:
        lines.append(f"  [cyan]-[/cyan] drain {drain.resource_id}: {drain.reason.value}")
    return lines


def _why_lines(plan: Plan) -> list[str]:
    out = []
    for exp in plan.explanations:
        if not exp.chosen or not exp.rejected:
            continue
        best = exp.rejected[0]
        cost = f" ${best.cost_per_hs23_hour:.4f}/HS23-h" if best.cost_per_hs23_hour is not None else ""
        out.append(f"    why not {best.offering_id}{cost}: {best.reason.value} {best.detail}".rstrip())
    return out[:4]


async def run_demo(
    console: Console,
    *,
    hours: float = 14.0,
    step_minutes: float = 30.0,
    state_dir: Path | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, Decimal]:
    """Run the scenario; the same seed gives the same decisions, costs and output, byte for byte."""
    clock = SimulatedClock(START)
    ids = SeededIds(seed)
    state = state_dir or DEFAULT_STATE
    if state_dir is None and state.exists():
        shutil.rmtree(state)  # the demo starts from nothing every time
    state.mkdir(parents=True, exist_ok=True)
    settings = Settings(state_dir=state, database_url=f"sqlite:///{state / 'demo.db'}", broker_id="demo")
    catalog = load_catalog()
    traces = trace_sources(clock)
    policy = policies.load_policy(EXAMPLE_POLICY, today=clock.now().date())
    offerings = list(catalog.offerings) + policies.site_offerings(policy, now=clock.now())
    backends = simulated_backends(offerings, clock, broker_id=settings.broker_id, seed=seed)
    # A rough day in AWS's spot market: interruptions far above the catalog's long-run rate, so the
    # demo shows units taken back and their work replanned.
    aws = backends["aws"]
    assert isinstance(aws, SimulatedCloud)
    aws.spot_interruption_rate = 0.04
    holder: dict[str, BatchSimulator] = {}
    broker = build_broker(
        settings,
        clock=clock,
        backends=dict(backends),
        sources=traces,
        demand=lambda: holder["sim"].demand(),
        ids=ids,
        planner=plan_without_time_limit,
    )
    sim = BatchSimulator(
        list(backends.values()),
        traces,
        broker.offerings,
        clock,
        request_groups=lambda: load_request_groups(broker.db),
    )
    holder["sim"] = sim

    console.rule("[bold]provisioner demo[/bold] — a simulated day, embedded defaults")
    console.print(
        f"catalog: {len(catalog.offerings):,} offerings · policy: examples/policy.toml "
        f"({len(policy.experiments)} experiments, {len(policy.allocations)} allocations, "
        f"{len(policy.backfill)} backfill pool) · database: {settings.resolved_database_url()}"
    )
    pending_requests = scenario_requests()
    steps = int(hours * 60 / step_minutes)
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} cycles"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("simulating", total=steps)
        for _ in range(steps):
            now = clock.now()
            elapsed = (now - START).total_seconds() / 3600
            for req in [r for r in pending_requests if r.at_hours <= elapsed]:
                pending_requests.remove(req)
                _submit(console, broker, req)
            sim.step()
            report = await broker.engine.run_cycle()
            _print_cycle(console, broker, report, now)
            _close_finished_requests(broker, sim)
            clock.advance(step_minutes * 60)
            progress.advance(task)
    # Wind down: no new work, let the broker drain and release.
    for src in traces:
        src.stop_releasing()
    for _ in range(8):
        sim.step()
        report = await broker.engine.run_cycle()
        _print_cycle(console, broker, report, clock.now(), quiet_plan=True)
        _close_finished_requests(broker, sim)
        clock.advance(step_minutes * 60)
    totals = _summary(console, broker, backends)
    _accounting(console, broker, state / "accounting")
    month = Month.of(clock.now())
    reconcile_demo(console, broker.db, backends, month, state / "accounting" / "invoices", now=clock.now())
    broker.db.dispose()
    return totals


def _accounting(console: Console, broker: Broker, out: Path) -> None:
    """Close the month as finance and APEL would see it: usage → ledger → APEL queue → report."""
    result = demo_accounting(broker, broker.clock.now().strftime("%Y-%m"), out)
    console.rule("[bold]accounting[/bold]")
    ledger = ", ".join(f"{t.key[0]} ${t.amount:,.2f}" for t in result.by_experiment)
    console.print(
        f"usage records: {result.imported} imported ({len(result.problems)} problems) · ledger {ledger} · "
        f"APEL messages queued: {result.messages} in {out / 'apel-outgoing'}"
    )
    for problem in result.problems[:5]:
        console.print(f"  [yellow]![/yellow] {problem}")
    html = [f for f in result.files if f.suffix == ".html"]
    if html:
        console.print(f"finance report: {html[0]}")


def _submit(console: Console, broker: Broker, req: DemoRequest) -> None:
    request_id = new_request_id(broker.store.ids)
    engine = broker.engine
    offerings = list(broker.offerings.values())
    fleet = engine.fleet_units()
    constraints = broker.constraints([], offerings, fleet, broker.clock.now())
    admission = admit(
        request_id,
        req.spec,
        constraints=constraints,
        offerings=offerings,
        fleet=fleet,
        plan_fn=engine.planner,
        now=broker.clock.now(),
    )
    record_admission(broker.db, request_id, req.spec, admission, now=broker.clock.now())
    mark = "[green]admitted[/green]" if admission.accepted else "[red]rejected[/red]"
    console.print(f"[bold]{_t(broker)}[/bold] request {request_id}: {req.label}")
    console.print(f"        {mark}: {admission.reason}")


def _t(broker: Broker) -> str:
    return broker.clock.now().strftime("%H:%M")


def _print_cycle(
    console: Console, broker: Broker, report: CycleReport, now: datetime, quiet_plan: bool = False
) -> None:
    lines: list[str] = []
    if report.plan is not None and not quiet_plan:
        lines += _decision_lines(report.plan, broker)
        if report.plan.items:
            lines += _why_lines(report.plan)
    elif report.plan is not None:
        lines += [f"  [cyan]-[/cyan] drain {d.resource_id}: {d.reason.value}" for d in report.plan.drains]
    rec = report.reconcile
    for rid in rec.lost:
        lines.append(f"  [red]✗[/red] {rid} taken back by the provider: its jobs are pending again")
    for rid in rec.interrupted:
        lines.append(f"  [magenta]⚡[/magenta] {rid} spot interruption / owner reclaim: demand replanned")
    if rec.released:
        lines.append(f"  [dim]released {len(rec.released)} unit(s)[/dim]")
    for key, err in report.errors.items():
        lines.append(f"  [red]error[/red] {key}: {err}")
    if lines:
        live = len(broker.store.resources(states=LIVE_STATES))
        console.print(
            f"[bold]{now:%H:%M}[/bold] cycle: {report.pending_jobs} pending jobs in {len(report.groups)} groups, "
            f"{live} live units"
        )
        for line in lines[:14]:
            console.print(line)
        if len(lines) > 14:
            console.print(f"  … and {len(lines) - 14} more")


def _close_finished_requests(broker: Broker, sim: BatchSimulator) -> None:
    groups = load_request_groups(broker.db)
    with Session(broker.db) as session:
        for g in groups:
            if g.request_id and sim.request_done(g):
                row = session.get(BurstRequestRow, g.request_id)
                if row is not None and row.status in RequestStatus.OPEN:
                    row.status = RequestStatus.DONE
                    row.updated_at = broker.clock.now()
                    session.add(row)
        session.commit()


def _summary(console: Console, broker: Broker, backends: dict[str, SimulatedBackend]) -> dict[str, Decimal]:
    """Spend and work per experiment and market, from the billing model (the figures the ledger has)."""
    now = broker.clock.now()
    with Session(broker.db) as session:
        resources = list(session.exec(select(ResourceRow)))
        requests = list(session.exec(select(BurstRequestRow)))
        units = load_units(session, START, now, as_of=now, prices=StoredSpotPrices(session))
    pieces = [p for u in units for p in slices(u, START, now, as_of=now)]
    by_exp = usage_by(pieces, lambda p: p.unit.experiment or "-")
    by_market = usage_by(pieces, lambda p: p.unit.market)
    console.rule("[bold]cost summary[/bold]")
    table = Table(title=f"{START:%Y-%m-%d %H:%M} → {now:%H:%M} UTC (simulated)")
    columns = (
        "experiment",
        "units",
        "spend",
        "idle",
        "HS23-h held",
        "HS23-h delivered",
        "$ per HS23-h delivered",
    )
    for column in columns:
        table.add_column(column, justify="right" if column != "experiment" else "left")
    totals: dict[str, Decimal] = {}
    for exp, use in sorted(by_exp.items()):
        spend = (Decimal(use.amount_micro) / MICRO).quantize(Decimal("0.01"))
        totals[exp] = spend
        hs23 = use.hs23_hours_delivered
        per = f"${Decimal(use.amount_micro) / MICRO / Decimal(repr(hs23)):.4f}" if hs23 else "-"
        idle = f"${Decimal(use.idle_micro) / MICRO:,.2f}"
        table.add_row(
            exp,
            str(len(use.units)),
            f"${spend:,.2f}",
            idle,
            f"{use.hs23_hours_held:,.0f}",
            f"{hs23:,.0f}",
            per,
        )
    console.print(table)
    markets = Table(title="by market")
    for column in ("market", "units", "spend"):
        markets.add_column(column)
    for market, use in sorted(by_market.items()):
        markets.add_row(market, str(len(use.units)), f"${Decimal(use.amount_micro) / MICRO:,.2f}")
    console.print(markets)
    live = [r for r in resources if r.state in {"requested", "provisioning", "running", "draining"}]
    console.print(
        f"requests: {', '.join(f'{r.id} {r.status}' for r in requests)} · "
        f"units still live: {len(live)} · released: {sum(r.state == 'released' for r in resources)}"
    )
    pilots = sum(1 for r in live if r.market in {"allocation", "backfill"})
    if pilots:
        console.print(
            f"({pilots} of the live units are HPC pilots with walltime left: they cost nothing and take new "
            "work until Slurm ends them)"
        )
    return totals


def main(console: Console | None = None, hours: float = 14.0, seed: int = DEFAULT_SEED) -> None:
    asyncio.run(run_demo(console or Console(), hours=hours, seed=seed))
