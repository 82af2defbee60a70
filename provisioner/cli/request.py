"""`provisioner request create|list|show|cancel`: experiments ask for burst capacity and follow it."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from provisioner.domain import Arch
from provisioner.requests import (
    BurstRequestSpec,
    RequestNotFound,
    cancel,
    list_requests,
    view,
)


def _parse_hours(value: str) -> float:
    """'72h', '3d', '90m' or plain hours."""
    units = {"h": 1.0, "d": 24.0, "m": 1 / 60}
    text = value.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"'{value}' is not a duration (e.g. 72h, 3d, 90m)") from None


async def _announce(settings: Any, request_id: str, experiment: str) -> None:
    """Wake a running broker: on MQTT when configured, and on this host's wake socket."""
    from provisioner.bus import open_bus
    from provisioner.demand_signal import announce

    bus = None
    if settings.mqtt_url:
        try:
            bus = await open_bus(settings.mqtt_url, settings.broker_id)
        except Exception as exc:  # the request is stored: the broker's timer will plan it
            Console(stderr=True).print(f"[yellow]could not reach MQTT to announce the request[/yellow]: {exc}")
    try:
        await announce(bus, settings.state_dir, {"request_id": request_id, "experiment": experiment})
    finally:
        if bus is not None:
            await bus.close()


def register(root: typer.Typer) -> None:
    app = typer.Typer(help="Burst capacity requests from experiments.", no_args_is_help=True)
    err = Console(stderr=True)

    def _broker() -> Any:
        from provisioner.broker import build_broker
        from provisioner.settings import load_settings

        return build_broker(load_settings())

    @app.command("create")
    def create(
        experiment: str = typer.Option(..., help="experiment (VO) asking"),
        cores: int | None = typer.Option(None, help="cores wanted (a multiple of --cores-per-job)"),
        gpus: int | None = typer.Option(None, help="GPUs wanted"),
        gpu_model: str | None = typer.Option(
            None, help="GPU model, as the catalog names it (A100, H100, L4...)"
        ),
        arch: list[Arch] = typer.Option([Arch.X86_64], help="allowed architectures (repeat for several)"),
        duration: str | None = typer.Option(None, help="how long, e.g. 72h or 3d"),
        hs23_hours: float | None = typer.Option(None, help="work in HEPscore23-hours instead of a duration"),
        deadline: datetime | None = typer.Option(None, help="finish before (UTC)"),
        data_location: str | None = typer.Option(None, help="where the input data is: <provider>:<region>"),
        input_gb: float = typer.Option(0.0, help="total input data to read (GB)"),
        output_gb: float = typer.Option(0.0, help="total output data to write back (GB)"),
        max_cost: Decimal | None = typer.Option(None, help="reject if the estimate is above this (USD)"),
        cores_per_job: int = typer.Option(8, help="cores per job slot"),
        preemptible: bool = typer.Option(False, help="the work tolerates preemption (backfill, spot)"),
        keep_shape: bool = typer.Option(
            False, help="with --duration: exactly these cores for exactly this long, or refuse"
        ),
        job_hours: str | None = typer.Option(
            None, help="length of one job slot with --hs23-hours, e.g. 12h or 30m (default 12h)"
        ),
    ) -> None:
        """Ask for capacity; it is admitted against the policies or rejected with the reason."""
        try:
            spec = BurstRequestSpec(
                experiment=experiment,
                cores=cores,
                gpus=gpus,
                gpu_model=gpu_model,
                archs=tuple(arch),
                duration_hours=_parse_hours(duration) if duration else None,
                hs23_hours=hs23_hours,
                deadline=deadline,
                data_location=data_location,
                input_gb=input_gb,
                output_gb=output_gb,
                max_cost_usd=max_cost,
                cores_per_job=cores_per_job,
                preemptible=preemptible,
                keep_shape=keep_shape,
                **({"job_hours": _parse_hours(job_hours)} if job_hours else {}),
            )
        except ValidationError as exc:
            for e in exc.errors():
                field = ".".join(str(p) for p in e["loc"]) or "request"
                err.print(f"[red]invalid request[/red]: {field}: {e['msg']}")
            raise typer.Exit(2) from None
        from provisioner.admission import admit_spec

        broker = _broker()
        admitted = admit_spec(broker, spec)
        admission, request_id = admitted.admission, admitted.row.id
        if admission.accepted:
            asyncio.run(_announce(broker.settings, request_id, spec.experiment))
        console = Console()
        if admission.accepted:
            console.print(f"[green]{request_id} admitted[/green]: {admission.reason}")
        else:
            console.print(f"[red]{request_id} rejected[/red]: {admission.reason}")
            raise typer.Exit(1)

    @app.command("list")
    def list_cmd(experiment: str | None = typer.Option(None, help="only this experiment")) -> None:
        """Requests with status and cost so far."""
        broker = _broker()
        table = Table()
        for col in ("id", "experiment", "status", "units live/all", "cost so far", "reason"):
            table.add_column(col)
        for v in list_requests(broker.db, experiment=experiment, now=broker.clock.now()):
            table.add_row(
                v.row.id,
                v.row.experiment,
                f"{v.row.status} ({v.row.ended_by})" if v.row.ended_by else v.row.status,
                f"{v.live_resources}/{v.resources}",
                f"${v.cost_so_far:,.2f}",
                v.row.reason,
            )
        Console().print(table)

    @app.command("show")
    def show(request_id: str) -> None:
        """One request in full."""
        broker = _broker()
        try:
            v = view(broker.db, request_id, now=broker.clock.now())
        except RequestNotFound as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        console = Console()
        status = f"{v.row.status} ({v.row.ended_by})" if v.row.ended_by else v.row.status
        console.print(f"[bold]{v.row.id}[/bold] {v.row.experiment} · {status} · {v.row.reason}")
        console.print(f"cost so far ${v.cost_so_far:,.2f} · units live {v.live_resources} of {v.resources}")
        for key, value in v.row.spec.items():
            if value not in (None, 0, 0.0, False):
                console.print(f"  {key}: {value}")

    @app.command("cancel")
    def cancel_cmd(request_id: str) -> None:
        """Cancel: the demand goes away and the broker drains what the request got."""
        broker = _broker()
        try:
            row = cancel(broker.db, request_id)
        except RequestNotFound as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        Console().print(f"{row.id}: {row.status}")

    root.add_typer(app, name="request")
