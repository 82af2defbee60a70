"""Pilot jobs shared by the allocation and backfill backends: naming, tagging, payload, state, listing.

A pilot is a batch job named `prv.<kind>.<resource id>` whose comment carries the broker's tags
and the idempotency token (`k=v;k=v`). The name alone identifies our jobs in the jobcomp log
(which drops comments); the comment tells brokers sharing a cluster apart.

What a pilot runs is the site's payload (`PilotPayload.command`: an HTCondor startd/glidein, a PanDA
pilot, an experiment's wrapper), started with its identity in the environment (`PROVISIONER_GROUP`,
`PROVISIONER_EXPERIMENT`, `PROVISIONER_RESOURCE`, `PILOT_END_EPOCH`). The wrapper around it ends the
pilot when the payload has had no work for `idle_exit_seconds` (its group has none left), so Slurm frees
the slot without waiting for the broker; the job then ends COMPLETED and the broker records a normal end.
Work is CPU used by the payload's processes (a startd or pilot waiting for jobs uses next to none) or a
touch of `$PILOT_WORK_FILE` (`provisioner heartbeat --busy` does it), for work that waits on I/O.
When the group's demand is gone the broker also drains the pilot and cancels it (SIGTERM, then SIGKILL
after Slurm's KillWait) unless its heartbeat says it still runs jobs. Without a command the pilot is a
placeholder that holds the slot until its end time or a stop marker (it has no work to watch).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from backends.base import (
    TAG_BROKER,
    TAG_OFFERING,
    TAG_RESOURCE,
    BackendResource,
    InvalidRequest,
    ProviderState,
    ProvisionRequest,
)
from backends.slurm.client import (
    JobSpec,
    JobState,
    SlurmClient,
    SlurmJob,
    decode_comment,
    encode_comment,
    submit_once,
)

log = structlog.get_logger(__name__)

JOB_PREFIX = "prv"
TAG_TOKEN = "token"
TAG_KIND = "provisioner-kind"

# The environment every pilot starts with, then the payload (or the placeholder loop).
_PILOT_PROLOGUE = """#!/bin/bash
# provisioner pilot {resource}: runs its payload until the work is done, its end time, or a stop marker
export PATH=/usr/local/bin:/usr/bin:/bin
export PROVISIONER_BROKER={broker} PROVISIONER_RESOURCE={resource} PROVISIONER_GROUP={group}
export PROVISIONER_EXPERIMENT={experiment}
export PILOT_STOP_MARKER="${{PILOT_STOP_DIR:-{stop_dir}}}/stop-$SLURM_JOB_ID"
# the end time Slurm gave the job (its limit may have been lowered to meet a deadline)
PILOT_END_EPOCH=$(date -d "$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null)" +%s 2>/dev/null) || PILOT_END_EPOCH=0
export PILOT_END_EPOCH
"""
_PLACEHOLDER = """while [ ! -e "$PILOT_STOP_MARKER" ]; do
  if [ "$PILOT_END_EPOCH" -gt 0 ] && [ "$(date +%s)" -ge $((PILOT_END_EPOCH - 2)) ]; then break; fi
  sleep 1
done
rm -f "$PILOT_STOP_MARKER"
"""
# The payload in its own session (so its processes can be told from the wrapper's and stopped together),
# watched for work; the pilot's exit status is the payload's, or 0 when it ended for lack of work.
_WATCHED_PAYLOAD = """export PILOT_IDLE_EXIT="${{PROVISIONER_PILOT_IDLE_EXIT:-{idle}}}"  # seconds without work; 0: never
export PILOT_WORK_FILE="${{PILOT_STOP_DIR:-{stop_dir}}}/work-$SLURM_JOB_ID"
touch "$PILOT_WORK_FILE"
setsid -w {command} &  # -w: should setsid have to fork, $! still ends with the payload
payload=$!
# CPU ticks used so far by the payload's session (live processes and the children they reaped)
payload_ticks() {{
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v sid="$payload" '
    {{ line = $0; sub(/^.*\\) /, "", line); split(line, f, " ") }}
    f[4] == sid {{ t += f[12] + f[13] + f[14] + f[15] }}
    END {{ print t + 0 }}'
}}
stop_payload() {{
  kill -TERM -- "-$payload" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$payload" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$payload" 2>/dev/null
  wait "$payload" 2>/dev/null
}}
trap 'stop_payload; rm -f "$PILOT_WORK_FILE"; exit 143' TERM INT
hz=$(getconf CLK_TCK)
last_work=$(date +%s) last_look=$last_work ticks=$(payload_ticks)
while kill -0 "$payload" 2>/dev/null; do
  sleep 2 & wait $!
  now=$(date +%s) used=$(payload_ticks)
  # over 5 % of a core since the last look is work; a daemon waiting for work stays well under
  if [ $((used - ticks)) -gt $(( (now - last_look) * hz / 20 )) ]; then last_work=$now; fi
  touched=$(stat -c %Y "$PILOT_WORK_FILE" 2>/dev/null || echo 0)
  if [ "$touched" -gt "$last_work" ]; then last_work=$touched; fi
  ticks=$used last_look=$now
  if [ -e "$PILOT_STOP_MARKER" ]; then
    echo "pilot: stop marker, stopping the payload" >&2; stop_payload; rm -f "$PILOT_STOP_MARKER"; exit 0
  fi
  if [ "$PILOT_IDLE_EXIT" -gt 0 ] && [ $((now - last_work)) -ge "$PILOT_IDLE_EXIT" ]; then
    echo "pilot: no work for $((now - last_work)) s (limit $PILOT_IDLE_EXIT s), ending" >&2
    stop_payload; rm -f "$PILOT_WORK_FILE"; exit 0
  fi
done
wait "$payload"
status=$?
rm -f "$PILOT_WORK_FILE"
exit $status
"""


@dataclass(frozen=True, slots=True)
class PilotPayload:
    """What a pilot runs and what it asks Slurm for (the backends file's pilot keys)."""

    command: str | None = None  # shell command line of the payload; None: the placeholder
    memory_mb: int | None = None  # --mem per node; None: all of it for whole-node pilots
    qos: str | None = None  # overrides the allocation's QOS
    constraint: str = ""  # --constraint, e.g. "x86_64&ib"
    min_minutes: int = 10  # --time-min: Slurm may shorten a pilot to this to end by the deadline
    # seconds without work before the pilot ends itself (0: never); glideinWMS's GLIDEIN_Max_Idle default.
    # PROVISIONER_PILOT_IDLE_EXIT in the job's environment on the node overrides it.
    idle_exit_seconds: int = 1200

    def script(self, request: ProvisionRequest, *, stop_dir: str = "/tmp") -> str:
        """The batch script of one pilot: its identity in the environment, then the payload."""
        head = _PILOT_PROLOGUE.format(
            broker=shlex.quote(request.broker_id),
            resource=shlex.quote(request.resource_id),
            group=shlex.quote(request.group_id or ""),
            experiment=shlex.quote(request.experiment or ""),
            stop_dir=stop_dir,
        )
        if not self.command:
            return head + _PLACEHOLDER
        return head + _WATCHED_PAYLOAD.format(
            command=self.command, idle=self.idle_exit_seconds, stop_dir=stop_dir
        )


_STATE_MAP: Mapping[JobState, ProviderState] = {
    JobState.PENDING: ProviderState.PENDING,
    JobState.CONFIGURING: ProviderState.PENDING,  # cloud nodes booting for it
    JobState.REQUEUED: ProviderState.PENDING,
    JobState.RUNNING: ProviderState.RUNNING,
    JobState.COMPLETING: ProviderState.STOPPING,
    JobState.SUSPENDED: ProviderState.STOPPING,
    JobState.COMPLETED: ProviderState.TERMINATED,
    JobState.CANCELLED: ProviderState.TERMINATED,
    JobState.PREEMPTED: ProviderState.TERMINATED,
    JobState.DEADLINE: ProviderState.TERMINATED,
    JobState.FAILED: ProviderState.FAILED,
    JobState.TIMEOUT: ProviderState.FAILED,
    JobState.NODE_FAIL: ProviderState.FAILED,
    JobState.BOOT_FAIL: ProviderState.FAILED,
    JobState.OUT_OF_MEMORY: ProviderState.FAILED,
    JobState.UNKNOWN: ProviderState.UNKNOWN,
}


def provider_state(state: JobState) -> ProviderState:
    """Slurm job state → the backend-neutral state."""
    return _STATE_MAP[state]


def job_name(kind: str, resource_id: str) -> str:
    return f"{JOB_PREFIX}.{kind}.{resource_id}"


def parse_job_name(name: str) -> tuple[str, str] | None:
    """(kind, resource id) of a job named by `job_name`, else None."""
    prefix, _, rest = name.partition(".")
    kind, _, resource_id = rest.partition(".")
    if prefix != JOB_PREFIX or not kind or not resource_id:
        return None
    return kind, resource_id


def walltime_left_hours(job: SlurmJob, now: datetime) -> float | None:
    """Hours before Slurm kills the job: the whole limit while pending, None if unlimited or over."""
    if job.time_limit_minutes is None or job.state.finished:
        return None
    limit = job.time_limit_minutes / 60
    if job.start_time is None or job.state in (JobState.PENDING, JobState.REQUEUED):
        return limit
    return max(0.0, limit - (now - job.start_time).total_seconds() / 3600)


@dataclass(frozen=True, slots=True)
class PilotStatus:
    """A pilot job with what the planner needs for HPC-aware draining."""

    job: SlurmJob
    resource: BackendResource
    walltime_left_hours: float | None


class PilotJobs:
    """Submits, lists and cancels one kind of tagged pilot job for one broker."""

    def __init__(
        self,
        *,
        backend_name: str,
        client: SlurmClient,
        broker_id: str,
        kind: str,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.backend_name = backend_name
        self.client = client
        self.broker_id = broker_id
        self.kind = kind
        self._clock = clock or (lambda: datetime.now(UTC))

    def comment(self, request: ProvisionRequest) -> str:
        fields = {**request.all_tags(), TAG_KIND: self.kind, TAG_TOKEN: request.idempotency_token}
        try:
            return encode_comment(fields)
        except ValueError as err:
            raise InvalidRequest(self.backend_name, str(err), offering_id=request.offering.id) from None

    def ours(self, job: SlurmJob) -> bool:
        tags = decode_comment(job.comment)
        return tags.get(TAG_BROKER) == self.broker_id and tags.get(TAG_KIND) == self.kind

    async def submit(self, request: ProvisionRequest, spec: JobSpec) -> BackendResource:
        if request.broker_id != self.broker_id:
            raise InvalidRequest(
                self.backend_name,
                f"request for broker {request.broker_id!r} sent to the backend of broker {self.broker_id!r}",
            )
        job = await submit_once(self.client, spec, request.idempotency_token)
        log.info(
            "slurm.pilot.provisioned",
            backend=self.backend_name,
            kind=self.kind,
            job_id=job.job_id,
            resource_id=request.resource_id,
            partition=spec.partition,
        )
        return self.status(job).resource

    def status(self, job: SlurmJob) -> PilotStatus:
        tags = decode_comment(job.comment)
        left = walltime_left_hours(job, self._clock())
        detail = [f"slurm_state={job.state.value}"]
        if job.reason:
            detail.append(f"reason={job.reason}")
        if job.state is JobState.PREEMPTED:
            detail.append("preempted by higher-priority work")
        if left is not None:
            detail.append(f"walltime_left_hours={left:.3f}")
        if job.node_list:
            detail.append(f"nodes={job.node_list}")
        resource = BackendResource(
            provider_id=job.job_id,
            state=provider_state(job.state),
            resource_id=tags.get(TAG_RESOURCE),
            offering_id=tags.get(TAG_OFFERING),
            launched_at=job.start_time,
            tags={k: v for k, v in tags.items() if k != TAG_TOKEN},
            # Slurm's RUNNING says the pilot holds its slot, not that its payload has work: the
            # payload's heartbeat tells (None: no view from here, never taken for idle on a guess)
            busy=None,
            detail="; ".join(detail),
            # exit 0 before anyone cancelled it: its payload finished, or the wrapper ended it for lack of work
            ended_by_itself=job.state is JobState.COMPLETED,
        )
        return PilotStatus(job=job, resource=resource, walltime_left_hours=left)

    async def statuses(self) -> list[PilotStatus]:
        return [self.status(j) for j in await self.client.jobs() if self.ours(j)]

    async def release(self, provider_id: str) -> None:
        await self.client.cancel(provider_id)
        log.info("slurm.pilot.released", backend=self.backend_name, kind=self.kind, job_id=provider_id)


def time_limit_minutes(hours: float) -> int:
    """Slurm time limits are whole minutes; never round a pilot's walltime down to zero."""
    return max(1, math.ceil(hours * 60 - 1e-9))
