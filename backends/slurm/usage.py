"""Finished pilot and backfill jobs as `UsageRecord`s: from sacct (slurmdbd), else the jobcomp/filetxt log.

`record_key` is `<site>:<kind>:<job id>-<submit epoch>`: the same job gives the same key from either
source (the jobcomp log's cluster name is "unknown" without slurmdbd, so it is not part of the key),
and job ids reused after a controller reset give different keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import structlog

from backends.slurm.client import AccountingRecord, AccountingUnavailable, JobState, SlurmClient
from backends.slurm.openapi import gpus_from_tres, memory_mb, parse_tres
from backends.slurm.pilot import parse_job_name
from provisioner.domain import UsageRecord

log = structlog.get_logger(__name__)

_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")
_MARKET = {"pilot": "allocation", "backfill": "backfill"}


def parse_jobcomp_line(line: str, *, tz: tzinfo = UTC) -> AccountingRecord | None:
    """One line of `JobCompType=jobcomp/filetxt` output; None for blank or foreign lines.

    The log has no CPU time (cpu_seconds=None), no peak memory and no job comment. Its times are
    in slurmctld's local zone: pass `tz` if that is not UTC.
    """
    fields = {m.group(1): m.group(2).strip() for m in _FIELD.finditer(line.strip())}
    if "JobId" not in fields or "JobState" not in fields:
        return None

    def when(key: str) -> datetime | None:
        value = fields.get(key, "")
        try:
            return datetime.fromisoformat(value).replace(tzinfo=tz).astimezone(UTC)
        except ValueError:  # "unknown", "None", empty
            return None

    start, end = when("StartTime"), when("EndTime")
    tres = parse_tres(fields.get("Tres", ""))
    gpus, model = gpus_from_tres(tres)
    started = fields.get("NodeList", "(null)") not in ("(null)", "")
    user = fields.get("UserId", "").split("(")[0] or None
    return AccountingRecord(
        job_id=fields["JobId"],
        name=fields.get("Name", ""),
        state=JobState.parse(fields["JobState"]),
        partition=fields.get("Partition", ""),
        account=fields.get("Account") or None,
        user=user,
        submit_time=when("SubmitTime"),
        start_time=start if started else None,
        end_time=end,
        elapsed_seconds=max(0, int((end - start).total_seconds())) if started and start and end else 0,
        cpu_seconds=None,
        nodes=int(fields.get("NodeCnt") or 0) or 1,
        cpus=int(fields.get("ProcCnt") or 0) or int(tres.get("cpu", "1")),
        memory_mb=memory_mb(tres["mem"]) if "mem" in tres else None,
        gpus=gpus,
        gpu_model=model,
        qos=fields.get("QOS") or None,
        node_list=fields.get("NodeList", "") if started else "",
        cluster=fields.get("Cluster") or None,
    )


def read_jobcomp(path: Path, *, since: datetime | None = None, tz: tzinfo = UTC) -> list[AccountingRecord]:
    """Every job in a jobcomp/filetxt log that ended at or after `since`."""
    out = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            record = parse_jobcomp_line(line, tz=tz)
            if record is None:
                continue
            if since is not None and (record.end_time is None or record.end_time < since):
                continue
            out.append(record)
    return out


def to_usage(
    records: Iterable[AccountingRecord],
    *,
    site: str,
    submit_host: str,
    backend: str,
    only_ours: bool = True,
    experiment_of: Callable[[str | None], str] | None = None,
    finished_only: bool = True,
) -> list[UsageRecord]:
    """Usage records for jobs that ran; `only_ours` keeps the broker's pilots and backfill jobs."""
    usage = []
    for r in records:
        parsed = parse_job_name(r.name)
        if only_ours and parsed is None:
            continue
        if r.start_time is None or (finished_only and not r.state.finished):
            continue
        kind, resource_id = parsed if parsed else ("job", None)
        submitted = r.submit_time or r.start_time
        experiment = experiment_of(r.account) if experiment_of else (r.account or "unknown")
        usage.append(
            UsageRecord(
                record_key=f"{site}:{kind}:{r.job_id}-{int(submitted.timestamp())}",
                kind=kind,
                experiment=experiment,
                site=site,
                submit_host=submit_host,
                backend=backend,
                start_time=r.start_time,
                end_time=r.end_time,
                wall_seconds=r.elapsed_seconds,
                cpu_seconds=r.cpu_seconds,  # sacct TotalCPU; None (unknown) from the jobcomp log
                cores=r.cpus,
                nodes=r.nodes,
                memory_kb=r.max_rss_kb,
                gpu_model=r.gpu_model,
                gpu_count=r.gpus,
                resource_id=resource_id,
                local_job_id=r.job_id,
                local_user=r.user,
                market=_MARKET.get(kind),
                infrastructure="slurm",
                status="completed" if r.state is JobState.COMPLETED else r.state.value.lower(),
            )
        )
    return usage


async def collect_usage(
    client: SlurmClient,
    *,
    since: datetime,
    site: str,
    submit_host: str,
    backend: str,
    jobcomp_path: Path | None = None,
    only_ours: bool = True,
) -> list[UsageRecord]:
    """Usage of jobs finished since `since`: sacct when slurmdbd answers, else the jobcomp log."""
    try:
        records = await client.accounting(since=since)
        source = "sacct"
    except AccountingUnavailable:
        if jobcomp_path is None:
            raise
        records = read_jobcomp(jobcomp_path, since=since)
        source = "jobcomp"
    usage = to_usage(records, site=site, submit_host=submit_host, backend=backend, only_ours=only_ours)
    log.info("slurm.usage.collected", source=source, records=len(usage), backend=backend)
    return usage
