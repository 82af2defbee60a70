"""`provisioner heartbeat`: what a pilot or worker on a unit runs to say it is busy or idle.

Over the API (`--api`, with a token holding `resource:heartbeat`) or on the MQTT bus of the broker
(`--mqtt`, the broker's own `mqtt_url`). A cron line or the pilot's job wrapper calls it every minute.
In a Slurm pilot, `--busy` also touches `$PILOT_WORK_FILE`: the pilot wrapper then knows its payload
has work even when that work uses no CPU, and does not end the pilot as idle.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import typer
from pydantic import ValidationError

from provisioner.bus import open_bus
from provisioner.heartbeats import HEARTBEAT_TOPIC, Heartbeat


def register(root: typer.Typer) -> None:
    @root.command("heartbeat")
    def heartbeat(
        busy: bool = typer.Option(..., "--busy/--idle", help="whether work runs on this unit now"),
        resource_id: str | None = typer.Option(None, help="the unit's provisioner-resource tag"),
        instance_id: str | None = typer.Option(None, help="the provider's id (EC2 instance id, GCE name)"),
        running_jobs: int | None = typer.Option(None, min=0, help="jobs running now"),
        api: str | None = typer.Option(None, envvar="PROVISIONER_API_URL", help="the broker's API base URL"),
        token: str | None = typer.Option(None, envvar="PROVISIONER_TOKEN", help="bearer token (API)"),
        mqtt: str | None = typer.Option(None, envvar="PROVISIONER_MQTT_URL", help="mqtt://host:port (bus)"),
        broker_id: str = typer.Option("broker-local", envvar="PROVISIONER_BROKER_ID", help="the broker's id"),
        timeout_s: float = typer.Option(10.0, min=0.1, max=300.0, help="give up after this long"),
        work_file: Path | None = typer.Option(
            None, envvar="PILOT_WORK_FILE", help="touched when busy (the pilot wrapper's idle clock)"
        ),
    ) -> None:
        """Tell the broker whether this unit runs work; exit 1 if it could not be told."""
        if busy and work_file is not None:
            # first, and whether or not the broker answers: the pilot must not end itself under work
            try:
                work_file.touch()
            except OSError as exc:
                typer.echo(f"cannot touch {work_file}: {exc.strerror}", err=True)
        try:
            beat = Heartbeat(
                resource_id=resource_id, instance_id=instance_id, busy=busy, running_jobs=running_jobs
            )
        except ValidationError as exc:
            raise typer.BadParameter(exc.errors()[0]["msg"]) from None
        body = beat.model_dump(exclude_none=True)
        if api:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                resp = httpx.post(
                    f"{api.rstrip('/')}/v1/heartbeats", json=body, headers=headers, timeout=timeout_s
                )
            except httpx.HTTPError as exc:
                typer.echo(f"heartbeat not delivered: {type(exc).__name__}", err=True)
                raise typer.Exit(1) from None
            if resp.status_code != 202:
                typer.echo(f"heartbeat refused: HTTP {resp.status_code} {resp.text[:200]}", err=True)
                raise typer.Exit(1)
            typer.echo(json.dumps(resp.json()))
            return
        if not mqtt:
            raise typer.BadParameter("give --api or --mqtt")

        async def publish() -> None:
            bus = await open_bus(mqtt, broker_id)
            try:
                await bus.publish(HEARTBEAT_TOPIC, body)
            finally:
                await bus.close()

        try:
            asyncio.run(asyncio.wait_for(publish(), timeout_s))
        except (TimeoutError, OSError) as exc:
            typer.echo(f"heartbeat not delivered: {type(exc).__name__}", err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(body))
