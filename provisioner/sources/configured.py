"""The workload sources the backends file configures: one `kind = "slurm_queue"` table per Slurm cluster queue.

[site-queue]
kind = "slurm_queue"
client = "rest"                      # or "commands", "pyslurm"
rest_url = "http://slurmrestd:6820"
partitions = ["debug", "gpu"]        # only these (default: every partition)
preemptible_partitions = ["scavenger"]
preemptible_qos = ["backfill"]
experiments = { m4321 = "atlas" }    # Slurm account -> experiment
partition_experiments = { gpu = "lsst" }
poll_seconds = 5                     # look for new submissions this often (0: only each cycle)
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioner.sources.slurm import ExperimentMap, SlurmWorkloadSource

SOURCE_KINDS = frozenset({"slurm_queue"})


class SourceConfigError(ValueError):
    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.problems = problems


class SlurmQueueTable(BaseModel):
    """One Slurm cluster's queue as demand (`extra="forbid"`: a typo names the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm_queue"]
    client: Literal["commands", "rest", "pyslurm"] = "commands"
    rest_url: str | None = None
    rest_user: str = "root"
    slurm_conf: str | None = None
    partitions: list[str] | None = None
    accounts: list[str] | None = None
    qos: list[str] | None = None
    preemptible_partitions: list[str] = Field(default_factory=lambda: ["scavenger"])
    preemptible_qos: list[str] = Field(default_factory=list)
    experiments: dict[str, str] = Field(default_factory=dict, description="Slurm account -> experiment")
    partition_experiments: dict[str, str] = Field(default_factory=dict, description="partition -> experiment")
    default_walltime_hours: float = Field(default=24.0, gt=0)
    poll_seconds: float = Field(default=5.0, ge=0, description="new submissions wake a cycle (0: off)")

    def experiment_map(self) -> ExperimentMap:
        return ExperimentMap(self.experiments, self.partition_experiments)


def _client(cfg: SlurmQueueTable) -> Any:
    if cfg.client == "rest":
        from backends.slurm.rest import RestClient

        return RestClient(str(cfg.rest_url), user=cfg.rest_user)
    if cfg.client == "pyslurm":
        from backends.slurm.pyslurm_client import PyslurmClient

        # refuses to start (PyslurmUnavailable, naming why) unless pyslurm is built for this Slurm
        return PyslurmClient.open(slurm_conf=cfg.slurm_conf)
    from backends.slurm.commands import CommandsClient

    return CommandsClient(slurm_conf=cfg.slurm_conf)


def read_queue_tables(path: Path) -> dict[str, SlurmQueueTable]:
    """The `slurm_queue` tables of a backends file, validated; every problem reported together."""
    try:
        raw = tomllib.loads(path.read_text())
    except (FileNotFoundError, tomllib.TOMLDecodeError) as exc:
        raise SourceConfigError(path, [str(exc)]) from None
    tables: dict[str, SlurmQueueTable] = {}
    problems: list[str] = []
    for name, table in raw.items():
        if not isinstance(table, dict) or table.get("kind") not in SOURCE_KINDS:
            continue
        try:
            cfg = SlurmQueueTable.model_validate(table)
        except ValidationError as exc:
            problems += [f"[{name}] {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            continue
        if cfg.client == "rest" and not cfg.rest_url:
            problems.append(f"[{name}] rest_url: needed with client = 'rest'")
            continue
        tables[name] = cfg
    if problems:
        raise SourceConfigError(path, problems)
    return tables


def slurm_sources(path: Path, *, gpu_models: Collection[str] = ()) -> list[SlurmWorkloadSource]:
    """A workload source per `slurm_queue` table, named after its table."""
    return [
        SlurmWorkloadSource(
            _client(cfg),
            partitions=cfg.partitions,
            accounts=cfg.accounts,
            qos=cfg.qos,
            preemptible_partitions=cfg.preemptible_partitions,
            preemptible_qos=cfg.preemptible_qos,
            default_walltime_hours=cfg.default_walltime_hours,
            experiments=cfg.experiment_map(),
            gpu_models=gpu_models,
            poll_seconds=cfg.poll_seconds,
            name=name,
        )
        for name, cfg in read_queue_tables(path).items()
    ]
