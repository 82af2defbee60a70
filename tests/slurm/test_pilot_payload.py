"""What a pilot runs and asks Slurm for: the backends file's pilot keys, the batch script, the job's
limits against the allocation's end date, and the committed-hours ledger read from Slurm's jobs.

No cluster needed: the Slurm client is never called (the real-cluster runs are in test_allocation
and test_pilots_e2e)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import policies
from backends.base import InvalidRequest, ProvisionRequest
from backends.slurm.allocation import SlurmAllocationBackend, booked_node_hours
from backends.slurm.backfill import SlurmBackfillBackend
from backends.slurm.client import JobState, SlurmJob
from backends.slurm.pilot import PilotJobs, PilotPayload
from provisioner.backend_config import BackendConfigError, load_backends
from provisioner.domain import AllocationInfo, Arch, Market, Offering

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ENDS = NOW + timedelta(hours=5)

POLICY = """
version = 1
[experiments.atlas]
[allocations.hpc]
backend = "hpc"
account = "atlas"
partition = "debug"
qos = "normal"
node_hours_granted = 100
starts = 2026-11-01T00:00:00Z
ends = 2026-12-01T00:00:00Z
max_walltime_hours = 24
max_nodes = 4
[allocations.hpc.node]
name = "n8"
cores = 8
memory_gb = 16
hs23_per_core = 10
[end]
"""


def offering() -> Offering:
    return Offering(
        id="hpc:debug:n8:allocation",
        backend="hpc",
        provider="slurm",
        region="debug",
        instance_type="n8",
        family="slurm:hpc",
        market=Market.ALLOCATION,
        cores=8,
        memory_gb=16,
        arch=Arch.X86_64,
        price_per_hour=Decimal(0),
        hs23_per_core=10.0,
        max_walltime_hours=24,
        allocation=AllocationInfo("hpc", "atlas", "debug", "normal", 100, 0, NOW - timedelta(days=20), ENDS),
    )


def request(o: Offering, hours: float = 2.0) -> ProvisionRequest:
    return ProvisionRequest(
        resource_id="r-1",
        offering=o,
        idempotency_token="t-1",
        broker_id="b-1",
        group_id="atlas-8c-2h",
        experiment="atlas",
        walltime_hours=hours,
    )


class NoClient:
    """Specs are built without talking to Slurm."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the Slurm client was called ({name})")


def backend(o: Offering, *, now: datetime = NOW, **kw: Any) -> SlurmAllocationBackend:
    return SlurmAllocationBackend("hpc", NoClient(), [o], broker_id="b-1", clock=lambda: now, **kw)  # type: ignore[arg-type]


def test_whole_node_pilot_gets_all_its_memory_the_payload_and_the_configured_qos_and_constraint() -> None:
    payload = PilotPayload(command="/opt/glidein/start --factory osg", qos="burst", constraint="x86_64&ib")
    spec = backend(offering(), payload=payload)._spec(request(offering()))
    assert spec.nodes == 1 and spec.memory_mb == 0  # --mem=0: the whole node's memory, not half of it
    assert spec.qos == "burst" and spec.features == "x86_64&ib"
    assert "setsid -w /opt/glidein/start --factory osg &" in spec.script
    assert 'PILOT_IDLE_EXIT="${PROVISIONER_PILOT_IDLE_EXIT:-1200}"' in spec.script  # the default idle exit
    for line in ("PROVISIONER_GROUP=atlas-8c-2h", "PROVISIONER_RESOURCE=r-1", "PROVISIONER_EXPERIMENT=atlas"):
        assert line in spec.script
    sliced = backend(offering(), core_slices={offering().id}, payload=PilotPayload(memory_mb=4000))
    assert sliced._spec(request(offering())).memory_mb == 4000


def test_pilot_limit_and_deadline_never_reach_past_the_allocations_end() -> None:
    spec = backend(offering())._spec(request(offering(), hours=20.0))
    assert spec.time_limit_minutes == 5 * 60  # capped at the end date, not the 20 h asked for
    assert spec.deadline == ENDS and spec.time_min_minutes == 10
    assert spec.qos == "normal"  # the allocation's own QOS without an override
    with pytest.raises(InvalidRequest, match="ends at"):
        backend(offering(), now=ENDS - timedelta(seconds=30))._spec(request(offering()))


def test_backfill_pilot_runs_the_same_payload() -> None:
    o = dataclasses.replace(offering(), id="bf", market=Market.BACKFILL, allocation=None)
    pool = SlurmBackfillBackend(
        "bf",
        NoClient(),
        o,
        broker_id="b-1",
        whole_nodes=True,
        payload=PilotPayload(command="/opt/p"),  # type: ignore[arg-type]
    )
    assert pool.payload.command == "/opt/p"


def job(state: JobState, limit: int, *, started: datetime | None = None, **kw: Any) -> SlurmJob:
    fields: dict[str, Any] = {"account": "atlas", "partition": "debug", "nodes": 1}
    fields.update(kw)
    return SlurmJob(
        job_id=str(id(kw)), name="x", state=state, time_limit_minutes=limit, start_time=started, **fields
    )


def test_ledger_books_running_pilots_remaining_limit_and_queued_pilots_whole_limit() -> None:
    alloc = offering().allocation
    assert alloc is not None
    jobs = [
        job(JobState.RUNNING, 120, started=NOW - timedelta(minutes=30)),  # 1.5 h left
        job(JobState.RUNNING, 60, started=NOW - timedelta(minutes=30), nodes=2),  # 2 × 0.5 h
        job(JobState.PENDING, 120),  # 2 h committed
        job(JobState.PENDING, 600),  # 10 h asked, but the allocation ends in 5 h
        job(JobState.COMPLETED, 600, started=NOW - timedelta(hours=3)),  # settled: sacct's business
        job(JobState.PENDING, 60, account="cms"),  # another allocation
        job(JobState.PENDING, 60, partition="gpu"),
    ]
    in_flight, committed = booked_node_hours(jobs, alloc, NOW)
    assert in_flight == pytest.approx(2.5)
    assert committed == pytest.approx(7.0)


def _files(tmp_path: Path, table: str) -> tuple[Path, Path]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    backends = tmp_path / "backends.toml"
    backends.write_text(table)
    return policy, backends


def _load(policy: Path, backends: Path) -> dict[str, Any]:
    offerings = policies.site_offerings(policies.load_policy(policy))
    return load_backends(backends, broker_id="b-1", catalog=[], site_offerings=offerings)


def test_pilot_keys_in_the_backends_file_reach_the_pilot(tmp_path: Path) -> None:
    policy, backends = _files(
        tmp_path,
        '[hpc]\nkind = "slurm_allocation"\npilot_command = "/opt/panda/pilot.sh -q atlas"\n'
        'pilot_memory_mb = 12000\nqos = "burst"\nconstraint = "ib"\npilot_min_minutes = 3\n',
    )
    built = _load(policy, backends)["hpc"]
    assert built.payload == PilotPayload("/opt/panda/pilot.sh -q atlas", 12000, "burst", "ib", 3)
    backends.write_text(
        '[hpc]\nkind = "slurm_allocation"\npilot_command = "/opt/p"\npilot_idle_exit_seconds = 90\n'
    )
    built = _load(policy, backends)["hpc"]
    assert built.payload.idle_exit_seconds == 90
    assert "PROVISIONER_PILOT_IDLE_EXIT:-90}" in built.payload.script(request(offering()))


def test_a_typo_or_a_relative_payload_in_the_backends_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    policy, backends = _files(
        tmp_path, '[hpc]\nkind = "slurm_allocation"\npilot_comand = "/opt/x"\npilot_memory_mb = -1\n'
    )
    with pytest.raises(BackendConfigError) as err:
        _load(policy, backends)
    text = str(err.value)
    assert "[hpc] pilot_comand" in text and "[hpc] pilot_memory_mb" in text
    backends.write_text('[hpc]\nkind = "slurm_allocation"\npilot_command = "start.sh"\n')
    with pytest.raises(BackendConfigError, match=r"\[hpc\] pilot_command: .*absolute path"):
        _load(policy, backends)


def test_a_pilot_that_exits_0_ended_itself_one_cancelled_or_killed_did_not() -> None:
    pilots = PilotJobs(backend_name="hpc", client=NoClient(), broker_id="b-1", kind="pilot")  # type: ignore[arg-type]
    ended = {
        state: pilots.status(job(state, 60, started=NOW, comment="provisioner-resource=r-1")).resource
        for state in (JobState.COMPLETED, JobState.CANCELLED, JobState.TIMEOUT, JobState.RUNNING)
    }
    assert ended[JobState.COMPLETED].ended_by_itself
    assert not any(ended[s].ended_by_itself for s in (JobState.CANCELLED, JobState.TIMEOUT, JobState.RUNNING))
    assert ended[JobState.COMPLETED].resource_id == "r-1"


def test_the_placeholder_has_no_work_to_watch_and_keeps_its_slot() -> None:
    script = PilotPayload(idle_exit_seconds=5).script(request(offering()))
    assert "PILOT_IDLE_EXIT" not in script and "PILOT_STOP_MARKER" in script
