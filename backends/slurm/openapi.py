"""Parsing Slurm's OpenAPI v0.0.38 JSON: the same documents come from slurmrestd and `--json` commands.

On Slurm 22.05 `squeue --json`, `sinfo --json` and `sacct --json` print exactly what slurmrestd's
`/slurm/v0.0.38/jobs`, `/slurm/v0.0.38/nodes` and `/slurmdb/v0.0.38/jobs` return, so both clients
share these functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from backends.slurm.client import AccountingRecord, JobState, SlurmJob, SlurmNode

_NO_VALUE = 0xFFFFFFFE  # Slurm's NO_VAL/INFINITE sentinels start here (32-bit)
_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def epoch(value: Any) -> datetime | None:
    """Slurm's epoch seconds (0: unset) as UTC-aware datetime."""
    if not isinstance(value, int | float) or value <= 0 or value >= _NO_VALUE:
        return None
    return datetime.fromtimestamp(value, UTC)


def memory_mb(text: str) -> int | None:
    """'19284M', '1G', '512K', '2000' (MB) → MB."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]?)", text.strip().upper())
    if not match:
        return None
    return round(float(match.group(1)) * _MEM_UNITS[match.group(2) or "M"])


def parse_tres(text: str) -> dict[str, str]:
    """'cpu=2,mem=1G,node=1,gres/gpu=1,gres/gpu:fake=1' → {'cpu': '2', 'mem': '1G', ...}."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def gpus_from_tres(tres: Mapping[str, str]) -> tuple[int, str | None]:
    """GPU count and model from a TRES map (`gres/gpu=2`, `gres/gpu:a100=2`)."""
    count, model = 0, None
    for key, value in tres.items():
        if key == "gres/gpu":
            count = max(count, int(value))
        elif key.startswith("gres/gpu:"):
            model = key.split(":", 1)[1]
            count = max(count, int(value))
    return count, model


def gres_gpus(text: str) -> tuple[int, str | None]:
    """GPUs from a gres string: 'gpu:fake:2(S:0)', 'gres:gpu:1', 'gres/gpu:a100:4', 'gpu:2,nic:1'."""
    count, model = 0, None
    for item in (text or "").split(","):
        item = re.sub(r"\(.*\)$", "", item.strip())
        parts = re.split(r"[:/]", item)
        if parts and parts[0] == "gres":
            parts = parts[1:]
        if not parts or parts[0] != "gpu":
            continue
        if len(parts) >= 3:
            model, n = parts[1], parts[2]
        elif len(parts) == 2:
            n = parts[1]
        else:
            n = "1"
        if n.isdigit():
            count += int(n)
    return count, model


def _minutes(value: Any) -> int | None:
    if not isinstance(value, int) or value >= _NO_VALUE or value < 0:
        return None
    return value


def _reason(value: Any) -> str | None:
    return None if not value or value == "None" else str(value)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < _NO_VALUE else 0


def job_from_openapi(doc: Mapping[str, Any]) -> SlurmJob:
    """One entry of `jobs` in squeue --json / GET /slurm/v0.0.38/jobs."""
    tres = parse_tres(str(doc.get("tres_req_str") or ""))
    gpus, model = gpus_from_tres(tres)
    per_node, node_model = gres_gpus(str(doc.get("tres_per_node") or ""))
    gres_count, gres_model = gres_gpus(
        ",".join(str(doc.get(k) or "") for k in ("tres_per_node", "tres_per_job"))
    )
    array_job = _count(doc.get("array_job_id"))
    mem = memory_mb(tres["mem"]) if "mem" in tres else None
    if mem is None and isinstance(doc.get("memory_per_node"), int):
        mem = int(doc["memory_per_node"])
    return SlurmJob(
        job_id=str(doc["job_id"]),
        name=str(doc.get("name") or ""),
        state=job_state(doc.get("job_state")),  # squeue --json: a list on 23.02+ too
        partition=str(doc.get("partition") or ""),
        comment=str(doc.get("comment") or ""),
        reason=_reason(doc.get("state_reason")),
        account=doc.get("account") or None,
        qos=doc.get("qos") or None,
        user=doc.get("user_name") or None,
        nodes=int(doc.get("node_count") or 1),
        cpus=int(doc.get("cpus") or 1),
        memory_mb=mem,
        gpus=gpus or gres_count,
        gpu_model=model or gres_model or node_model,
        features=str(doc.get("features") or ""),
        time_limit_minutes=_minutes(doc.get("time_limit")),
        submit_time=epoch(doc.get("submit_time")),
        start_time=epoch(doc.get("start_time")),
        end_time=epoch(doc.get("end_time")),
        node_list=str(doc.get("nodes") or ""),
        priority=int(doc.get("priority") or 0) if int(doc.get("priority") or 0) < _NO_VALUE else 0,
        # 22.05 spells --exclusive as shared "none" (older: "exclusive"); OVERSUBSCRIBE is "oversubscribe"
        exclusive=str(doc.get("shared") or "").lower() in {"none", "exclusive"},
        gpus_per_node=per_node if per_node else None,
        array_job_id=str(array_job) if array_job else None,
        array_tasks=str(doc.get("array_task_string") or "") if array_job else "",
        array_max_tasks=_count(doc.get("array_max_tasks")),
    )


def node_from_openapi(doc: Mapping[str, Any]) -> SlurmNode:
    """One entry of `nodes` in sinfo --json / GET /slurm/v0.0.38/nodes."""
    gpus, model = gres_gpus(str(doc.get("gres") or ""))
    features = frozenset(
        f for f in str(doc.get("active_features") or doc.get("features") or "").split(",") if f
    )
    return SlurmNode(
        name=str(doc["name"]),
        state=str(doc.get("state") or "unknown").lower(),
        flags=frozenset(str(f).upper() for f in doc.get("state_flags") or ()),
        cpus=int(doc.get("cpus") or 0),
        alloc_cpus=int(doc.get("alloc_cpus") or 0),
        memory_mb=int(doc.get("real_memory") or 0),
        gpus=gpus,
        gpu_model=model,
        features=features,
        partitions=tuple(doc.get("partitions") or ()),
        arch=doc.get("architecture") or None,
    )


def _tres_list(items: Any) -> dict[str, int]:
    """sacct's [{'type': 'gres', 'name': 'gpu', 'count': 1}, ...] → {'gres/gpu': 1, 'cpu': 2}."""
    out: dict[str, int] = {}
    for item in items or ():
        kind = str(item.get("type") or "")
        key = f"{kind}/{item['name']}" if item.get("name") else kind
        count = item.get("count")
        if isinstance(count, int):
            out[key] = count
    return out


def job_state(value: Any) -> JobState:
    """A job's state as 22.05 prints it ("COMPLETED") or as newer data_parser plugins do (23.02+:
    ["COMPLETED"], flags such as REQUEUED after the base state): a list's first entry is the state."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return JobState.parse(str(value) if value is not None else None)


def _cpu_seconds(total: Any) -> int | None:
    """sacct's TotalCPU (`time.total`); None when it is absent: unknown CPU time is not 0 s."""
    if not isinstance(total, Mapping) or not ({"seconds", "microseconds"} & total.keys()):
        return None
    return int(total.get("seconds") or 0) + round(int(total.get("microseconds") or 0) / 1e6)


def accounting_from_openapi(doc: Mapping[str, Any]) -> AccountingRecord:
    """One entry of `jobs` in sacct --json / GET /slurmdb/v0.0.38/jobs."""
    time = doc.get("time") or {}
    tres = doc.get("tres") or {}
    allocated = _tres_list(tres.get("allocated"))
    requested = _tres_list(tres.get("requested"))
    gpus = allocated.get("gres/gpu", requested.get("gres/gpu", 0))
    model = next((k.split(":", 1)[1] for k in {**requested, **allocated} if k.startswith("gres/gpu:")), None)
    max_rss: int | None = None
    for step in doc.get("steps") or ():
        peak = _tres_list(((step.get("tres") or {}).get("requested") or {}).get("max")).get("mem")
        if peak is not None:
            max_rss = max(max_rss or 0, peak // 1024)  # bytes → kB
    comment = doc.get("comment") or {}
    state = doc.get("state") or {}
    return AccountingRecord(
        job_id=str(doc["job_id"]),
        name=str(doc.get("name") or ""),
        state=job_state(state.get("current") if isinstance(state, Mapping) else state),
        partition=str(doc.get("partition") or ""),
        account=doc.get("account") or None,
        user=doc.get("user") or None,
        submit_time=epoch(time.get("submission")),
        start_time=epoch(time.get("start")),
        end_time=epoch(time.get("end")),
        elapsed_seconds=int(time.get("elapsed") or 0),
        cpu_seconds=_cpu_seconds(time.get("total")),
        nodes=int(doc.get("allocation_nodes") or allocated.get("node") or 1),
        cpus=int(allocated.get("cpu") or requested.get("cpu") or 1),
        memory_mb=requested.get("mem"),
        max_rss_kb=max_rss,
        gpus=gpus,
        gpu_model=model,
        qos=doc.get("qos") or None,
        comment=str(comment.get("job") or "") if isinstance(comment, Mapping) else str(comment),
        node_list=str(doc.get("nodes") or ""),
        cluster=doc.get("cluster") or None,
    )
