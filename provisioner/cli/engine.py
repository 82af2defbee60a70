"""`provisioner demo`, `provisioner plan` and `provisioner run`: the decision engine from the command line."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import typer
from rich.console import Console
from rich.table import Table

from provisioner.domain import Plan
from provisioner.sources.base import SkippedJob


def print_plan(console: Console, plan: Plan, *, alternatives: int = 3) -> None:
    """The plan and its explanation: per group the chosen offering and the best rejected alternatives."""
    if not plan.items and not plan.drains and not any(e.unserved_jobs for e in plan.explanations):
        console.print("[green]nothing to do[/green]: no pending work needs new capacity (no jobs, no cost)")
        return
    table = Table(
        title=f"plan ({plan.solver}): ${plan.total_cost:,.2f} expected, +${plan.spend_rate_per_hour:,.2f}/h"
    )
    for column in ("group", "offering", "units", "jobs", "$/HS23-h", "expected cost"):
        table.add_column(
            column, justify="right" if column in {"units", "jobs", "$/HS23-h", "expected cost"} else "left"
        )
    for item in plan.items:
        table.add_row(
            item.group_id,
            item.offering_id,
            str(item.units),
            str(item.jobs),
            f"{item.cost_per_hs23_hour.total:.5f}",
            f"${item.cost:,.2f}",
        )
    console.print(table)
    for exp in plan.explanations:
        head = f"[bold]{exp.group_id}[/bold] ({exp.experiment})"
        if exp.chosen:
            c = exp.chosen[0].cost_per_hs23_hour
            head += (
                f": compute {c.compute:.5f} + interruption {c.interruption:.5f} + egress {c.egress:.5f}"
                f" + start-up {c.startup:.5f} + allocation {c.allocation_value:.5f} $/HS23-h"
            )
        if exp.unserved_jobs:
            reason = exp.unserved_reason.value if exp.unserved_reason else "unserved"
            head += f" · [yellow]{exp.unserved_jobs} jobs unserved: {reason}[/yellow]"
        console.print(head)
        if exp.note:
            console.print(f"    {exp.note}")
        for rej in exp.rejected[:alternatives]:
            cost = f"{rej.cost_per_hs23_hour:.5f} $/HS23-h" if rej.cost_per_hs23_hour is not None else "-"
            console.print(
                f"    rejected {rej.offering_id} ({cost}): {rej.reason.value}. {rej.detail}".rstrip()
            )
    for drain in plan.drains:
        console.print(f"[cyan]drain[/cyan] {drain.resource_id}: {drain.reason.value} {drain.detail}")


def print_skipped(console: Console, skipped: list[SkippedJob]) -> None:
    """Waiting jobs that are not demand, grouped by reason: no new capacity would start them."""
    if not skipped:
        return
    table = Table(title=f"{len(skipped)} waiting jobs left out: no new capacity would start them")
    for column in ("job", "experiment", "partition", "tasks", "cores", "reason"):
        table.add_column(column, justify="right" if column in {"tasks", "cores"} else "left")
    for s in sorted(skipped, key=lambda s: (s.reason, s.job_id)):
        table.add_row(s.job_id, s.experiment, s.partition, str(s.tasks), str(s.cores), s.reason)
    console.print(table)


def register(root: typer.Typer) -> None:
    @root.command("demo")
    def demo_cmd(
        hours: float = typer.Option(14.0, min=1, max=72, help="simulated hours to run"),
        seed: int = typer.Option(7, help="seed of the simulation: the same seed gives the same run"),
    ) -> None:
        """Run a realistic scenario on simulated backends and a simulated clock; no set-up needed."""
        from provisioner.demo import main

        main(Console(), hours=hours, seed=seed)

    @root.command("plan")
    def plan_cmd(
        alternatives: int = typer.Option(3, min=0, help="rejected alternatives to show per group"),
    ) -> None:
        """Print what the engine would do now, and why. Changes nothing."""
        from provisioner.broker import build_broker
        from provisioner.settings import load_settings

        async def once() -> tuple[Plan | None, list[SkippedJob], int]:
            broker = build_broker(load_settings())
            report = await broker.engine.run_cycle(dry_run=True)
            for key, error in report.errors.items():
                Console(stderr=True).print(f"[red]{key}[/red]: {error}")
            return report.plan, report.skipped, report.pending_jobs

        plan, skipped, pending = asyncio.run(once())
        console = Console()
        if pending:
            console.print(f"{pending} pending jobs from the workload sources")
        if plan is not None:
            print_plan(console, plan, alternatives=alternatives)
        print_skipped(console, skipped)

    @root.command("run")
    def run_cmd(
        interval: float = typer.Option(60.0, min=1, help="seconds between cycles when nothing happens"),
        cycles: int = typer.Option(0, min=0, help="stop after this many cycles (0: run until interrupted)"),
        batch_idle: float | None = typer.Option(
            None, min=0.01, help="new demand: plan once it has been quiet this many seconds (default 0.25)"
        ),
        batch_max: float | None = typer.Option(
            None, min=0.01, help="new demand: plan after this many seconds at most (default 5)"
        ),
    ) -> None:
        """Run the broker: observe → plan → act → reconcile, on a timer and on new demand.

        New demand wakes it at once (after the batching window): burst requests (`request create`, the
        API), new submissions a Slurm queue source sees (its `poll_seconds`), messages on the MQTT
        topics in PROVISIONER_DEMAND_TOPICS, and pokes on `<state dir>/wake.sock`."""
        from dataclasses import replace

        from provisioner.broker import build_broker
        from provisioner.settings import load_settings

        console = Console()

        async def go() -> None:
            from provisioner.bus import open_bus
            from provisioner.demand_signal import WakeListener

            settings = load_settings()
            overrides = {"batch_idle_seconds": batch_idle, "batch_max_seconds": batch_max}
            settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
            bus = await open_bus(settings.mqtt_url, settings.broker_id)
            broker = build_broker(settings, bus=bus)
            broker.engine.settings = replace(
                broker.engine.settings,
                interval_seconds=interval,
                batch_idle_seconds=settings.batch_idle_seconds,
                batch_max_seconds=max(settings.batch_max_seconds, settings.batch_idle_seconds),
            )
            listener = WakeListener(settings.state_dir, broker.engine.wake)
            await listener.open()
            if cycles:
                for n in range(cycles):
                    report = await broker.engine.run_cycle()
                    plan = report.plan
                    cost = plan.total_cost if plan else Decimal(0)
                    console.print(
                        f"cycle {n + 1}: {report.pending_jobs} pending jobs, {len(report.act.created)} created, "
                        f"{len(report.drained)} drained, plan ${cost:,.2f}"
                    )
                    await asyncio.sleep(interval if n + 1 < cycles else 0)
            else:
                # Month-end forecasts against budgets: `budget.forecast_exceeded` events on the bus.
                from prometheus_client import CollectorRegistry

                from provisioner.budget_alerts import BudgetAlerter, watch_budgets

                stop = asyncio.Event()
                watcher = asyncio.create_task(
                    watch_budgets(BudgetAlerter(broker.store, CollectorRegistry()), broker, stop, 300)
                )
                try:
                    await broker.engine.run_forever()
                finally:
                    stop.set()
                    await watcher
            await listener.close()
            await bus.close()

        asyncio.run(go())
