"""CLI commands: `provisioner slurm resume|suspend NODELIST` (slurmctld's power programs) and `pending`."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from backends.base import BackendError
from backends.simulated import SimulatedBackend
from backends.slurm.burst import FakeCloudNodes, NodeAction, resume, suspend
from backends.slurm.client import SlurmClient
from backends.slurm.commands import CommandsClient
from backends.slurm.hostlist import expand_hostlist
from backends.slurm.rest import RestClient
from provisioner.broker import Broker, build_broker
from provisioner.domain import Market
from provisioner.settings import Settings, load_settings
from provisioner.slurm_power import (
    CLOUD_MARKETS,
    PowerSettings,
    SlurmPower,
    host_lock,
    simulated_state_dir,
)
from provisioner.sources.configured import read_queue_tables
from provisioner.sources.slurm import ExperimentMap, SlurmWorkloadSource

log = structlog.get_logger(__name__)
app = typer.Typer(
    name="slurm", help="Slurm: power-saving programs for cloud bursting, and the queue as demand."
)

FAKE_CLOUD_ENV = "PROVISIONER_SLURM_FAKE_CLOUD"
CLUSTER_DIR_ENV = "PROVISIONER_SLURM_DIR"
ACCOUNT_ENV = "PROVISIONER_SLURM_BURST_ACCOUNT"
LOCK_NAME = "slurm-power.lock"


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


def _broker() -> Broker:
    """The broker of the environment (PROVISIONER_*); simulated backends keep their units in files,
    since resume, suspend and the engine are separate processes."""
    settings = load_settings()
    # two programs starting on a fresh state directory would both create the tables
    with host_lock(settings.state_dir / LOCK_NAME):
        return build_broker(settings, simulated_state_dir=simulated_state_dir(settings))


def experiment_map(settings: Settings) -> ExperimentMap:
    """Slurm account (else partition) -> experiment, from the backends file's `slurm_queue` tables."""
    by_account: dict[str, str] = {}
    by_partition: dict[str, str] = {}
    if settings.backends_file is not None:
        for table in read_queue_tables(settings.backends_file).values():
            by_account |= table.experiments
            by_partition |= table.partition_experiments
    return ExperimentMap(by_account, by_partition)


def _power(
    broker: Broker, account: str | None, markets: list[Market] | None, backends: list[str] | None
) -> SlurmPower:
    settings = PowerSettings(
        experiment=account,
        markets=frozenset(markets) if markets else CLOUD_MARKETS,
        backends=frozenset(backends) if backends else None,
        lock_file=broker.settings.state_dir / LOCK_NAME,
    )
    return SlurmPower.from_broker(broker, settings)


async def _close(broker: Broker) -> None:
    for backend in broker.backends.values():
        if isinstance(backend, SimulatedBackend):
            continue  # its close() rewrites the whole state file: it would undo other processes' calls
        try:
            await backend.close()
        except Exception as exc:  # closing is best effort; the work is recorded already
            log.warning("backend.close_failed", backend=backend.name, error=str(exc))


@app.command("resume")
def resume_command(
    nodelist: Annotated[str, typer.Argument(help="hostlist expression from slurmctld, e.g. cloud[1-2]")],
    account: Annotated[
        str | None,
        typer.Option(
            envvar=ACCOUNT_ENV,
            help="experiment charged (default: the mapped account of the job the node is resumed for)",
        ),
    ] = None,
    market: Annotated[
        list[Market] | None,
        typer.Option(help="markets to choose from (repeatable; default on_demand and spot)"),
    ] = None,
    backend: Annotated[list[str] | None, typer.Option(help="only these backends (repeatable)")] = None,
) -> None:
    """ResumeProgram: give each node a resource of the cheapest fitting offering (one per node, however
    often slurmctld asks); with fake cloud start its slurmd. Exits 0 when single nodes fail (logged)."""

    async def run() -> None:
        client = CommandsClient()
        names = await _hostnames(client, nodelist)
        broker = _broker()
        try:
            power = _power(broker, account, market, backend)
            fake = _fake_cloud()
            start: NodeAction | None = fake.start if fake else None
            await resume(
                names,
                client,
                power.place,
                experiment=account,
                charge_to=experiment_map(broker.settings).experiment,
                start_node=start,
                mark_down=client.set_node_down,
            )
        finally:
            await _close(broker)

    _run_program("resume", nodelist, run)


@app.command("suspend")
def suspend_command(
    nodelist: Annotated[str, typer.Argument(help="hostlist expression from slurmctld, e.g. cloud[1-2]")],
) -> None:
    """SuspendProgram: release the nodes' resources (idempotent); with fake cloud stop their slurmd.
    Resources of any other node Slurm reports powered down are released too (a missed suspend)."""

    async def run() -> None:
        client = CommandsClient()
        names = await _hostnames(client, nodelist)
        fake = _fake_cloud()
        stop: NodeAction | None = fake.stop if fake else None
        try:
            broker = _broker()
        except Exception:
            # the nodes still go down; their resources stay until a later suspend of these nodes
            await suspend(names, stop_node=stop)
            raise
        try:
            power = _power(broker, None, None, None)
            await suspend(names, release=power.release, stop_node=stop)
            try:  # and catch up on suspends that never ran
                await power.sweep(await client.nodes())
            except BackendError as exc:
                log.warning("slurm.sweep.skipped", error=str(exc))
        finally:
            await _close(broker)

    _run_program("suspend", nodelist, run)


def _run_program(verb: str, nodelist: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.run(run())
    except Exception as exc:  # no traceback: locals and messages of foreign code may hold secrets
        log.error(f"slurm.{verb}.aborted", nodelist=nodelist, error_type=type(exc).__name__, error=str(exc))
        raise typer.Exit(1) from None


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
        from provisioner.cli.engine import print_skipped

        print_skipped(console, source.skipped)

    asyncio.run(run())


def register(root: typer.Typer) -> None:
    root.add_typer(app)
