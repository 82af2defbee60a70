"""Usage records of the broker's own fleet: one per VM, HPC pilot or backfill job and per month it was billed in.

Slurm's accounting (backends/slurm/usage.py) measures the pilots and backfill jobs it ran; this
module covers everything the broker started, from the billing model (`accounting.billing`): each
unit's billable time, cut at month boundaries, with its busy/idle split. A unit alive across a month
end gives one record per month, each describing that month's part, so the months sum to its run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from accounting.billing import RESOURCES, UnitFacts, load_units, slices, usage
from accounting.period import Month
from accounting.usage import USAGE
from provisioner.domain import Market, Offering, ResourceState, UsageRecord
from provisioner.model import ResourceRow

__all__ = ["busy_seconds", "drop_superseded", "record_key", "record_kind", "usage_from_resources"]

CLOUD_MARKETS = frozenset({Market.ON_DEMAND, Market.SPOT})
_KIND_BY_MARKET = {Market.ALLOCATION: "pilot", Market.BACKFILL: "backfill"}
_MARKETS = frozenset(m.value for m in Market)
# APEL's Status for a VM still running (apel.cloud_values sends "started" when there is no end time).
STARTED = "started"
# Status of a record cut at `now` because its resource is still live.
RUNNING = "running"
# Status of a job record cut at a month end because the pilot ran on into the next month.
CONTINUED = "continued"
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


def record_key(site: str, market: str, resource_id: str, month: Month) -> str:
    """ "<site>:<kind>:<resource id>:<YYYY-MM>": one record per unit and month, stable across re-runs."""
    return f"{site}:{record_kind(market)}:{resource_id}:{month}"


def _own_prefix(site: str, market: str, resource_id: str) -> str:
    return f"{site}:{record_kind(market)}:{resource_id}"


def busy_seconds(
    events: Sequence[tuple[datetime, bool]], *, busy_now: bool, start: datetime, stop: datetime
) -> float:
    """Seconds in [start, stop) the unit held at least one job (the billing model's busy slices).

    Events are stored only when busy/idle changes, so before the first event the unit was in the
    opposite state; with no event at all it has been in its current state (`busy_now`) throughout.
    """
    unit = UnitFacts(
        resource_id="-", experiment=None, backend="-", offering_id="-", market="-", cores=0, gpus=0,
        hs23_per_core=0.0, price_micro_per_hour=0, charged_from=start, charged_until=stop,
        busy_changes=tuple(sorted(events, key=lambda e: e[0])), busy_now=busy_now,
    )  # fmt: skip
    return usage(slices(unit, start, stop, as_of=stop)).busy_seconds


def _measured_by_slurm(session: Session, rows: Sequence[ResourceRow], site: str) -> set[str]:
    """Resources whose pilot/backfill job Slurm's accounting already recorded (with real CPU time)."""
    own = {r.id: _own_prefix(site, r.market, r.id) for r in rows if r.market in _KIND_BY_MARKET}
    ids = list(own)
    out: set[str] = set()
    t = USAGE.c
    for i in range(0, len(ids), QUERY_BATCH):
        stmt = select(t.resource_id, t.record_key).where(
            t.resource_id.in_(ids[i : i + QUERY_BATCH]), t.kind.in_(tuple(_KIND_BY_MARKET.values()))
        )
        for rid, key in session.execute(stmt):
            if not str(key).startswith(own[rid]):  # our own keys are this module's output, not measurements
                out.add(str(rid))
    return out


def _ran(session: Session, start: datetime, end: datetime, now: datetime) -> list[ResourceRow]:
    ids = [u.resource_id for u in load_units(session, start, end, as_of=now)]
    out: list[ResourceRow] = []
    for i in range(0, len(ids), QUERY_BATCH):
        stmt = select(ResourceRow).where(RESOURCES.c.id.in_(ids[i : i + QUERY_BATCH]))
        out.extend(session.execute(stmt).scalars())
    return sorted(out, key=lambda r: r.id)


def drop_superseded(
    session: Session, start: datetime, end: datetime, *, site: str, now: datetime
) -> list[str]:
    """Delete this module's earlier records that no longer apply; returns the deleted record keys:
    estimates of pilots and backfill jobs Slurm's accounting has measured since (a measured record
    replaces the estimate), and records of the older one-per-unit key ("<site>:<kind>:<id>", which
    counted a unit alive at month close in both months)."""
    rows = _ran(session, start, end, now)
    jobs = [row for row in rows if row.market in _KIND_BY_MARKET]
    measured = _measured_by_slurm(session, jobs, site)
    legacy = {_own_prefix(site, row.market, row.id) for row in rows}
    keys: set[str] = set()
    for i in range(0, len(rows), QUERY_BATCH):
        chunk = rows[i : i + QUERY_BATCH]
        stmt = select(USAGE.c.record_key, USAGE.c.resource_id).where(
            USAGE.c.resource_id.in_([r.id for r in chunk])
        )
        market = {r.id: r.market for r in chunk}
        for key, rid in session.execute(stmt):
            prefix = _own_prefix(site, market[str(rid)], str(rid))
            if key in legacy or (rid in measured and str(key).startswith(prefix + ":")):
                keys.add(str(key))
    ordered = sorted(keys)
    for i in range(0, len(ordered), QUERY_BATCH):
        session.execute(USAGE.delete().where(USAGE.c.record_key.in_(ordered[i : i + QUERY_BATCH])))
    session.commit()
    return ordered


def _status(row: ResourceRow, unit: UnitFacts, now: datetime) -> tuple[str, bool]:
    """(status of the unit's last part, still live)."""
    state = ResourceState(row.state) if row.state in {str(s) for s in ResourceState} else None
    if state in _ENDED_STATES and row.released_at is None:
        return _ENDED_STATES[state], False
    if unit.charged_until is not None or (unit.span(now) or (now, now))[1] < now:
        return "completed", False
    return RUNNING, True


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
    """One record per unit and month it was billed in during [start, end), keyed by `record_key`.

    Each record describes its month's part of the unit's billable time (billing model): wall time
    is that part; `cpu_seconds` is None — unknown: the broker does not see the CPU time the jobs
    used (Slurm's sacct TotalCPU replaces a pilot's record when it has one). A part that goes on into the next month ends at the
    month's last second: a pilot's record there has status "continued"; a VM's has no end time and
    status "started", so the APEL server files it under that month (it keys cloud records by VM and
    month). The part of a live unit in the month of `now` is cut at `now` with status "running";
    with `open_records`, a live VM instead gets no end time and status "started". A unit never
    billed (never launched) gives no record. Pilots and backfill jobs that Slurm's accounting
    already recorded are skipped unless `include_measured` (counting both doubles them).
    """
    units = {u.resource_id: u for u in load_units(session, start, end, as_of=now)}
    rows = _ran(session, start, end, now)
    skip = set() if include_measured else _measured_by_slurm(session, rows, site)
    records: list[UsageRecord] = []
    for row in rows:
        unit = units.get(row.id)
        if row.id in skip or unit is None:
            continue
        span = unit.span(now)
        if span is None:
            continue
        status, live = _status(row, unit, now)
        month = Month.of(max(span[0], start))
        while month.start < min(span[1], end):
            pieces = slices(unit, month.start, month.end, as_of=now)
            if pieces:
                last = span[1] <= month.end
                records.append(
                    _record(
                        row,
                        unit,
                        month,
                        pieces[0].start,
                        pieces[-1].end,
                        status if last else CONTINUED,
                        live and last,
                        site=site,
                        submit_host=submit_host,
                        offering=offerings.get(row.offering_id),
                        open_records=open_records,
                        image_for=image_for,
                    )
                )
            month = month.next()
    return records


def _record(
    row: ResourceRow,
    unit: UnitFacts,
    month: Month,
    part_start: datetime,
    part_end: datetime,
    status: str,
    live: bool,
    *,
    site: str,
    submit_host: str,
    offering: Offering | None,
    open_records: bool,
    image_for: Callable[[Offering], str | None] | None,
) -> UsageRecord:
    kind = record_kind(row.market)
    cores = row.cores or (offering.cores if offering else 0)
    extra: dict[str, Any] = {}
    end_time: datetime | None = part_end
    if kind == "vm":
        provider = offering.provider if offering else row.backend
        extra = {
            "cloud_type": provider,
            "cloud_image_id": image_for(offering) if image_for and offering else None,
            "infrastructure": f"provisioner:{provider}",
        }
        if (live and open_records) or status == CONTINUED:
            end_time, status = None, STARTED  # the server files it under its start (this month)
    else:
        extra = {
            "local_job_id": row.provider_id,
            "infrastructure": f"provisioner:{offering.provider if offering else row.backend}",
        }
        if status == CONTINUED:  # APEL files a job under the month of its end time: keep it in this one
            end_time = min(part_end, month.end - timedelta(seconds=1))
    wall = int((part_end - part_start).total_seconds())
    return UsageRecord(
        record_key=record_key(site, row.market, row.id, month),
        kind=kind,
        experiment=row.experiment or "",
        site=site,
        submit_host=submit_host,
        backend=row.backend,
        start_time=part_start,
        end_time=end_time,
        wall_seconds=wall,
        cpu_seconds=None,  # the broker does not see the CPU time the jobs used: unknown, not estimated
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
