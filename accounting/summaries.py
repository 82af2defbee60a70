"""SQL aggregation of stored usage into the groups APEL summaries are built from (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlmodel import Session

from accounting.apel import CloudSummary, JobGroup, SyncCount, round_benchmark, vo_fields
from accounting.period import Month
from accounting.usage import USAGE, valid_row_condition
from provisioner.model import row_time

# Usage kinds accounted as batch jobs (grid job records and summaries); VMs go to cloud accounting.
JOB_KINDS = ("job", "pilot", "backfill")


def _aware(value: datetime | None) -> datetime:
    out = row_time(value)
    assert out is not None
    return out


def _site_filter(site: str | None, excluded: Collection[str] = ()) -> list[ColumnElement[bool]]:
    """The site's rows, without `excluded` record keys (second copies of a duplicated job)."""
    out = [] if site is None else [USAGE.c.site == site]
    if excluded:
        out.append(USAGE.c.record_key.not_in(sorted(excluded)))
    return out


def job_groups(
    session: Session,
    month: Month,
    *,
    site: str | None = None,
    kinds: tuple[str, ...] = JOB_KINDS,
    excluded: Collection[str] = (),
) -> list[JobGroup]:
    """Jobs that ended in `month` (UTC), aggregated in SQL on every summary key (raw FQAN kept)."""
    t = USAGE.c
    keys = (
        t.site,
        t.experiment,
        t.fqan,
        t.global_user_name,
        t.submit_host,
        t.hs23_per_core,
        t.nodes,
        t.cores,
    )
    stmt = (
        select(
            *keys,
            func.sum(t.wall_seconds),
            func.coalesce(func.sum(t.cpu_seconds), 0),  # unknown CPU time adds nothing
            func.count(),
            func.min(t.end_time),
            func.max(t.end_time),
        )
        .where(
            t.kind.in_(kinds),
            t.end_time >= month.start,
            t.end_time < month.end,
            valid_row_condition(),
            *_site_filter(site, excluded),
        )
        .group_by(*keys)
    )
    out = []
    for row in session.execute(stmt):
        site_, exp, fqan, dn, host, hs23, nodes, cores, wall, cpu, jobs, first, last = row
        out.append(
            JobGroup(
                site_,
                exp,
                fqan,
                dn,
                host,
                float(hs23),
                int(nodes),
                int(cores),
                int(wall),
                int(cpu),
                int(jobs),
                _aware(first),
                _aware(last),
            )
        )
    return out


def sync_counts(
    session: Session,
    month: Month,
    *,
    site: str | None = None,
    kinds: tuple[str, ...] = JOB_KINDS,
    excluded: Collection[str] = (),
) -> list[SyncCount]:
    t = USAGE.c
    stmt = (
        select(t.site, t.submit_host, func.count())
        .where(
            t.kind.in_(kinds),
            t.end_time >= month.start,
            t.end_time < month.end,
            valid_row_condition(),
            *_site_filter(site, excluded),
        )
        .group_by(t.site, t.submit_host)
        .order_by(t.site, t.submit_host)
    )
    return [SyncCount(s, h, month.year, month.month, int(n)) for s, h, n in session.execute(stmt)]


def _vm_in_month(month: Month) -> ColumnElement[bool]:
    t = USAGE.c
    return or_(
        and_(t.end_time >= month.start, t.end_time < month.end),
        and_(  # a running VM's record is filed by the server under its creation: its start, here
            t.end_time.is_(None),
            t.status == "started",
            t.start_time >= month.start,
            t.start_time < month.end,
        ),
    )


def vm_condition(month: Month, site: str | None, excluded: Collection[str] = ()) -> list[ColumnElement[bool]]:
    """VMs accounted in `month`: finished in it, or still running and started before its end."""
    t = USAGE.c
    valid_vm = and_(
        t.wall_seconds >= 0,
        or_(t.cpu_seconds.is_(None), t.cpu_seconds >= 0),
        t.cores >= 1,
        t.hs23_per_core.is_not(None),
        t.hs23_per_core >= 3.0,
        t.hs23_per_core <= 80.0,
        or_(t.end_time.is_(None), t.end_time >= t.start_time),
    )
    return [t.kind == "vm", _vm_in_month(month), valid_vm, *_site_filter(site, excluded)]


def cloud_summaries(
    session: Session, month: Month, *, site: str | None = None, excluded: Collection[str] = ()
) -> list[CloudSummary]:
    t = USAGE.c
    status = func.coalesce(t.status, "completed")
    # CpuCount is per VM on the server: VMs of different sizes are different summary lines
    keys = (t.site, t.backend, t.experiment, t.fqan, t.global_user_name, status, t.cloud_type,
            t.cloud_image_id, t.hs23_per_core, t.cores)  # fmt: skip
    stmt = (
        select(
            *keys,
            func.min(t.start_time),
            func.max(t.start_time),
            func.sum(t.wall_seconds),
            func.coalesce(func.sum(t.cpu_seconds), 0),
            func.sum(t.memory_kb),
            func.count(),
        )
        .where(*vm_condition(month, site, excluded))
        .group_by(*keys)
    )
    merged: dict[tuple[Any, ...], _CloudTotals] = {}
    for row in session.execute(stmt):
        site_, backend, exp, fqan, dn, st, ctype, image, hs23, cores, first, last, wall, cpu, mem_kb, vms = (
            row
        )
        vo, group, role = vo_fields(exp, fqan)
        key = (site_, backend, vo, group, role, dn, st, ctype, image, round_benchmark(hs23), int(cores))
        part = _CloudTotals(
            _aware(first),
            _aware(last),
            int(wall),
            int(cpu),
            int(cores),
            None if mem_kb is None else int(mem_kb),
            int(vms),
        )
        merged[key] = merged[key].add(part) if key in merged else part
    out = []
    for key in sorted(merged, key=lambda k: tuple("" if p is None else str(p) for p in k)):
        site_, backend, vo, group, role, dn, st, ctype, image, hs23, _ = key
        acc = merged[key]
        out.append(
            CloudSummary(
                site=str(site_),
                cloud_compute_service=_opt(backend),
                year=month.year,
                month=month.month,
                vo=str(vo),
                vo_group=_opt(group),
                vo_role=_opt(role),
                global_user_name=_opt(dn),
                status=str(st),
                cloud_type=_opt(ctype),
                image_id=_opt(image),
                earliest_start=acc.first,
                latest_start=acc.last,
                wall_seconds=acc.wall,
                cpu_seconds=acc.cpu,
                cpu_count=acc.cores,
                memory_mb=None if acc.memory_kb is None else acc.memory_kb // 1024,
                benchmark=float(hs23) if hs23 is not None else 0.0,
                vms=acc.vms,
            )
        )
    return out


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _CloudTotals:
    first: datetime
    last: datetime
    wall: int
    cpu: int
    cores: int
    memory_kb: int | None
    vms: int

    def add(self, other: _CloudTotals) -> _CloudTotals:
        memory = None
        if self.memory_kb is not None or other.memory_kb is not None:
            memory = (self.memory_kb or 0) + (other.memory_kb or 0)
        return _CloudTotals(
            min(self.first, other.first),
            max(self.last, other.last),
            self.wall + other.wall,
            self.cpu + other.cpu,
            self.cores,  # per VM: one summary line holds VMs of one size
            memory,
            self.vms + other.vms,
        )
