"""Usage records of the broker's own fleet: one per VM, HPC pilot or backfill job in the `resources` table.

Slurm's accounting (backends/slurm/usage.py) measures the pilots and backfill jobs it ran; this
module covers everything the broker started, from what the broker itself recorded: launch and
release times, the unit's shape, and the busy/idle history (`resource.busy` events).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlmodel import Session

from accounting.ledger import BUSY_EVENT_KINDS, EVENTS, RESOURCES
from accounting.usage import USAGE
from provisioner.domain import Market, Offering, ResourceState, UsageRecord
from provisioner.model import ResourceRow, row_time

__all__ = ["busy_seconds", "drop_superseded", "record_kind", "usage_from_resources"]

CLOUD_MARKETS = frozenset({Market.ON_DEMAND, Market.SPOT})
_KIND_BY_MARKET = {Market.ALLOCATION: "pilot", Market.BACKFILL: "backfill"}
_MARKETS = frozenset(m.value for m in Market)
# APEL's Status for a VM still running (apel.cloud_values sends "started" when there is no end time).
STARTED = "started"
# Status of a record cut at `now` because its resource is still live.
RUNNING = "running"
_ENDED_STATES = {ResourceState.FAILED: "failed", ResourceState.LOST: "lost"}
QUERY_BATCH = 500


def record_kind(market: str) -> str:
    """vm for the cloud markets, pilot for HPC allocations, backfill for opportunistic nodes.

    An unknown market (a unit adopted without its offering) is returned as is, so validation
    reports the record by its resource id instead of the whole collection failing.
    """
    if market in CLOUD_MARKETS:
        return "vm"
    return _KIND_BY_MARKET.get(Market(market), market) if market in _MARKETS else market


def busy_seconds(
    events: Sequence[tuple[datetime, bool]], *, busy_now: bool, start: datetime, stop: datetime
) -> float:
    """Seconds in [start, stop) the unit held at least one job.

    Events are stored only when busy/idle changes, so before the first event the unit was in the
    opposite state; with no event at all it has been in its current state (`busy_now`) throughout.
    """
    ordered = sorted(events, key=lambda e: e[0])  # stable: changes at the same instant keep their order
    state = (not ordered[0][1]) if ordered else busy_now
    since = start
    total = 0.0
    for at, busy in ordered:
        if at >= stop:
            break
        if at > since:
            if state:
                total += (at - since).total_seconds()
            since = at
        state = busy
    if state and stop > since:
        total += (stop - since).total_seconds()
    return total


def _busy_events(session: Session, ids: Sequence[str]) -> dict[str, list[tuple[datetime, bool]]]:
    out: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for i in range(0, len(ids), QUERY_BATCH):
        stmt = (
            select(EVENTS.c.subject, EVENTS.c.at, EVENTS.c.kind, EVENTS.c.payload)
            .where(EVENTS.c.kind.in_(BUSY_EVENT_KINDS), EVENTS.c.subject.in_(ids[i : i + QUERY_BATCH]))
            .order_by(EVENTS.c.at, EVENTS.c.id)
        )
        for subject, at, kind, payload in session.execute(stmt):
            busy = bool(payload.get("busy", kind == "resource.busy")) if isinstance(payload, dict) else False
            when = row_time(at)
            assert when is not None
            out[subject].append((when, busy))
    return out


def _measured_by_slurm(session: Session, rows: Sequence[ResourceRow], site: str) -> set[str]:
    """Resources whose pilot/backfill job Slurm's accounting already recorded (with real CPU time)."""
    own = {r.id: f"{site}:{record_kind(r.market)}:{r.id}" for r in rows if r.market in _KIND_BY_MARKET}
    ids = list(own)
    out: set[str] = set()
    t = USAGE.c
    for i in range(0, len(ids), QUERY_BATCH):
        stmt = select(t.resource_id, t.record_key).where(
            t.resource_id.in_(ids[i : i + QUERY_BATCH]), t.kind.in_(tuple(_KIND_BY_MARKET.values()))
        )
        for rid, key in session.execute(stmt):
            if key != own[rid]:  # our own key is this module's earlier output, not a measurement
                out.add(str(rid))
    return out


def _ran(session: Session, start: datetime, end: datetime, now: datetime) -> list[ResourceRow]:
    r = RESOURCES.c
    ran = and_(
        r.launched_at.is_not(None),
        r.launched_at < end,
        r.launched_at <= now,
        or_(r.released_at.is_(None), r.released_at > start),
    )
    return list(session.execute(select(ResourceRow).where(ran).order_by(r.id)).scalars())


def drop_superseded(
    session: Session, start: datetime, end: datetime, *, site: str, now: datetime
) -> list[str]:
    """Delete this module's earlier records of pilots and backfill jobs that Slurm's accounting has
    recorded since (a measured record replaces the estimate); returns the deleted record keys."""
    rows = [row for row in _ran(session, start, end, now) if row.market in _KIND_BY_MARKET]
    measured = _measured_by_slurm(session, rows, site)
    keys = sorted(f"{site}:{record_kind(row.market)}:{row.id}" for row in rows if row.id in measured)
    for i in range(0, len(keys), QUERY_BATCH):
        session.execute(USAGE.delete().where(USAGE.c.record_key.in_(keys[i : i + QUERY_BATCH])))
    session.commit()
    return keys


def _end_of(row: ResourceRow, now: datetime) -> tuple[datetime, str, bool]:
    """(when it stopped or `now`, status, still live)."""
    released = row_time(row.released_at)
    if released is not None:
        return released, "completed", False
    state = ResourceState(row.state)
    if state in _ENDED_STATES:  # stopped running when found failed or lost, release still pending
        since = row_time(row.state_since)
        assert since is not None
        return min(since, now), _ENDED_STATES[state], False
    return now, RUNNING, True


def usage_from_resources(
    session: Session,
    start: datetime,
    end: datetime,
    *,
    site: str,
    submit_host: str,
    offerings: Mapping[str, Offering],
    now: datetime,
    open_records: bool = False,
    image_for: Callable[[Offering], str | None] | None = None,
    include_measured: bool = False,
) -> list[UsageRecord]:
    """One record per resource that ran during [start, end), keyed "<site>:<kind>:<resource id>".

    Wall time is the whole run (launch → release, or `now` for a live unit): a job is accounted in
    the month it ends, and a VM's cloud record carries its total so far. `cpu_seconds` is an
    ESTIMATE: seconds the unit held at least one job (from `resource.busy` events) × its cores; the
    broker does not see the CPU time the jobs really used.

    A live resource is cut at `now` with status "running"; with `open_records`, a live VM instead
    gets no end time and status "started", which is how APEL cloud records report a running VM
    (`apel.cloud_values` derives "completed" from an end time, so publishing needs open VMs).
    Pilots and backfill are always cut: APEL job records must have ended. A failed or lost unit
    not yet released ends when it was found so. Resources that never launched produce no record.
    Pilots and backfill jobs that Slurm's accounting already recorded are skipped unless
    `include_measured` (their sacct record is measured, not estimated; counting both doubles them).
    """
    rows = _ran(session, start, end, now)
    skip = set() if include_measured else _measured_by_slurm(session, rows, site)
    events = _busy_events(session, [row.id for row in rows])
    records: list[UsageRecord] = []
    for row in rows:
        if row.id in skip:
            continue
        launched = row_time(row.launched_at)
        assert launched is not None
        stop, status, live = _end_of(row, now)
        if stop <= start or stop < launched:
            continue  # a failed/lost unit that stopped before the period
        records.append(
            _record(
                row,
                launched,
                stop,
                status,
                live,
                busy=busy_seconds(events.get(row.id, []), busy_now=row.busy, start=launched, stop=stop),
                site=site,
                submit_host=submit_host,
                offering=offerings.get(row.offering_id),
                open_records=open_records,
                image_for=image_for,
            )
        )
    return records


def _record(
    row: ResourceRow,
    launched: datetime,
    stop: datetime,
    status: str,
    live: bool,
    *,
    busy: float,
    site: str,
    submit_host: str,
    offering: Offering | None,
    open_records: bool,
    image_for: Callable[[Offering], str | None] | None,
) -> UsageRecord:
    kind = record_kind(row.market)
    cores = row.cores or (offering.cores if offering else 0)
    extra: dict[str, Any] = {}
    end_time: datetime | None = stop
    if kind == "vm":
        provider = offering.provider if offering else row.backend
        extra = {
            "cloud_type": provider,
            "cloud_image_id": image_for(offering) if image_for and offering else None,
            "infrastructure": f"provisioner:{provider}",
        }
        if live and open_records:
            end_time, status = None, STARTED
    else:
        extra = {
            "local_job_id": row.provider_id,
            "infrastructure": f"provisioner:{offering.provider if offering else row.backend}",
        }
    wall = int((stop - launched).total_seconds())
    return UsageRecord(
        record_key=f"{site}:{kind}:{row.id}",
        kind=kind,
        experiment=row.experiment or "",
        site=site,
        submit_host=submit_host,
        backend=row.backend,
        start_time=launched,
        end_time=end_time,
        wall_seconds=wall,
        cpu_seconds=int(min(busy, float(wall)) * cores),
        cores=cores,
        nodes=1,
        memory_kb=int(offering.memory_gb * 1024 * 1024) if offering else None,
        gpu_model=offering.gpu_model if offering and row.gpus else None,
        gpu_count=row.gpus,
        hs23_per_core=row.hs23_per_core or (offering.hs23_per_core if offering else None),
        resource_id=row.id,
        offering_id=row.offering_id,
        offering_family=offering.family if offering else None,
        market=row.market,
        status=status,
        **extra,
    )
