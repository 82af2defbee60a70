"""Publishing a month to APEL: build the month's messages from stored usage and queue them for SSM.

Summaries replace what the server holds for their key, so every publish sends the full month's
totals; what was sent is recorded (`PublishedSummaryRow`, a SHA-256 of the content) so a second
publish of an unchanged month is seen to write identical content.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Table, select
from sqlmodel import Session

from accounting import apel, billing, summaries
from accounting.dirq_queue import OutgoingQueue
from accounting.duplicates import SAME_JOB, Duplicate, same_job_other_key
from accounting.period import Month
from accounting.usage import USAGE, UsageProblem, row_to_record, stored_problems, valid_row_condition
from accounting.usage_store import UsageStore
from provisioner.domain import UsageRecord
from provisioner.model import PublishedSummaryRow, UsageRecordRow

PUBLISHED: Table = PublishedSummaryRow.__table__  # type: ignore[attr-defined]


class Kind(enum.StrEnum):
    SUMMARY = "summary"  # APEL-summary-job-message: v0.2
    NORMALISED = "normalised"  # APEL-summary-job-message: v0.3
    SYNC = "sync"  # APEL-sync-message: v0.1
    JOBS = "jobs"  # APEL-individual-job-message: v0.3
    CLOUD = "cloud"  # APEL-cloud-message: v0.4
    CLOUD_SUMMARY = "cloud_summary"  # APEL-cloud-summary-message: v0.4
    # EXPERIMENTAL: APEL-accelerator-message v0.1 (JSON), a proposal; released APEL servers (2.5.0)
    # refuse its header, so it is sent only when asked for (`--kind accelerator`).
    ACCELERATOR = "accelerator"


# A site sends either plain or normalised summaries, not both (they would count the month twice).
# The accelerator record is experimental and not sent by default (see Kind.ACCELERATOR).
DEFAULT_KINDS = (Kind.SUMMARY, Kind.SYNC, Kind.CLOUD)
EXPERIMENTAL_KINDS = frozenset({Kind.ACCELERATOR})


class FutureMonth(ValueError):
    def __init__(self, month: Month) -> None:
        super().__init__(f"month {month}: is in the future (APEL rejects it)")
        self.month = month


@dataclass(frozen=True, slots=True)
class KindResult:
    kind: Kind
    records: int
    messages: int
    sha256: str
    changed: bool  # content differs from the last publish of this month and kind


@dataclass(slots=True)
class PublishReport:
    month: Month
    results: list[KindResult] = field(default_factory=list)
    problems: list[UsageProblem] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # dirq element names
    # the same job stored under two record keys: the second copy is left out of every message (the
    # first is sent once); both sources are reported here so the source can be fixed
    duplicates: list[Duplicate] = field(default_factory=list)


def _merged_syncs(counts: Sequence[apel.SyncCount], month: Month) -> list[apel.SyncCount]:
    """Sync counts of the database and of the store, added up per (site, submit host)."""
    jobs: dict[tuple[str, str | None], int] = {}
    for c in counts:
        jobs[(c.site, c.submit_host)] = jobs.get((c.site, c.submit_host), 0) + c.jobs
    keys = sorted(jobs, key=lambda k: (k[0], k[1] or ""))
    return [apel.SyncCount(s, h, month.year, month.month, jobs[(s, h)]) for s, h in keys]


def build_messages(
    session: Session,
    month: Month,
    kind: Kind,
    *,
    site: str | None = None,
    store: UsageStore | None = None,
    excluded: Collection[str] | None = None,
) -> tuple[int, list[str]]:
    """(number of records, messages) of one kind for one month, from the stored usage: the
    database's and, for batch jobs, the columnar store's (`accounting import` of usage files).

    `excluded`: record keys left out (default: the second copy of each job stored under two keys,
    `second_copies`), so a duplicated job is sent once.
    """
    if excluded is None:
        excluded = second_copies(month_duplicates(session, month, site=site, store=store))
    if kind in (Kind.SUMMARY, Kind.NORMALISED):
        groups = summaries.job_groups(session, month, site=site, excluded=excluded)
        if store is not None:
            groups += store.job_groups(month, site=site, excluded=excluded)
        if kind is Kind.SUMMARY:
            plain = apel.summaries_from_groups(groups, month.year, month.month)
            return len(plain), apel.summary_messages(plain)
        normalised = apel.normalised_from_groups(groups, month.year, month.month)
        return len(normalised), apel.normalised_messages(normalised)
    if kind is Kind.SYNC:
        counts = summaries.sync_counts(session, month, site=site, excluded=excluded)
        if store is not None:
            counts = _merged_syncs([*counts, *store.sync_counts(month, site=site, excluded=excluded)], month)
        return len(counts), apel.sync_messages(counts)
    if kind is Kind.CLOUD_SUMMARY:
        cloud = summaries.cloud_summaries(session, month, site=site, excluded=excluded)
        return len(cloud), apel.cloud_summary_messages(cloud)
    t = USAGE.c
    jobs_of_month = (
        t.kind.in_(summaries.JOB_KINDS),
        t.end_time >= month.start,
        t.end_time < month.end,
        valid_row_condition(),
        *([t.site == site] if site else []),
        *([t.record_key.not_in(sorted(excluded))] if excluded else []),
    )
    if kind is Kind.JOBS:
        stmt = select(UsageRecordRow).where(*jobs_of_month)
        jobs = [row_to_record(r) for r in session.execute(stmt.order_by(t.record_key)).scalars()]
        if store is not None:
            jobs = sorted(
                [*jobs, *store.job_records(month, site=site, excluded=excluded)], key=lambda r: r.record_key
            )
        return len(jobs), apel.job_messages(jobs)
    stmt = select(UsageRecordRow).where(*summaries.vm_condition(month, site, excluded)).order_by(t.record_key)
    vms = [row_to_record(r) for r in session.execute(stmt).scalars()]
    if kind is Kind.CLOUD:
        return len(vms), apel.cloud_messages(vms)
    # GPUs held by VMs (cloud records) and by HPC pilots and other jobs (job records) of the month.
    gpu_jobs = select(UsageRecordRow).where(*jobs_of_month, t.gpu_count > 0, t.gpu_model.is_not(None))
    jobs = [row_to_record(r) for r in session.execute(gpu_jobs.order_by(t.record_key)).scalars()]
    with_gpus = [v for v in vms if v.gpu_count > 0 and v.gpu_model] + jobs
    active = gpu_active_seconds(session, with_gpus)
    return len(with_gpus), apel.accelerator_messages(with_gpus, month.year, month.month, active)


def gpu_active_seconds(session: Session, records: Sequence[UsageRecord]) -> dict[str, int | None]:
    """Record key → seconds a job ran on the record's unit (VM, pilot, backfill) over the record's
    time, [start, start + wall): the billing model's busy time. None when the unit never reported
    whether it held work (unknown, not idle)."""
    units = [r for r in records if r.kind != "job" and r.resource_id]
    if not units:
        return {}
    lo = min(r.start_time for r in units)
    hi = max(r.start_time + timedelta(seconds=r.wall_seconds) for r in units)
    facts = {
        u.resource_id: u
        for u in billing.load_units(
            session, lo, hi, as_of=hi, resource_ids=[str(r.resource_id) for r in units]
        )
    }
    out: dict[str, int | None] = {}
    for r in units:
        unit = facts.get(str(r.resource_id))
        if unit is None or not (unit.busy_changes or unit.busy_now):
            out[r.record_key] = None
            continue
        end = r.start_time + timedelta(seconds=r.wall_seconds)
        busy = billing.usage(billing.slices(unit, r.start_time, end, as_of=end)).busy_seconds
        out[r.record_key] = round(busy)
    return out


def second_copies(duplicates: Sequence[Duplicate]) -> frozenset[str]:
    """Record keys to leave out of the messages: the second copy of each job stored under two keys."""
    return frozenset(d.second_key for d in duplicates if d.problem == SAME_JOB)


def month_records(session: Session, month: Month, *, site: str | None = None) -> list[UsageRecord]:
    """The stored records a publish of `month` reads: jobs ending in it and its VM records."""
    t = USAGE.c
    jobs = select(UsageRecordRow).where(
        t.kind.in_(summaries.JOB_KINDS), t.end_time >= month.start, t.end_time < month.end,
        *([t.site == site] if site else []),
    )  # fmt: skip
    vms = select(UsageRecordRow).where(*summaries.vm_condition(month, site))
    rows = [*session.execute(jobs).scalars(), *session.execute(vms).scalars()]
    return [row_to_record(r) for r in rows]


def month_duplicates(
    session: Session, month: Month, *, site: str | None = None, store: UsageStore | None = None
) -> list[Duplicate]:
    """The same job stored under two record keys in `month`, in the database or the columnar store
    (imported usage files) or one in each, with both sources."""
    records = month_records(session, month, site=site)
    if store is not None:
        records = [*records, *store.same_job_candidates(month, site=site, others=records)]
    return same_job_other_key(records)


def content_hash(messages: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for message in messages:
        digest.update(message.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def publish_month(
    session: Session,
    month: Month,
    queue_path: Path | str,
    *,
    site: str | None = None,
    kinds: Sequence[Kind] = DEFAULT_KINDS,
    now: datetime | None = None,
    store: UsageStore | None = None,
) -> PublishReport:
    """Queue the month's messages for SSM and record what was sent.

    Bad stored usage in the month is left out of every message and listed in `problems`.
    """
    now = now or datetime.now(UTC)
    if month.start > now:
        raise FutureMonth(month)
    queue = OutgoingQueue(queue_path)
    report = PublishReport(month)
    report.problems = stored_problems(session, month.start, month.end, site=site)
    report.duplicates = month_duplicates(session, month, site=site, store=store)
    for kind in kinds:
        records, messages = build_messages(
            session, month, kind, site=site, store=store, excluded=second_copies(report.duplicates)
        )
        sha = content_hash(messages)
        key = kind.value if site is None else f"{kind.value}@{site}"
        row = session.execute(
            select(PublishedSummaryRow).where(PUBLISHED.c.month == str(month), PUBLISHED.c.kind == key)
        ).scalar_one_or_none()
        changed = row is None or row.sha256 != sha
        for message in messages:
            report.queued.append(queue.add(message))
        if row is None:
            row = PublishedSummaryRow(
                month=str(month),
                kind=key,
                sha256=sha,
                records=records,
                messages=len(messages),
                published_at=now,
            )
        else:
            row.sha256, row.records, row.messages, row.published_at = sha, records, len(messages), now
        session.add(row)
        session.commit()
        report.results.append(KindResult(kind, records, len(messages), sha, changed))
    return report
