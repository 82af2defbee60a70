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
    client = "rest"            # or "commands", "pyslurm"
    rest_url = "http://slurmrestd:6820"

    [maxwell]
    kind = "slurm_backfill"
    client = "commands"
    partition = "scavenger"

Tables of `kind = "slurm_queue"` are workload sources, not backends (`provisioner.sources.configured`).

A Slurm table also says what its pilots run and ask for: `pilot_command` (the site's glidein or
HTCondor startd, a PanDA pilot, an experiment's wrapper — it runs on the compute node with
PROVISIONER_GROUP/EXPERIMENT/RESOURCE and PILOT_END_EPOCH set; without it a placeholder holds the
slot), `pilot_memory_mb` (--mem; whole-node pilots get all of the node's memory by default), `qos`,
`constraint`, `pilot_min_minutes` (--time-min: how short Slurm may make a pilot to end it by
the allocation's end date) and `pilot_idle_exit_seconds` (a pilot whose payload has had no work this
long ends itself and frees the slot; 0: never).
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backends.base import Backend
from backends.slurm.pilot import PilotPayload
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
    client: Literal["commands", "rest", "pyslurm"] = "commands"
    rest_url: str | None = None
    rest_user: str = "root"
    slurm_conf: str | None = None
    partition: str = Field(default="scavenger", description="backfill only: the preemptible partition")
    account: str | None = Field(default=None, description="backfill only: the account backfill jobs run as")
    core_slices: list[str] = Field(default_factory=list, description="allocation offerings sliced by cores")
    pilot_command: str | None = Field(default=None, min_length=1, description="what each pilot runs")
    pilot_memory_mb: int | None = Field(default=None, ge=0, description="--mem per node (0: all of it)")
    qos: str | None = Field(default=None, min_length=1, description="--qos (overrides the allocation's)")
    constraint: str = Field(default="", description="--constraint, e.g. 'x86_64&ib'")
    pilot_min_minutes: int = Field(default=10, ge=1, description="--time-min near the allocation's end")
    pilot_idle_exit_seconds: int = Field(
        default=1200, ge=0, description="a pilot with no payload work this long ends itself (0: never)"
    )

    @field_validator("pilot_command")
    @classmethod
    def _absolute_command(cls, value: str | None) -> str | None:
        if value is not None and not value.split()[0].startswith("/"):
            raise ValueError("must start with the absolute path of the payload on the compute nodes")
        return value

    def payload(self) -> PilotPayload:
        return PilotPayload(
            command=self.pilot_command,
            memory_mb=self.pilot_memory_mb,
            qos=self.qos,
            constraint=self.constraint,
            min_minutes=self.pilot_min_minutes,
            idle_exit_seconds=self.pilot_idle_exit_seconds,
        )


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
    if cfg.client == "pyslurm":
        from backends.slurm.pyslurm_client import PyslurmClient

        # refuses to start (PyslurmUnavailable, naming why) unless pyslurm is built for this Slurm
        return PyslurmClient.open(slurm_conf=cfg.slurm_conf)
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
        checked = table_problems(name, kind, table, catalog)
        if checked:
            problems.extend(checked)
            continue
        try:
            builders.append(_builder(name, kind, body, table, broker_id, catalog, site_offerings))
        except ValidationError as exc:
            problems.extend(_problems(path, name, exc))
        except ValueError as exc:
            problems.append(f"[{name}] {exc}")
    if problems:
        raise BackendConfigError(path, problems)
    return {name: build() for name, build in builders}


MAX_TIMEOUT_S = 24 * 3600.0  # a timeout longer than a day is a typo, and would hang a cycle


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _numbers(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _numbers(inner, f"{path}[{i}]")


def _regions_of(kind: object, table: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, region) pairs a cloud table names: AWS regions, GCE zones' regions."""
    if kind == "aws" and isinstance(table.get("regions"), list):
        return [
            (f"regions[{i}].region", r["region"])
            for i, r in enumerate(table["regions"])
            if isinstance(r, dict) and isinstance(r.get("region"), str)
        ]
    if kind == "gce" and isinstance(table.get("zones"), list):
        return [
            (f"zones[{i}]", z.rsplit("-", 1)[0])
            for i, z in enumerate(table["zones"])
            if isinstance(z, str) and "-" in z
        ]
    return []


def table_problems(
    name: str, kind: object, table: Mapping[str, Any], catalog: Sequence[Offering]
) -> list[str]:
    """What the backend's own model cannot see: infinite or absurd numbers (TOML has `inf` and `nan`),
    a credentials file that is not there, a region the catalog does not know (a typo)."""
    out: list[str] = []
    for key, number in _numbers(table, ""):
        if not math.isfinite(number):
            out.append(f"[{name}] {key}: {number} is not a finite number")
        elif "timeout" in key and not 0 < number <= MAX_TIMEOUT_S:
            out.append(f"[{name}] {key}: {number:g} s is not a timeout between 0 and {MAX_TIMEOUT_S:g} s")
    creds = table.get("credentials_file")
    if isinstance(creds, str) and not Path(creds).expanduser().is_file():
        out.append(f"[{name}] credentials_file: {creds} does not exist or is not a file")
    provider = kind if kind in ("aws", "gce") else None
    known = sorted({o.region for o in catalog if o.provider == provider}) if provider else []
    for key, region in _regions_of(kind, table) if known else []:
        if region not in known:
            close = difflib.get_close_matches(region, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.append(f"[{name}] {key}: '{region}' is not a {provider} region the catalog knows{hint}")
    return out


def configured_regions(backend: Backend) -> frozenset[str] | None:
    """The regions a cloud backend was configured for (None: not a regional cloud, or not known)."""
    config = getattr(backend, "config", None)
    regions = getattr(config, "regions", None)
    if isinstance(regions, list | tuple) and regions and hasattr(regions[0], "region"):
        return frozenset(r.region for r in regions)
    zones = getattr(config, "zones", None)
    if isinstance(zones, list | tuple) and zones:
        return frozenset(str(z).rsplit("-", 1)[0] for z in zones)
    region = getattr(config, "region", None)
    return frozenset({region}) if isinstance(region, str) else None


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
                name,
                _slurm_client(slurm),
                own,
                broker_id=broker_id,
                core_slices=slurm.core_slices,
                payload=slurm.payload(),
            )
        from backends.slurm.backfill import SlurmBackfillBackend

        return name, lambda: SlurmBackfillBackend(
            name,
            _slurm_client(slurm),
            own[0],
            broker_id=broker_id,
            partition=slurm.partition,
            account=slurm.account,
            payload=slurm.payload(),
        )
    raise ValueError(
        f"kind: '{kind}' is not one of aws, gce, openstack, slurm_allocation, slurm_backfill, slurm_queue"
    )
