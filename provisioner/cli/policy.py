"""`provisioner policy check|show FILE`: validate the facility policy file and print what it means now."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from policies import (
    Policy,
    PolicyError,
    allocation_pacing,
    evaluate,
    load_policy,
    site_offerings,
)
from provisioner.domain import Pacing, PlanningConstraints

FileArg = Annotated[Path, typer.Argument(help="the policy file (TOML)", show_default=False)]


def _load_or_exit(file: Path, err: Console, now: datetime) -> Policy:
    try:
        return load_policy(file, today=now.date())
    except PolicyError as exc:
        count = len(exc.problems)
        err.print(f"[bold red]✗ {escape(str(file))}: {count} problem{'s' if count > 1 else ''}[/bold red]")
        for problem in exc.problems:
            err.print(f"[red]  {escape(str(problem))}[/red]", soft_wrap=True)
        err.print("[red]nothing was applied[/red]")
        raise typer.Exit(1) from None


def _money(value: Decimal | None, suffix: str = "") -> str:
    return "—" if value is None else f"${value:,.2f}{suffix}"


def _names(values: frozenset[str] | tuple[str, ...] | None) -> str:
    return "any" if values is None else ", ".join(sorted(str(v) for v in values)) or "none"


def _summary(policy: Policy, file: Path, console: Console) -> None:
    counts = (
        f"{len(policy.experiments)} experiments, {len(policy.allocations)} allocations, "
        f"{len(policy.backfill)} backfill pools, {len(policy.facility.quotas)} quotas, "
        f"{len(policy.facility.egress_routes)} egress routes"
    )
    console.print(f"[bold green]✓ {escape(str(file))} is valid[/bold green]: {counts}")
    facility = policy.facility
    console.print(
        f"facility spend-rate cap {_money(facility.spend_rate_cap_per_hour, '/h')}, "
        f"horizon {facility.horizon_hours:g} h, circuit breaker after "
        f"{facility.circuit_breaker.failures_before_trip} failures ({facility.circuit_breaker.cool_off_minutes:g} min"
        f" cool-off), boot timeout {facility.timeouts.boot_timeout_minutes:g} min, idle drain "
        f"{facility.timeouts.idle_drain_minutes:g} min"
    )
    experiments = Table(title="experiments", title_justify="left")
    for column in ("name", "budgets", "rate cap", "archs", "markets", "GPUs", "egress cap", "share"):
        experiments.add_column(column)
    for name, exp in policy.experiments.items():
        budgets = ", ".join(f"{p}: {_money(v)}" for p, v in exp.budgets.by_period().items()) or "none"
        caps = ", ".join(f"{p}: {v:,.0f} GB" for p, v in exp.egress_cap_gb.by_period().items()) or "none"
        gpus = (
            "none" if exp.gpu.max_gpus == 0 else f"{_names(exp.gpu.models)} (max {exp.gpu.max_gpus or 'any'})"
        )
        experiments.add_row(
            name,
            budgets,
            _money(exp.spend_rate_cap_per_hour, "/h"),
            _names(exp.archs),
            _names(exp.markets),
            gpus,
            caps,
            f"{exp.share:g}",
        )
    console.print(experiments)
    sites = Table(title="site offerings (allocations and backfill)", title_justify="left")
    for column in ("offering", "nodes at once", "node", "grant (node-h)", "used", "period", "pacing"):
        sites.add_column(column)
    for offering in site_offerings(policy):
        info = offering.allocation
        node = f"{offering.cores} cores {offering.memory_gb:g} GB {offering.arch}"
        if offering.gpu_count:
            node += f" {offering.gpu_count}×{offering.gpu_model}"
        if info is None:
            sites.add_row(offering.id, str(offering.capacity_units), node, "backfill", "", "", "")
        else:
            period = f"{info.starts:%Y-%m-%d} → {info.ends:%Y-%m-%d}"
            sites.add_row(
                offering.id,
                str(offering.capacity_units),
                node,
                f"{info.node_hours_granted:,.0f}",
                f"{info.node_hours_used:,.0f}",
                period,
                str(info.pacing),
            )
    console.print(sites)


def _constraints(constraints: PlanningConstraints, policy: Policy, now: datetime, console: Console) -> None:
    console.print(
        f"[bold]effective constraints at {now:%Y-%m-%d %H:%M}Z[/bold] (horizon {constraints.horizon_hours:g} h, "
        f"facility spend-rate cap {_money(constraints.spend_rate_cap_per_hour, '/h')})"
    )
    limits = Table(title="experiments", title_justify="left")
    for column in ("name", "budget left", "rate cap", "backends", "markets", "archs", "GPUs", "egress left"):
        limits.add_column(column)
    for name, lim in constraints.experiments.items():
        gpus = (
            "none" if lim.max_gpus == 0 else f"{_names(lim.allowed_gpu_models)} (max {lim.max_gpus or 'any'})"
        )
        limits.add_row(
            name,
            _money(lim.budget_remaining),
            _money(lim.spend_rate_cap_per_hour, "/h"),
            _names(lim.allowed_backends),
            _names(lim.allowed_markets),
            _names(lim.allowed_archs),
            gpus,
            "no cap" if lim.egress_cap_gb is None else f"{lim.egress_cap_gb:,.0f} GB",
        )
    console.print(limits)
    quotas = ", ".join(
        f"{family} ≤ {cores} cores" for family, cores in constraints.family_quota_cores.items()
    )
    console.print(f"family quotas: {escape(quotas) or 'none'}")
    routes = Table(
        title="egress routes (first match wins; exact destination before '*')", title_justify="left"
    )
    for column in ("from", "to", "tiers (GB: $/GB)", "used this period"):
        routes.add_column(column)
    for route in constraints.egress_routes:
        tiers = ", ".join(
            f"{'≤' + format(t.up_to_gb, ',.0f') if t.up_to_gb is not None else 'beyond'}: {t.usd_per_gb}"
            for t in route.tiers
        )
        used = constraints.egress_used_gb.get(route.source, 0.0)
        routes.add_row(route.source, route.destination, tiers, f"{used:,.0f} GB")
    console.print(routes)
    pacing = Table(title="allocations (value of one node-hour under the pacing policy)", title_justify="left")
    for column in ("offering", "offered", "elapsed", "on-pace use", "lead", "status", "value $/node-h"):
        pacing.add_column(column)
    for offering_id, status in allocation_pacing(policy, now=now).items():
        if status.pacing is Pacing.ASAP:
            state = "asap: use it up"
        else:
            state = "paced" if status.paced else ("ahead" if status.lead > 0 else "behind or on pace")
        pacing.add_row(
            offering_id,
            "yes" if status.available else "[red]no (expired, not started or exhausted)[/red]",
            f"{status.elapsed_fraction:.0%}",
            f"{status.target_used:,.0f} node-h",
            f"{status.lead:+.1%}",
            state if status.available else "—",
            f"{constraints.allocation_hour_value[offering_id]:.4f}"
            if offering_id in constraints.allocation_hour_value
            else "not offered",
        )
    console.print(pacing)


def _parse_amounts(pairs: list[str], option: str) -> dict[str, Decimal]:
    amounts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise InvalidOperation
            amounts[key.strip()] = Decimal(value.strip())
        except InvalidOperation:
            raise typer.BadParameter(f"expected KEY=NUMBER, got {pair!r}", param_hint=option) from None
    return amounts


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--now") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def register(root: typer.Typer) -> None:
    policy_app = typer.Typer(
        help="The facility policy file: check it, show what it means now.", no_args_is_help=True
    )

    @policy_app.command("check")
    def check_cmd(file: FileArg) -> None:
        """Validate FILE; print a summary, or every problem with its line and key (exit code 1)."""
        policy = _load_or_exit(file, Console(stderr=True), _parse_now(None))
        _summary(policy, file, Console())

    @policy_app.command("show")
    def show_cmd(
        file: FileArg,
        now: Annotated[
            str | None, typer.Option(help="evaluate at this ISO time (UTC if no offset); default: now")
        ] = None,
        spend: Annotated[
            list[str] | None,
            typer.Option(help="EXPERIMENT[/PERIOD]=USD already spent this period (repeatable)"),
        ] = None,
        egress: Annotated[
            list[str] | None,
            typer.Option(help="EXPERIMENT[/PERIOD]=GB or PROVIDER:REGION=GB moved this period (repeatable)"),
        ] = None,
    ) -> None:
        """Print the constraints FILE imposes at NOW: budgets left, limits, quotas, routes, allocation values."""
        moment = _parse_now(now)
        spent = _parse_amounts(spend or [], "--spend")
        moved = {k: float(v) for k, v in _parse_amounts(egress or [], "--egress").items()}
        policy = _load_or_exit(file, Console(stderr=True), moment)
        constraints = evaluate(
            policy, now=moment, spend_so_far=spent, egress_used_gb=moved, offerings_for_pricing=None
        )
        _constraints(constraints, policy, moment, Console())

    root.add_typer(policy_app, name="policy")
