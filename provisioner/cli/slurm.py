"""CLI commands: `provisioner slurm resume|suspend NODELIST` (slurmctld's power programs) and `pending`."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import structlog
import typer
from pydantic import BaseModel, ConfigDict, TypeAdapter
from rich.console import Console
from rich.table import Table

from backends.base import BackendError
from backends.slurm.burst import FakeCloudNodes, NodeAction, cheapest_offering, resume, suspend
from backends.slurm.client import SlurmClient
from backends.slurm.commands import CommandsClient
from backends.slurm.hostlist import expand_hostlist
from backends.slurm.rest import RestClient
from provisioner.domain import Arch, Market, Offering
from provisioner.sources.slurm import SlurmWorkloadSource

log = structlog.get_logger(__name__)
app = typer.Typer(
    name="slurm", help="Slurm: power-saving programs for cloud bursting, and the queue as demand."
)

FAKE_CLOUD_ENV = "PROVISIONER_SLURM_FAKE_CLOUD"
CLUSTER_DIR_ENV = "PROVISIONER_SLURM_DIR"
OFFERINGS_ENV = "PROVISIONER_SLURM_BURST_OFFERINGS"


class BurstOffering(BaseModel):
    """One entry of the burst offerings file (JSON list) the resume program chooses from."""

    model_config = ConfigDict(extra="forbid")

    id: str
    backend: str
    provider: str
    region: str
    instance_type: str
    family: str = ""
    market: Market = Market.ON_DEMAND
    cores: int
    memory_gb: float
    arch: Arch = Arch.X86_64
    price_per_hour: Decimal
    hs23_per_core: float = 10.0
    gpu_count: int = 0
    gpu_model: str | None = None

    def offering(self) -> Offering:
        return Offering(
            **{**self.model_dump(), "family": self.family or f"{self.provider}:{self.instance_type}"}
        )


def load_burst_offerings(path: Path | None) -> list[Offering]:
    if path is None:
        return []
    entries = TypeAdapter(list[BurstOffering]).validate_json(path.read_bytes())
    return [e.offering() for e in entries]


def make_client(client: str, rest_url: str | None) -> SlurmClient:
    if client == "rest":
        return RestClient(rest_url or os.environ.get("SLURMRESTD_URL", "http://127.0.0.1:6820"))
    if client != "commands":
        raise typer.BadParameter(f"--client must be commands or rest, not {client!r}")
    return CommandsClient()


async def _hostnames(client: CommandsClient, hostlist: str) -> list[str]:
    try:
        return await client.hostnames(hostlist)
    except BackendError:  # scontrol unavailable: the same expansion in Python
        return expand_hostlist(hostlist)


def _fake_cloud() -> FakeCloudNodes | None:
    if os.environ.get(FAKE_CLOUD_ENV, "0") != "1":
        return None
    return FakeCloudNodes(Path(os.environ.get(CLUSTER_DIR_ENV, "/tmp/provisioner-slurm")))


@app.command("resume")
def resume_command(
    nodelist: Annotated[str, typer.Argument(help="hostlist expression from slurmctld, e.g. cloud[1-2]")],
    offerings: Annotated[
        Path | None, typer.Option(envvar=OFFERINGS_ENV, help="JSON list of offerings to choose from")
    ] = None,
) -> None:
    """ResumeProgram: choose an offering per node, record the intent; with fake cloud start its slurmd."""

    async def run() -> None:
        client = CommandsClient()
        names = await _hostnames(client, nodelist)
        fake = _fake_cloud()
        start: NodeAction | None = fake.start if fake else None
        try:
            chooser = cheapest_offering(load_burst_offerings(offerings))
        except (OSError, ValueError) as err:  # a broken catalog must not keep the nodes down
            log.error("slurm.resume.bad_offerings", path=str(offerings), error=str(err))
            chooser = cheapest_offering([])
        await resume(names, client, chooser, start_node=start)

    asyncio.run(run())


@app.command("suspend")
def suspend_command(
    nodelist: Annotated[str, typer.Argument(help="hostlist expression from slurmctld, e.g. cloud[1-2]")],
) -> None:
    """SuspendProgram: release the nodes (with fake cloud: stop their slurmd)."""

    async def run() -> None:
        names = await _hostnames(CommandsClient(), nodelist)
        fake = _fake_cloud()
        await suspend(names, stop_node=fake.stop if fake else None)

    asyncio.run(run())


@app.command("pending")
def pending_command(
    partition: Annotated[list[str] | None, typer.Option(help="only these partitions (repeatable)")] = None,
    account: Annotated[list[str] | None, typer.Option(help="only these accounts (repeatable)")] = None,
    client: Annotated[str, typer.Option(help="commands or rest")] = "commands",
    rest_url: Annotated[str | None, typer.Option(envvar="SLURMRESTD_URL")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the pending jobs as JSON")] = False,
) -> None:
    """Show the Slurm queue as the broker sees it: pending jobs and the demand shapes they form."""

    async def run() -> None:
        slurm = make_client(client, rest_url)
        try:
            source = SlurmWorkloadSource(slurm, partitions=partition, accounts=account)
            jobs = await source.pending()
        finally:
            await slurm.close()
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "job_id": j.job_id,
                            "experiment": j.experiment,
                            "cores": j.cores,
                            "memory_gb": j.memory_gb,
                            "gpus": j.gpus,
                            "gpu_model": j.gpu_model,
                            "walltime_hours": j.walltime_hours,
                            "partition": j.partition,
                            "qos": j.qos,
                            "reason": j.reason,
                            "preemptible": j.preemptible,
                        }
                        for j in jobs
                    ],
                    indent=2,
                )
            )
            return
        console = Console()
        table = Table(title=f"{len(jobs)} pending Slurm jobs")
        for col in (
            "job",
            "experiment",
            "partition",
            "qos",
            "cores",
            "mem GB",
            "GPUs",
            "walltime h",
            "reason",
        ):
            table.add_column(col)
        for j in jobs:
            gpus = f"{j.gpus} {j.gpu_model or ''}".strip() if j.gpus else "-"
            table.add_row(
                j.job_id, j.experiment, j.partition or "", j.qos or "", str(j.cores),
                f"{j.memory_gb:.1f}", gpus, f"{j.walltime_hours:.2f}", j.reason or "",
            )  # fmt: skip
        console.print(table)
        shapes = Counter(
            (j.experiment, j.cores, round(j.memory_gb, 1), j.gpus, j.walltime_hours) for j in jobs
        )
        summary = Table(title="demand shapes")
        for col in ("experiment", "cores", "mem GB", "GPUs", "walltime h", "jobs"):
            summary.add_column(col)
        for (exp, cores, mem, n_gpus, hours), count in shapes.most_common():
            summary.add_row(exp, str(cores), str(mem), str(n_gpus), f"{hours:.2f}", str(count))
        console.print(summary)

    asyncio.run(run())


def register(root: typer.Typer) -> None:
    root.add_typer(app)
