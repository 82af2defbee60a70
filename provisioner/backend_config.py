"""The backends file (TOML): which real clouds and Slurm clusters this broker drives, and how to reach them.

One table per backend, named by the backend name that offerings carry (`aws`, `gce`, the policy's
allocation and backfill backends...). `kind` picks the implementation; the other keys are that
backend's own configuration model (`extra="forbid"`, so a typo is an error naming the key).
Credentials are never written here: each backend reads its provider's standard chain or a file
named in its table.

    [aws]
    kind = "aws"
    regions = [{ region = "us-east-1", images = { x86_64 = "ami-...", arm64 = "ami-..." } }]

    [perlmutter]
    kind = "slurm_allocation"
    client = "rest"            # or "commands"
    rest_url = "http://slurmrestd:6820"

    [maxwell]
    kind = "slurm_backfill"
    client = "commands"
    partition = "scavenger"

Tables of `kind = "slurm_queue"` are workload sources, not backends (`provisioner.sources.configured`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.base import Backend
from provisioner.domain import Market, Offering


class BackendConfigError(ValueError):
    """The backends file is wrong; names the file, the backend table and the key."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = list(problems)


class SlurmTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm_allocation", "slurm_backfill"]
    client: Literal["commands", "rest"] = "commands"
    rest_url: str | None = None
    rest_user: str = "root"
    slurm_conf: str | None = None
    partition: str = Field(default="scavenger", description="backfill only: the preemptible partition")
    account: str | None = Field(default=None, description="backfill only: the account backfill jobs run as")
    core_slices: list[str] = Field(default_factory=list, description="allocation offerings sliced by cores")


def _problems(path: Path, table: str, exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"])
        out.append(f"[{table}] {key}: {e['msg']}")
    return out


def _slurm_client(cfg: SlurmTable) -> Any:
    if cfg.client == "rest":
        from backends.slurm.rest import RestClient

        if not cfg.rest_url:
            raise ValueError("rest_url: needed with client = 'rest'")
        return RestClient(cfg.rest_url, user=cfg.rest_user)
    from backends.slurm.commands import CommandsClient

    return CommandsClient(slurm_conf=cfg.slurm_conf)


def load_backends(
    path: Path,
    *,
    broker_id: str,
    catalog: Sequence[Offering],
    site_offerings: Sequence[Offering],
) -> dict[str, Backend]:
    """Build every backend the file names; all problems are reported together and nothing is built then."""
    try:
        raw: Mapping[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BackendConfigError(path, ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise BackendConfigError(path, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    builders: list[Any] = []
    for name, table in raw.items():
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a table [{name}], found a value")
            continue
        kind = table.get("kind")
        if kind == "slurm_queue":
            continue  # a workload source: provisioner.sources.configured reads it
        body = {k: v for k, v in table.items() if k != "kind"}
        try:
            builders.append(_builder(name, kind, body, table, broker_id, catalog, site_offerings))
        except ValidationError as exc:
            problems.extend(_problems(path, name, exc))
        except ValueError as exc:
            problems.append(f"[{name}] {exc}")
    if problems:
        raise BackendConfigError(path, problems)
    return {name: build() for name, build in builders}


def _builder(
    name: str,
    kind: object,
    body: dict[str, Any],
    table: dict[str, Any],
    broker_id: str,
    catalog: Sequence[Offering],
    site_offerings: Sequence[Offering],
) -> tuple[str, Any]:
    """Validate now, build later: a broken file must not leave half the backends connected."""
    if kind == "aws":
        from backends.aws import AwsBackend
        from backends.aws_config import AwsConfig

        aws = AwsConfig.model_validate({"name": name, "broker_id": broker_id, **body})
        return name, lambda: AwsBackend(aws, catalog)
    if kind == "gce":
        from backends.gce import GceBackend
        from backends.gce_config import GceConfig

        gce = GceConfig.model_validate({"name": name, **body})
        return name, lambda: GceBackend(gce, broker_id, catalog=catalog)
    if kind == "openstack":
        from backends.openstack import OpenStackBackend
        from backends.openstack_config import OpenStackConfig

        openstack = OpenStackConfig.model_validate({"name": name, **body})
        return name, lambda: OpenStackBackend(openstack, broker_id)
    if kind in ("slurm_allocation", "slurm_backfill"):
        slurm = SlurmTable.model_validate(table)
        own = [o for o in site_offerings if o.backend == name]
        market = Market.ALLOCATION if kind == "slurm_allocation" else Market.BACKFILL
        own = [o for o in own if o.market == market]
        if not own:
            raise ValueError(
                f"kind = '{kind}' but the policy has no {market} offering with backend = '{name}'"
            )
        if slurm.client == "rest" and not slurm.rest_url:
            raise ValueError("rest_url: needed with client = 'rest'")
        if kind == "slurm_allocation":
            from backends.slurm.allocation import SlurmAllocationBackend

            return name, lambda: SlurmAllocationBackend(
                name, _slurm_client(slurm), own, broker_id=broker_id, core_slices=slurm.core_slices
            )
        from backends.slurm.backfill import SlurmBackfillBackend

        return name, lambda: SlurmBackfillBackend(
            name,
            _slurm_client(slurm),
            own[0],
            broker_id=broker_id,
            partition=slurm.partition,
            account=slurm.account,
        )
    raise ValueError(
        f"kind: '{kind}' is not one of aws, gce, openstack, slurm_allocation, slurm_backfill, slurm_queue"
    )
