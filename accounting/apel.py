"""APEL message formats (job, summary, normalised summary, sync, cloud, cloud summary, accelerator JSON).

Field names and their order are those of APEL's record classes (`apel/db/records/*.py`, `_msg_fields`);
the wire format is the one `apel.db.loader.record_factory` parses: a header line, then records of
`Key: Value` lines each closed by `%%`, at most 1000 records a message. Times are integer Unix epoch
seconds (UTC); a field without a value is left out, as APEL's own `Record.get_msg` does, except those
the server stores NOT NULL (NodeCount, Processors in summaries), which we always write.
"""

from __future__ import annotations

import calendar
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from accounting.benchmark import BENCHMARK_TYPE, checked_hs23, exact_product, normalised_seconds
from provisioner.domain import UsageRecord

MAX_RECORDS_PER_MESSAGE = 1000

JOB_HEADER = "APEL-individual-job-message: v0.3"
SUMMARY_HEADER = "APEL-summary-job-message: v0.2"
NORMALISED_SUMMARY_HEADER = "APEL-summary-job-message: v0.3"
SYNC_HEADER = "APEL-sync-message: v0.1"
CLOUD_HEADER = "APEL-cloud-message: v0.4"
CLOUD_SUMMARY_HEADER = "APEL-cloud-summary-message: v0.4"
ACCELERATOR_TYPE = "APEL-accelerator-message"
ACCELERATOR_VERSION = "0.1"

JOB_FIELDS = (
    "Site",
    "SubmitHost",
    "MachineName",
    "Queue",
    "LocalJobId",
    "LocalUserId",
    "GlobalUserName",
    "FQAN",
    "VO",
    "VOGroup",
    "VORole",
    "WallDuration",
    "CpuDuration",
    "Processors",
    "NodeCount",
    "StartTime",
    "EndTime",
    "InfrastructureDescription",
    "InfrastructureType",
    "MemoryReal",
    "MemoryVirtual",
    "ServiceLevelType",
    "ServiceLevel",
)
SUMMARY_FIELDS = (
    "Site",
    "Month",
    "Year",
    "GlobalUserName",
    "VO",
    "VOGroup",
    "VORole",
    "SubmitHost",
    "InfrastructureType",
    "ServiceLevelType",
    "ServiceLevel",
    "NodeCount",
    "Processors",
    "EarliestEndTime",
    "LatestEndTime",
    "WallDuration",
    "CpuDuration",
    "NumberOfJobs",
)
NORMALISED_SUMMARY_FIELDS = (
    "Site",
    "Month",
    "Year",
    "GlobalUserName",
    "VO",
    "VOGroup",
    "VORole",
    "SubmitHost",
    "Infrastructure",
    "NodeCount",
    "Processors",
    "EarliestEndTime",
    "LatestEndTime",
    "WallDuration",
    "CpuDuration",
    "NormalisedWallDuration",
    "NormalisedCpuDuration",
    "NumberOfJobs",
)
SYNC_FIELDS = ("Site", "SubmitHost", "NumberOfJobs", "Month", "Year")
CLOUD_FIELDS = (
    "RecordCreateTime",
    "VMUUID",
    "SiteName",
    "CloudComputeService",
    "MachineName",
    "LocalUserId",
    "LocalGroupId",
    "GlobalUserName",
    "FQAN",
    "Status",
    "StartTime",
    "EndTime",
    "SuspendDuration",
    "WallDuration",
    "CpuDuration",
    "CpuCount",
    "NetworkType",
    "NetworkInbound",
    "NetworkOutbound",
    "PublicIPCount",
    "Memory",
    "Disk",
    "BenchmarkType",
    "Benchmark",
    "StorageRecordId",
    "ImageId",
    "CloudType",
)
CLOUD_SUMMARY_FIELDS = (
    "SiteName",
    "CloudComputeService",
    "Month",
    "Year",
    "GlobalUserName",
    "VO",
    "VOGroup",
    "VORole",
    "Status",
    "CloudType",
    "ImageId",
    "EarliestStartTime",
    "LatestStartTime",
    "WallDuration",
    "CpuDuration",
    "CpuCount",
    "NetworkInbound",
    "NetworkOutbound",
    "Memory",
    "Disk",
    "BenchmarkType",
    "Benchmark",
    "NumberOfVMs",
)
ACCELERATOR_FIELDS = (
    "MeasurementMonth",
    "MeasurementYear",
    "AssociatedRecordType",
    "AssociatedRecord",
    "GlobalUserName",
    "FQAN",
    "SiteName",
    "Count",
    "Cores",
    "ActiveDuration",
    "AvailableDuration",
    "BenchmarkType",
    "Benchmark",
    "Type",
    "Model",
)

INFRASTRUCTURE_TYPE = "grid"

Value = str | int | float | datetime | None


class MessageError(ValueError):
    """A record that APEL's loader would reject; names the field and the problem."""

    def __init__(self, record: str, field: str, problem: str) -> None:
        super().__init__(f"{record}: {field}: {problem}")
        self.record = record
        self.field = field
        self.problem = problem


def epoch(value: datetime) -> int:
    """Integer Unix seconds of an aware datetime (naive ones are taken as UTC, as stored)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp()) if value.microsecond == 0 else calendar.timegm(value.utctimetuple())


@functools.lru_cache(maxsize=4096)
def parse_fqan(fqan: str) -> tuple[str, str | None, str | None]:
    """(VO, VOGroup, VORole) the way APEL's `apel.common.parse_fqan` derives them."""
    first = fqan.split(";")[0]
    if not first.startswith("/"):
        return first, None, None
    pieces = first.split("/")
    role = "None"
    group = ""
    for piece in pieces:
        if not piece:
            continue
        if piece.lower().startswith("role="):
            role = piece
            break
        group += "/" + piece
    return pieces[1], group, role


def vo_fields(experiment: str, fqan: str | None) -> tuple[str, str | None, str | None]:
    """VO, VOGroup, VORole as the server will store them (the FQAN overrides the VO)."""
    if fqan:
        return parse_fqan(fqan)
    return experiment, None, None


def _text(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if "\n" in value or "%%" in value:
            raise ValueError(f"value {value!r} would break the message framing")
        return value.strip() or None
    if isinstance(value, bool):
        raise TypeError("booleans have no APEL representation")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(epoch(value))


@functools.cache
def _field_set(order: tuple[str, ...]) -> frozenset[str]:
    return frozenset(order)


def render_record(order: tuple[str, ...], values: Mapping[str, Value]) -> str:
    """One record as `Key: Value` lines in APEL's field order, each line ending in a newline."""
    if not _field_set(order).issuperset(values):
        raise KeyError(f"fields not in this record type: {sorted(set(values) - set(order))}")
    lines = []
    for key in order:
        text = _text(values.get(key))
        if text is not None:
            lines.append(f"{key}: {text}\n")
    return "".join(lines)


def build_messages(header: str, records: Sequence[str]) -> list[str]:
    """Header line, records each closed by `%%`, at most 1000 records a message."""
    out = []
    for start in range(0, len(records), MAX_RECORDS_PER_MESSAGE):
        chunk = records[start : start + MAX_RECORDS_PER_MESSAGE]
        out.append(header + "\n" + "".join(record + "%%\n" for record in chunk))
    return out


# ---- individual job records ------------------------------------------------------------------


def job_values(record: UsageRecord) -> dict[str, Value]:
    """An `APEL-individual-job-message: v0.3` record for one finished job."""
    if record.end_time is None:
        raise MessageError(record.record_key, "EndTime", "job has not finished")
    hs23 = checked_hs23(record.hs23_per_core)
    vo, group, role = vo_fields(record.experiment, record.fqan)
    return {
        "Site": record.site,
        "SubmitHost": record.submit_host,
        "MachineName": record.resource_id,
        "Queue": record.offering_id,
        "LocalJobId": record.local_job_id or record.record_key,
        "LocalUserId": record.local_user,
        "GlobalUserName": record.global_user_name,
        "FQAN": record.fqan,
        "VO": vo,
        "VOGroup": group,
        "VORole": role,
        "WallDuration": record.wall_seconds,
        # Mandatory in job records: an unknown CPU time goes as 0 (never an estimate); see README.
        "CpuDuration": record.cpu_seconds or 0,
        "Processors": record.cores,
        "NodeCount": record.nodes,
        "StartTime": record.start_time,
        "EndTime": record.end_time,
        "InfrastructureDescription": record.infrastructure,
        "InfrastructureType": INFRASTRUCTURE_TYPE,
        "MemoryReal": record.memory_kb,
        "ServiceLevelType": BENCHMARK_TYPE,
        "ServiceLevel": float(hs23),
    }


def job_messages(records: Iterable[UsageRecord]) -> list[str]:
    return build_messages(JOB_HEADER, [render_record(JOB_FIELDS, job_values(r)) for r in records])


# ---- monthly summaries -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobGroup:
    """SQL aggregate of the jobs of one month sharing everything a summary is keyed on (raw FQAN)."""

    site: str
    experiment: str
    fqan: str | None
    global_user_name: str | None
    submit_host: str | None
    hs23_per_core: float
    nodes: int
    cores: int
    wall_seconds: int
    cpu_seconds: int
    jobs: int
    earliest_end: datetime
    latest_end: datetime


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One `APEL-summary-job-message: v0.2` record: the full month's totals for its key."""

    site: str
    year: int
    month: int
    vo: str
    vo_group: str | None
    vo_role: str | None
    global_user_name: str | None
    submit_host: str | None
    service_level: float
    node_count: int
    processors: int
    earliest_end: datetime
    latest_end: datetime
    wall_seconds: int
    cpu_seconds: int
    jobs: int


@dataclass(frozen=True, slots=True)
class NormalisedSummary:
    """One `APEL-summary-job-message: v0.3` record: totals with HEPscore23-normalised durations."""

    site: str
    year: int
    month: int
    vo: str
    vo_group: str | None
    vo_role: str | None
    global_user_name: str | None
    submit_host: str | None
    node_count: int
    processors: int
    earliest_end: datetime
    latest_end: datetime
    wall_seconds: int
    cpu_seconds: int
    normalised_wall: int
    normalised_cpu: int
    jobs: int


# ServiceLevel and Benchmark are DECIMAL(10,3) on the APEL server: values that differ only after the
# third decimal are one key there, so summaries group (and send) the value as the server stores it.
SERVER_BENCHMARK_STEP = Decimal("0.001")


def round_benchmark(value: float) -> float:
    """A benchmark value as the server stores it (DECIMAL(10,3), MySQL rounds half away from zero)."""
    return float(Decimal(repr(float(value))).quantize(SERVER_BENCHMARK_STEP, rounding=ROUND_HALF_UP))


def _key_sort(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in key)


def summaries_from_groups(groups: Iterable[JobGroup], year: int, month: int) -> list[JobSummary]:
    """Merge SQL groups on the keys the server sees (the FQAN becomes VO/VOGroup/VORole)."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for g in groups:
        vo, group, role = vo_fields(g.experiment, g.fqan)
        level = round_benchmark(g.hs23_per_core)
        key = (g.site, vo, group, role, g.global_user_name, g.submit_host, level, g.nodes, g.cores)
        acc = merged.get(key)
        if acc is None:
            merged[key] = [g.earliest_end, g.latest_end, g.wall_seconds, g.cpu_seconds, g.jobs]
        else:
            acc[0] = min(acc[0], g.earliest_end)
            acc[1] = max(acc[1], g.latest_end)
            acc[2] += g.wall_seconds
            acc[3] += g.cpu_seconds
            acc[4] += g.jobs
    out = []
    for key in sorted(merged, key=_key_sort):
        site, vo, group, role, dn, host, hs23, nodes, cores = key
        first, last, wall, cpu, jobs = merged[key]
        out.append(
            JobSummary(
                site, year, month, vo, group, role, dn, host, hs23, nodes, cores, first, last, wall, cpu, jobs
            )
        )
    return out


def normalised_from_groups(groups: Iterable[JobGroup], year: int, month: int) -> list[NormalisedSummary]:
    """Normalised summaries: ROUND(SUM(duration × HEPscore23 per core)) per key, summed exactly."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for g in groups:
        vo, group, role = vo_fields(g.experiment, g.fqan)
        key = (g.site, vo, group, role, g.global_user_name, g.submit_host, g.nodes, g.cores)
        hs23 = checked_hs23(g.hs23_per_core)
        nwall = exact_product(g.wall_seconds, hs23)
        ncpu = exact_product(g.cpu_seconds, hs23)
        acc = merged.get(key)
        if acc is None:
            merged[key] = [g.earliest_end, g.latest_end, g.wall_seconds, g.cpu_seconds, nwall, ncpu, g.jobs]
        else:
            acc[0] = min(acc[0], g.earliest_end)
            acc[1] = max(acc[1], g.latest_end)
            acc[2] += g.wall_seconds
            acc[3] += g.cpu_seconds
            acc[4] += nwall
            acc[5] += ncpu
            acc[6] += g.jobs
    out = []
    for key in sorted(merged, key=_key_sort):
        site, vo, group, role, dn, host, nodes, cores = key
        first, last, wall, cpu, nwall, ncpu, jobs = merged[key]
        out.append(
            NormalisedSummary(
                site,
                year,
                month,
                vo,
                group,
                role,
                dn,
                host,
                nodes,
                cores,
                first,
                last,
                wall,
                cpu,
                normalised_seconds(Decimal(nwall)),
                normalised_seconds(Decimal(ncpu)),
                jobs,
            )
        )
    return out


def summary_values(s: JobSummary) -> dict[str, Value]:
    return {
        "Site": s.site,
        "Month": s.month,
        "Year": s.year,
        "GlobalUserName": s.global_user_name,
        "VO": s.vo,
        "VOGroup": s.vo_group,
        "VORole": s.vo_role,
        "SubmitHost": s.submit_host,
        "InfrastructureType": INFRASTRUCTURE_TYPE,
        "ServiceLevelType": BENCHMARK_TYPE,
        "ServiceLevel": float(s.service_level),
        "NodeCount": s.node_count,
        "Processors": s.processors,
        "EarliestEndTime": s.earliest_end,
        "LatestEndTime": s.latest_end,
        "WallDuration": s.wall_seconds,
        "CpuDuration": s.cpu_seconds,
        "NumberOfJobs": s.jobs,
    }


def normalised_values(s: NormalisedSummary) -> dict[str, Value]:
    return {
        "Site": s.site,
        "Month": s.month,
        "Year": s.year,
        "GlobalUserName": s.global_user_name,
        "VO": s.vo,
        "VOGroup": s.vo_group,
        "VORole": s.vo_role,
        "SubmitHost": s.submit_host,
        "Infrastructure": INFRASTRUCTURE_TYPE,
        "NodeCount": s.node_count,
        "Processors": s.processors,
        "EarliestEndTime": s.earliest_end,
        "LatestEndTime": s.latest_end,
        "WallDuration": s.wall_seconds,
        "CpuDuration": s.cpu_seconds,
        "NormalisedWallDuration": s.normalised_wall,
        "NormalisedCpuDuration": s.normalised_cpu,
        "NumberOfJobs": s.jobs,
    }


def summary_messages(summaries: Sequence[JobSummary]) -> list[str]:
    return build_messages(
        SUMMARY_HEADER, [render_record(SUMMARY_FIELDS, summary_values(s)) for s in summaries]
    )


def normalised_messages(summaries: Sequence[NormalisedSummary]) -> list[str]:
    records = [render_record(NORMALISED_SUMMARY_FIELDS, normalised_values(s)) for s in summaries]
    return build_messages(NORMALISED_SUMMARY_HEADER, records)


# ---- sync records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncCount:
    site: str
    submit_host: str | None
    year: int
    month: int
    jobs: int


def sync_messages(counts: Sequence[SyncCount]) -> list[str]:
    records = [
        render_record(
            SYNC_FIELDS,
            {
                "Site": c.site,
                "SubmitHost": c.submit_host,
                "NumberOfJobs": c.jobs,
                "Month": c.month,
                "Year": c.year,
            },
        )
        for c in counts
    ]
    return build_messages(SYNC_HEADER, records)


# ---- cloud records ---------------------------------------------------------------------------


_MONTH_SUFFIX = re.compile(r":\d{4}-\d{2}$")


def vm_uuid(record: UsageRecord) -> str:
    """Stable VM identifier: the record key without its month (the broker keeps one record per VM
    and month; the server keys cloud records by VMUUID and month), so re-sending a month overwrites
    that month's record and only it."""
    return _MONTH_SUFFIX.sub("", record.record_key)


def cloud_values(record: UsageRecord) -> dict[str, Value]:
    """An `APEL-cloud-message: v0.4` record for one VM (started or completed)."""
    hs23 = checked_hs23(record.hs23_per_core)
    completed = record.end_time is not None
    return {
        # Deterministic, so re-publishing an unchanged month writes identical messages.
        "RecordCreateTime": record.end_time or record.start_time,
        "VMUUID": vm_uuid(record),
        "SiteName": record.site,
        "CloudComputeService": record.backend,
        "MachineName": record.resource_id,
        "LocalUserId": record.local_user,
        "GlobalUserName": record.global_user_name,
        "FQAN": record.fqan or record.experiment,
        "Status": "completed" if completed else "started",
        "StartTime": record.start_time,
        "EndTime": record.end_time,
        "WallDuration": record.wall_seconds,
        "CpuDuration": record.cpu_seconds,  # optional here: left out when unknown
        "CpuCount": record.cores,
        "Memory": None if record.memory_kb is None else record.memory_kb // 1024,  # MB
        "BenchmarkType": BENCHMARK_TYPE,
        "Benchmark": float(hs23),
        "ImageId": record.cloud_image_id,
        "CloudType": record.cloud_type,
    }


def cloud_messages(records: Iterable[UsageRecord]) -> list[str]:
    return build_messages(CLOUD_HEADER, [render_record(CLOUD_FIELDS, cloud_values(r)) for r in records])


@dataclass(frozen=True, slots=True)
class CloudSummary:
    """One `APEL-cloud-summary-message: v0.4` record."""

    site: str
    cloud_compute_service: str | None
    year: int
    month: int
    vo: str
    vo_group: str | None
    vo_role: str | None
    global_user_name: str | None
    status: str
    cloud_type: str | None
    image_id: str | None
    earliest_start: datetime
    latest_start: datetime
    wall_seconds: int
    cpu_seconds: int
    cpu_count: int
    memory_mb: int | None
    benchmark: float
    vms: int


def cloud_summary_values(s: CloudSummary) -> dict[str, Value]:
    return {
        "SiteName": s.site,
        "CloudComputeService": s.cloud_compute_service,
        "Month": s.month,
        "Year": s.year,
        "GlobalUserName": s.global_user_name,
        "VO": s.vo,
        "VOGroup": s.vo_group,
        "VORole": s.vo_role,
        "Status": s.status,
        "CloudType": s.cloud_type,
        "ImageId": s.image_id,
        "EarliestStartTime": s.earliest_start,
        "LatestStartTime": s.latest_start,
        "WallDuration": s.wall_seconds,
        "CpuDuration": s.cpu_seconds,
        "CpuCount": s.cpu_count,
        "Memory": s.memory_mb,
        "BenchmarkType": BENCHMARK_TYPE,
        "Benchmark": float(s.benchmark),
        "NumberOfVMs": s.vms,
    }


def cloud_summary_messages(summaries: Sequence[CloudSummary]) -> list[str]:
    records = [render_record(CLOUD_SUMMARY_FIELDS, cloud_summary_values(s)) for s in summaries]
    return build_messages(CLOUD_SUMMARY_HEADER, records)


# ---- accelerators (GPU) ----------------------------------------------------------------------


def accelerator_values(
    record: UsageRecord, year: int, month: int, active_seconds: int | None = None
) -> dict[str, Any]:
    """One APEL-accelerator-message v0.1 usage record for the GPUs held by a VM or a job.

    ActiveDuration: seconds of AvailableDuration during which a job ran on the unit (its busy time in
    the billing model); a batch job's GPUs are active for its whole run. None (JSON null, the
    draft's "not given") when nothing reported whether the unit held work."""
    if record.gpu_count <= 0 or not record.gpu_model:
        raise MessageError(record.record_key, "Count", "no GPUs on this record")
    return {
        "MeasurementMonth": month,
        "MeasurementYear": year,
        "AssociatedRecordType": "cloud" if record.kind == "vm" else "job",
        "AssociatedRecord": vm_uuid(record)
        if record.kind == "vm"
        else (record.local_job_id or record.record_key),
        "GlobalUserName": record.global_user_name,
        "FQAN": record.fqan or record.experiment,
        "SiteName": record.site,
        "Count": float(record.gpu_count),
        "Cores": None,
        "ActiveDuration": record.wall_seconds if record.kind == "job" else active_seconds,
        "AvailableDuration": record.wall_seconds,
        "BenchmarkType": None,
        "Benchmark": None,
        "Type": "GPU",
        "Model": record.gpu_model,
    }


def accelerator_messages(
    records: Sequence[UsageRecord], year: int, month: int, active: Mapping[str, int | None] | None = None
) -> list[str]:
    """JSON messages {"Type", "Version", "UsageRecords": [...]} of at most 1000 records each.
    `active`: record key → busy seconds of the unit over the record (`accelerator_values`)."""
    values = [accelerator_values(r, year, month, (active or {}).get(r.record_key)) for r in records]
    out = []
    for start in range(0, len(values), MAX_RECORDS_PER_MESSAGE):
        body = {
            "Type": ACCELERATOR_TYPE,
            "Version": ACCELERATOR_VERSION,
            "UsageRecords": [
                {k: v[k] for k in ACCELERATOR_FIELDS} for v in values[start : start + MAX_RECORDS_PER_MESSAGE]
            ],
        }
        out.append(json.dumps(body, indent=1, sort_keys=False))
    return out
