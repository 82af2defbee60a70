"""A small loader mirroring APEL's server side (`record_factory` + `Record.load_from_msg` + the record
classes' `_check_fields`), written from the APEL sources, to parse our messages back in tests.

It is deliberately independent of `accounting.apel` (its own field tables) so a typo on either side
shows up as a rejected record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


class Rejected(Exception):
    pass


@dataclass(frozen=True)
class Spec:
    fields: tuple[str, ...]
    mandatory: tuple[str, ...]
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    times: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()  # NOT NULL columns in the server schema


JOB = Spec(
    fields=tuple(
        [
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
        ]
    ),
    mandatory=("Site", "LocalJobId", "WallDuration", "CpuDuration", "StartTime", "EndTime"),
    ints=("WallDuration", "CpuDuration", "Processors", "NodeCount", "MemoryReal", "MemoryVirtual"),
    floats=("ServiceLevel",),
    times=("StartTime", "EndTime"),
)
SUMMARY = Spec(
    fields=tuple(
        [
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
        ]
    ),
    mandatory=("Site", "Month", "Year", "WallDuration", "CpuDuration", "NumberOfJobs"),
    ints=("Month", "Year", "NodeCount", "Processors", "WallDuration", "CpuDuration", "NumberOfJobs"),
    floats=("ServiceLevel",),
    times=("EarliestEndTime", "LatestEndTime"),
    not_null=("ServiceLevelType", "ServiceLevel", "NodeCount", "Processors"),
)
NORMALISED = Spec(
    fields=tuple(
        [
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
        ]
    ),
    mandatory=(
        "Site",
        "Month",
        "Year",
        "WallDuration",
        "CpuDuration",
        "NormalisedWallDuration",
        "NormalisedCpuDuration",
        "NumberOfJobs",
    ),
    ints=(
        "Month",
        "Year",
        "NodeCount",
        "Processors",
        "WallDuration",
        "CpuDuration",
        "NormalisedWallDuration",
        "NormalisedCpuDuration",
        "NumberOfJobs",
    ),
    times=("EarliestEndTime", "LatestEndTime"),
    not_null=("NodeCount", "Processors"),
)
SYNC = Spec(
    fields=("Site", "SubmitHost", "NumberOfJobs", "Month", "Year"),
    mandatory=("Site", "NumberOfJobs", "Month", "Year"),
    ints=("NumberOfJobs", "Month", "Year"),
)
CLOUD = Spec(
    fields=tuple(
        [
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
        ]
    ),
    mandatory=("VMUUID", "SiteName"),
    ints=(
        "SuspendDuration",
        "WallDuration",
        "CpuDuration",
        "NetworkInbound",
        "NetworkOutbound",
        "PublicIPCount",
        "Memory",
        "Disk",
    ),
    floats=("Benchmark", "CpuCount"),
    times=("RecordCreateTime", "StartTime", "EndTime"),
)
CLOUD_SUMMARY = Spec(
    fields=tuple(
        [
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
        ]
    ),
    mandatory=("SiteName", "Month", "Year", "NumberOfVMs"),
    ints=(
        "Month",
        "Year",
        "WallDuration",
        "CpuDuration",
        "NetworkInbound",
        "NetworkOutbound",
        "Memory",
        "Disk",
        "NumberOfVMs",
    ),
    floats=("CpuCount", "Benchmark"),
    times=("EarliestStartTime", "LatestStartTime"),
)

# record_factory: type from the text before ':' except summaries, told apart by the whole header.
BY_TYPE = {
    "APEL-individual-job-message": JOB,
    "APEL-sync-message": SYNC,
    "APEL-cloud-message": CLOUD,
    "APEL-cloud-summary-message": CLOUD_SUMMARY,
}
BY_HEADER = {"APEL-summary-job-message: v0.2": SUMMARY, "APEL-summary-job-message: v0.3": NORMALISED}
VALID_SLT = ("si2k", "hepspec", "hepscore23")


def _null(value: Any) -> bool:
    return str(value).lower() in ("none", "null", "")


def _checked(spec: Spec, key: str, value: str) -> Any:
    if _null(value):
        if key in spec.mandatory:
            raise Rejected(f"NULL in mandatory field: {key}")
        return None
    if key in spec.ints:
        try:
            return int(value)
        except ValueError as exc:
            raise Rejected(f"Invalid int value {value} in field {key}") from exc
    if key in spec.floats:
        try:
            return float(value)
        except ValueError as exc:
            raise Rejected(f"Invalid float value {value} in field {key}") from exc
    if key in spec.times:
        try:
            seconds = int(value)
        except ValueError as exc:
            # APEL would try ISO here and apply the host's local timezone: never acceptable for us.
            raise Rejected(f"time field {key} is not integer epoch seconds: {value}") from exc
        return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    return value


def parse_fqan(fqan: str) -> tuple[str | None, str | None, str]:
    first = fqan.split(";")[0]
    if first.find("/") != 0:
        return None, None, first
    pieces = first.split("/")
    role, group = "None", ""
    for piece in pieces:
        if not piece:
            continue
        if piece.lower().startswith("role="):
            role = piece
            break
        group += "/" + piece
    return role, group, pieces[1]


def _month_checks(rc: dict[str, Any], early: str, late: str, now: datetime) -> None:
    try:
        year, month = int(rc["Year"]), int(rc["Month"])
        start = datetime(year, month, 1)
        end = datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected("Invalid values for month and/or year.") from exc
    first, last = rc.get(early), rc.get(late)
    if first is not None and last is not None:
        if not start <= first <= end:
            raise Rejected(f"{early} is not within stated month.")
        if not start <= last <= end:
            raise Rejected(f"{late} is not within stated month.")
        if first > last:
            raise Rejected(f"{late} is earlier than {early}.")
    if start > now:
        raise Rejected("Month specified in record is in the future.")


def load_record(spec: Spec, text: str, now: datetime) -> dict[str, Any]:
    rc: dict[str, Any] = {}
    for line in text.strip().splitlines():
        parts = line.split(":", 1)
        if len(parts) != 2:
            raise Rejected(f"Record contains a line without a key-value pair: {line}")
        key = parts[0].strip()
        if key not in spec.fields:
            raise Rejected(f"Unknown field: {key}")
        if key in rc:
            raise Rejected(f"duplicate field: {key}")
        rc[key] = _checked(spec, key, parts[1].strip())
    for key in spec.mandatory:
        if rc.get(key) is None:
            raise Rejected(f"Mandatory field {key} not specified.")
    for key in spec.not_null:
        if rc.get(key) is None:
            raise Rejected(f"{key} is NOT NULL in the server database")
    if spec is JOB:
        if rc.get("FQAN") is not None:
            role, group, vo = parse_fqan(rc["FQAN"])
            rc["VORole"], rc["VOGroup"], rc["VO"] = role, group, vo
        slt, sl = rc.get("ServiceLevelType"), rc.get("ServiceLevel")
        if (slt is None) != (sl is None) or slt is None:
            raise Rejected("ServiceLevelType and ServiceLevel must come together")
        if slt.lower() not in VALID_SLT:
            raise Rejected(f"ScalingFactorUnit {slt} not valid.")
        if rc["EndTime"] < rc["StartTime"]:
            raise Rejected("EndTime is before StartTime.")
        if rc["EndTime"] > now + timedelta(days=2):
            raise Rejected("EndTime is in the future.")
    if spec in (SUMMARY, NORMALISED):
        _month_checks(rc, "EarliestEndTime", "LatestEndTime", now)
        if not 1 <= rc["Month"] <= 12:
            raise Rejected("Month value is out of range")
        for key in ("WallDuration", "CpuDuration", "NormalisedWallDuration", "NormalisedCpuDuration"):
            if rc.get(key) is not None and rc[key] < 0:
                raise Rejected(f"Negative {key}")
    if spec is SUMMARY and str(rc["ServiceLevelType"]).lower() not in VALID_SLT:
        raise Rejected(f"ServiceLevelType {rc['ServiceLevelType']} not valid")
    return rc


def load_message(text: str, now: datetime | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(header, records) as the server would load them; raises Rejected for anything it rejects."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if "\n\n" in text:
        raise Rejected("blank line inside the message")
    lines = text.strip().splitlines()
    header = lines.pop(0)
    spec = BY_HEADER.get(header) or BY_TYPE.get(header.split(":")[0].strip())
    if spec is None or (header.startswith("APEL-summary-job-message") and header not in BY_HEADER):
        raise Rejected(f"Message type {header} not recognised.")
    body = "\n".join(lines)
    records = [load_record(spec, chunk, now) for chunk in body.split("%%") if chunk.strip()]
    return header, records
