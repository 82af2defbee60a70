"""Closing a month's accounting in one go: fleet usage → import → cost ledger → APEL queue → finance report.

A thin orchestration of the accounting steps; every rule lives in the step's own module. Each
step is idempotent, so running the pipeline again for the same month and `now` gives the same
ledger totals and queues byte-identical APEL messages (the server replaces what it holds).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from accounting.egress import egress_samples
from accounting.fleet_usage import drop_superseded, usage_from_resources
from accounting.ledger import EgressUsage, LedgerBuild, LedgerTotal, build_ledger, ledger_totals
from accounting.period import Month
from accounting.publish import DEFAULT_KINDS, FutureMonth, Kind, PublishReport, publish_month
from accounting.reports import CostReport, cost_report, write_csv
from accounting.spot_prices import StoredSpotPrices
from accounting.usage import UsageProblem, import_records
from accounting.usage_store import UsageStore
from policies import Policy, site_offerings
from provisioner.domain import EgressTier, Offering


@dataclass(slots=True)
class PipelineReport:
    """What one run did: usage collected and imported, ledger built, messages queued, files written."""

    month: Month
    site: str
    collected: int  # usage records made from the resources table
    imported: int  # of those, stored (the others are in `problems`)
    problems: list[UsageProblem]  # records not imported, each naming its resource and field
    left_out: list[UsageProblem]  # stored usage of the month the publish left out
    superseded: list[str]  # earlier estimated records deleted: Slurm has measured those pilots since
    ledger: LedgerBuild
    by_experiment: list[LedgerTotal]  # ledger totals of the month per experiment
    publish: PublishReport
    report: CostReport
    files: list[Path] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(r.messages for r in self.publish.results)


def close_month(
    session: Session,
    month: Month,
    *,
    site: str,
    submit_host: str,
    offerings: Mapping[str, Offering],
    queue_path: Path,
    out_dir: Path,
    now: datetime,
    budgets: Mapping[str, Decimal] | None = None,
    allocations_granted: Mapping[str, float] | None = None,
    known_vos: Collection[str] | None = None,
    egress: Sequence[EgressUsage] | None = None,
    egress_tiers: Mapping[str, Sequence[EgressTier]] | None = None,
    egress_used_before_gb: Mapping[str, float] | None = None,
    list_prices: Mapping[str, Decimal] | None = None,
    kinds: Sequence[Kind] = DEFAULT_KINDS,
    image_for: Callable[[Offering], str | None] | None = None,
    html: bool = True,
    store: UsageStore | None = None,
) -> PipelineReport:
    """Account `month` as of `now`: usage of the broker's own resources, the cost ledger, the APEL
    messages (queued in `queue_path` for SSM) and the cost report (CSV, and HTML with charts).
    `store`: the columnar store of imported usage files, whose jobs the APEL summaries must include
    (a summary replaces the server's month: leaving them out would erase them there).

    Running VMs are recorded open ("started"), as APEL cloud records report them; live pilots and
    backfill jobs are cut at `now`. Raises `publish.FutureMonth` for a month that has not begun.
    """
    if month.start > now:  # refuse before writing anything, not half-way at the publish step
        raise FutureMonth(month)
    records = usage_from_resources(
        session,
        month.start,
        month.end,
        site=site,
        submit_host=submit_host,
        offerings=offerings,
        now=now,
        open_records=True,
        image_for=image_for,
    )
    superseded = drop_superseded(session, month.start, month.end, site=site, now=now)
    imported = import_records(session, records, known_vos=known_vos, now=now)
    ledger = build_ledger(
        session,
        month.start,
        month.end,
        offerings=offerings,
        list_prices=list_prices,
        egress=egress_samples(session, month.start, month.end, offerings) if egress is None else egress,
        egress_tiers={o.location: o.egress_tiers for o in offerings.values() if o.egress_tiers}
        if egress_tiers is None
        else egress_tiers,
        egress_used_before_gb=egress_used_before_gb,
        now=now,
        prices=StoredSpotPrices(session),
    )
    published = publish_month(session, month, queue_path, site=site, kinds=kinds, now=now, store=store)
    report = cost_report(
        session,
        month,
        budgets=budgets,
        allocations_granted=allocations_granted,
        offerings=offerings,
        now=now,
    )
    files = write_csv(report, out_dir)
    if html:
        from accounting.report_html import write_html  # matplotlib only when asked for

        files.append(write_html(report, out_dir))
    return PipelineReport(
        month=month,
        site=site,
        collected=len(records),
        imported=imported.imported,
        problems=imported.problems,
        left_out=published.problems,
        superseded=superseded,
        ledger=ledger,
        by_experiment=ledger_totals(session, month.start, month.end, ["experiment"]),
        publish=published,
        report=report,
        files=files,
    )


def monthly_budgets(policy: Policy) -> dict[str, Decimal]:
    """Each experiment's monthly budget from the policy (experiments without one are left out)."""
    return {
        name: e.budgets.monthly for name, e in policy.experiments.items() if e.budgets.monthly is not None
    }


# ---- the running broker's view (structural, so accounting does not import the engine) ----------


class _Clock(Protocol):
    def now(self) -> datetime: ...


class _Settings(Protocol):
    @property
    def broker_id(self) -> str: ...


class BrokerParts(Protocol):
    """What the pipeline reads from a `provisioner.broker.Broker`."""

    @property
    def db(self) -> Engine: ...
    @property
    def offerings(self) -> Mapping[str, Offering]: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def clock(self) -> _Clock: ...
    @property
    def settings(self) -> _Settings: ...


def close_broker_month(
    broker: BrokerParts,
    month: Month,
    *,
    queue_path: Path,
    out_dir: Path,
    site: str | None = None,
    submit_host: str | None = None,
    now: datetime | None = None,
    html: bool = True,
    store: UsageStore | None = None,
) -> PipelineReport:
    """`close_month` on a broker's database with its offerings and its policy's budgets and VOs.

    Allocation grants come with the offerings (each allocation offering carries its grant). The
    policy's allocations are all included, expired ones too: the broker stops offering an allocation
    when it ends, but its pilots still need their shape (GPU model, memory) to be accounted.
    `site` and `submit_host` default to the broker's id.
    """
    offerings = {o.id: o for o in site_offerings(broker.policy)} | dict(broker.offerings)
    with Session(broker.db, expire_on_commit=False) as session:
        return close_month(
            session,
            month,
            site=site or broker.settings.broker_id,
            submit_host=submit_host or broker.settings.broker_id,
            offerings=offerings,
            queue_path=queue_path,
            out_dir=out_dir,
            now=now or broker.clock.now(),
            budgets=monthly_budgets(broker.policy),
            known_vos=set(broker.policy.experiments),
            html=html,
            store=store,
        )


def demo_accounting(broker: BrokerParts, month: Month | str, out_dir: Path) -> PipelineReport:
    """The demo's last step: account `month` as of the broker's (simulated) clock into `out_dir`
    (APEL queue in `out_dir/apel-outgoing`, reports beside it)."""
    chosen = Month.parse(month) if isinstance(month, str) else month
    return close_broker_month(broker, chosen, queue_path=out_dir / "apel-outgoing", out_dir=out_dir)
