"""CLI commands `provisioner accounting import|ledger|publish|show|collect|invoice import` and
`provisioner report cost|reconcile`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import Session

from accounting.egress import egress_samples
from accounting.invoice import InvoiceFormat
from accounting.ledger import build_ledger
from accounting.period import BadMonth, Month
from accounting.publish import DEFAULT_KINDS, FutureMonth, Kind, build_messages, publish_month
from accounting.reports import cost_report, print_report, write_csv
from accounting.spot_prices import StoredSpotPrices, collect_spot_prices
from accounting.usage import stored_problems
from accounting.usage_file import UsageFileError, import_usage_file
from accounting.usage_store import UsageStore
from backends.base import BackendError
from provisioner.clock import SystemClock
from provisioner.db import open_database
from provisioner.domain import Offering
from provisioner.settings import load_settings

if TYPE_CHECKING:
    from provisioner.broker import Broker

console = Console()
err = Console(stderr=True)


class ReportFormat(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    HTML = "html"


def _month(text: str) -> Month:
    try:
        return Month.parse(text)
    except BadMonth as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from exc


def _as_of(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--as-of") from None
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no timezone (give UTC, e.g. ...Z)", param_hint="--as-of")
    return parsed.astimezone(UTC)


def _fetch_spot_prices(broker: Broker, month: Month) -> None:
    """Store the spot price history of every backend that has one (EC2); a failure is reported and
    the recorded prices stay in use."""
    import asyncio

    with Session(broker.db, expire_on_commit=False) as session:
        for name, backend in sorted(broker.backends.items()):
            fetch = getattr(backend, "spot_price_history", None)
            if fetch is None:
                continue
            try:
                stored = asyncio.run(collect_spot_prices(session, name, fetch, month.start, month.end))
            except BackendError as exc:
                err.print(f"[yellow]spot prices unavailable[/yellow] {name}: {exc}")
                continue
            console.print(f"{name}: {stored} spot price points for {month}")


def _session() -> Session:
    engine = open_database(load_settings().resolved_database_url())
    return Session(engine, expire_on_commit=False)


def _store() -> UsageStore:
    return UsageStore(load_settings().resolved_usage_dir())


def _policy_figures(
    policy_file: Path | None, today: date
) -> tuple[dict[str, Decimal], dict[str, Offering]]:
    """Monthly budgets and allocation offerings from a policy file, if the policies package can read it."""
    if policy_file is None:
        return {}, {}
    try:
        from policies.load import load_policy
        from policies.site import site_offerings
    except ImportError as exc:  # the policy engine is optional for reports
        raise typer.BadParameter(f"cannot read policy files here: {exc}", param_hint="--budgets") from exc
    # a policy's relative dates ("today-83d") are read on the report's as-of day, so its allocations'
    # periods and burn plans are those of that day
    policy = load_policy(policy_file, today=today)
    budgets = {
        name: e.budgets.monthly for name, e in policy.experiments.items() if e.budgets.monthly is not None
    }
    offerings = {o.id: o for o in site_offerings(policy)}
    return budgets, offerings


def _catalog_offerings() -> Mapping[str, Offering]:
    try:
        from provisioner.catalog import CatalogError, load_catalog
    except ImportError:
        return {}
    try:
        return {o.id: o for o in load_catalog()}
    except CatalogError:
        return {}


def register(root: typer.Typer) -> None:
    acct = typer.Typer(help="Usage records, the cost ledger and APEL accounting.", no_args_is_help=True)
    report = typer.Typer(help="Finance reports.", no_args_is_help=True)
    invoice = typer.Typer(help="Provider invoices (AWS CUR, GCP billing export).", no_args_is_help=True)
    acct.add_typer(invoice, name="invoice")

    @acct.command("import")
    def import_cmd(
        file: Path = typer.Argument(
            ..., exists=True, dir_okay=False, help="usage records: JSON lines, a JSON array, CSV or Parquet"
        ),
        known_vo: list[str] = typer.Option(None, "--known-vo", help="accepted VOs (repeat); default: any"),
    ) -> None:
        """Check usage records and store them (idempotent: keyed by record_key); refuse bad ones one by one.

        Streams the file through DuckDB: batch-job records go to the columnar usage store (millions
        a minute), VM records to the database. Exits 1 when any record was refused.
        """
        with _session() as session:
            try:
                result = import_usage_file(
                    session, _store(), file, known_vos=set(known_vo) if known_vo else None
                )
            except UsageFileError as exc:
                raise typer.BadParameter(str(exc), param_hint="FILE") from exc
        console.print(
            f"imported {result.imported} usage records of {result.read} "
            f"({result.stored} batch-job records to the usage store, {result.vms} VM records to the database; "
            f"{result.replaced} earlier records replaced, {result.repeated} repeated keys in the file)"
        )
        for problem in result.problems:
            err.print(f"[yellow]not imported[/yellow] {escape(str(problem))}")
        if result.refused > len(result.problems):
            err.print(f"[yellow]not imported[/yellow] … and {result.refused - len(result.problems)} more records")
        if result.refused:
            raise typer.Exit(code=1)

    @acct.command("ledger")
    def ledger_cmd(month: str = typer.Option(..., help="YYYY-MM (UTC)")) -> None:
        """(Re)build the cost ledger of a month from the resources table and the measured egress."""
        m = _month(month)
        offerings = _catalog_offerings()
        with _session() as session:
            built = build_ledger(
                session,
                m.start,
                m.end,
                offerings=offerings,
                prices=StoredSpotPrices(session),
                # Without the samples the month's egress would never be priced by this command.
                egress=egress_samples(session, m.start, m.end, offerings),
                egress_tiers={o.location: o.egress_tiers for o in offerings.values() if o.egress_tiers},
            )
        console.print(
            f"ledger {m}: {built.rows} rows for {built.resources} resources, {built.egress_rows} egress rows"
        )

    @acct.command("spot-prices")
    def spot_prices_cmd(month: str = typer.Option(..., help="YYYY-MM (UTC)")) -> None:
        """Fetch the spot price history of what the fleet ran in a month (EC2), so the ledger bills each
        interval at the price in force in the zone used (`collect` does this first by itself)."""
        from provisioner.broker import build_broker

        broker = build_broker(load_settings())
        try:
            _fetch_spot_prices(broker, _month(month))
        finally:
            broker.db.dispose()

    @acct.command("publish")
    def publish_cmd(
        month: str = typer.Option(..., help="YYYY-MM (UTC)"),
        site: str | None = typer.Option(None, help="only this site's usage"),
        queue: Path | None = typer.Option(None, help="dirq outgoing directory SSM reads"),
        kind: list[Kind] = typer.Option(list(DEFAULT_KINDS), help="message kinds (repeat)"),
    ) -> None:
        """Queue the month's APEL messages for SSM (full-month totals: publishing again is safe)."""
        m = _month(month)
        path = queue or load_settings().state_dir / "apel" / "outgoing"
        with _session() as session:
            try:
                result = publish_month(session, m, path, site=site, kinds=kind, store=_store())
            except FutureMonth as exc:
                raise typer.BadParameter(str(exc), param_hint="--month") from exc
        table = Table(title=f"APEL publish {m} → {path}")
        for col in ("kind", "records", "messages", "changed", "sha256"):
            table.add_column(col)
        for r in result.results:
            table.add_row(
                r.kind.value, str(r.records), str(r.messages), "yes" if r.changed else "no", r.sha256[:12]
            )
        console.print(table)
        for problem in result.problems:
            err.print(f"[yellow]left out[/yellow] {escape(str(problem))}")
        for duplicate in result.duplicates:
            err.print(f"[red]duplicate[/red] {escape(str(duplicate))}")

    @acct.command("show")
    def show_cmd(
        month: str = typer.Option(..., help="YYYY-MM (UTC)"),
        site: str | None = typer.Option(None),
        kind: Kind = typer.Option(Kind.SUMMARY, help="which message to print"),
    ) -> None:
        """Print the messages a publish would send, and the usage left out."""
        m = _month(month)
        with _session() as session:
            records, messages = build_messages(session, m, kind, site=site, store=_store())
            problems = stored_problems(session, m.start, m.end, site=site)
        for message in messages:
            typer.echo(message, nl=False)  # verbatim: no wrapping or markup
        err.print(f"{records} records in {len(messages)} messages")
        for problem in problems:
            err.print(f"[yellow]left out[/yellow] {escape(str(problem))}")

    @acct.command("collect")
    def collect_cmd(
        month: str = typer.Option(..., help="YYYY-MM (UTC)"),
        site: str | None = typer.Option(None, help="APEL site name; default: the broker id"),
        submit_host: str | None = typer.Option(None, help="APEL SubmitHost; default: the broker id"),
        queue: Path | None = typer.Option(None, help="dirq outgoing directory SSM reads"),
        out: Path = typer.Option(Path("reports"), help="directory for the CSV / HTML cost report"),
        html: bool = typer.Option(True, help="also write the HTML page with charts"),
    ) -> None:
        """Close a month: spot price history, usage of the broker's resources, cost ledger, APEL
        messages, cost report.

        Exits 1 when some usage could not be imported (each problem is printed with its resource).
        """
        from accounting.pipeline import close_broker_month
        from provisioner.broker import build_broker

        m = _month(month)
        settings = load_settings()
        broker = build_broker(settings)
        path = queue or settings.state_dir / "apel" / "outgoing"
        try:
            _fetch_spot_prices(broker, m)
            result = close_broker_month(
                broker,
                m,
                queue_path=path,
                out_dir=out,
                site=site,
                submit_host=submit_host,
                html=html,
                store=UsageStore(settings.resolved_usage_dir()),
            )
        except FutureMonth as exc:
            raise typer.BadParameter(str(exc), param_hint="--month") from exc
        finally:
            broker.db.dispose()
        console.print(
            f"[bold]{m}[/bold] site {result.site}: {result.collected} usage records from the fleet, "
            f"{result.imported} imported; ledger {result.ledger.rows} rows for {result.ledger.resources} "
            f"resources; {result.messages} APEL messages queued in {path}"
        )
        for problem in result.problems:
            err.print(f"[yellow]not imported[/yellow] {escape(str(problem))}")
        for key in result.superseded:
            console.print(f"[dim]replaced by Slurm's measured record[/dim] {key}")
        for problem in result.left_out:
            err.print(f"[yellow]left out of APEL[/yellow] {escape(str(problem))}")
        for duplicate in result.publish.duplicates:
            err.print(f"[red]duplicate[/red] {escape(str(duplicate))}")
        totals = Table(title=f"Ledger {m} by experiment")
        for col in ("experiment", "spend", "list value", "HS23-h"):
            totals.add_column(col, justify="left" if col == "experiment" else "right")
        for t in result.by_experiment:
            totals.add_row(t.key[0], f"${t.amount:,.2f}", f"${t.list_amount:,.2f}", f"{t.hs23_hours:,.0f}")
        console.print(totals)
        sent = Table(title="APEL messages")
        for col in ("kind", "records", "messages", "changed"):
            sent.add_column(col)
        for r in result.publish.results:
            sent.add_row(r.kind.value, str(r.records), str(r.messages), "yes" if r.changed else "no")
        console.print(sent)
        for file in result.files:
            console.print(str(file))
        if result.problems:
            raise typer.Exit(code=1)

    @invoice.command("import")
    def invoice_import_cmd(
        file: Path = typer.Argument(
            ..., exists=True, dir_okay=False, help="AWS CUR 2.0 (CSV, CSV.gz, Parquet) or GCP billing export (JSON lines, CSV)"
        ),
        fmt: InvoiceFormat | None = typer.Option(None, "--format", help="default: from the columns"),
    ) -> None:
        """Store a provider invoice's lines (idempotent) to reconcile with the ledger; bad lines refused one by one."""
        from accounting.invoice import InvoiceFileError, parse_invoice
        from accounting.reconcile import store_lines

        try:
            parsed = parse_invoice(file, fmt)
        except InvoiceFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="FILE") from exc
        with _session() as session:
            stored = store_lines(session, parsed.lines, file.name)
        console.print(
            f"{parsed.format}: stored {stored.lines} invoice lines for {', '.join(stored.months) or 'no month'}"
        )
        for problem in parsed.problems:
            err.print(f"[yellow]refused[/yellow] {escape(str(problem))}")
        if parsed.problems:
            raise typer.Exit(code=1)

    @report.command("reconcile")
    def reconcile_cmd(
        month: str = typer.Option(..., help="YYYY-MM (UTC)"),
        fmt: ReportFormat = typer.Option(ReportFormat.TABLE, "--format", help="table or csv"),
        out: Path = typer.Option(Path("reports"), help="directory for CSV output"),
        resources: int = typer.Option(20, min=0, help="resources shown in the table (largest differences)"),
    ) -> None:
        """Estimated (ledger) vs invoiced per resource, experiment and backend; other invoice lines apart."""
        from accounting.reconcile import reconcile
        from accounting.reconcile_report import print_reconciliation, write_reconciliation_csv

        m = _month(month)
        with _session() as session:
            rec = reconcile(session, m)
        if fmt is ReportFormat.CSV:
            for path in write_reconciliation_csv(rec, out):
                console.print(str(path))
        elif fmt is ReportFormat.TABLE:
            print_reconciliation(rec, console, resources=resources)
        else:
            raise typer.BadParameter("reconcile writes table or csv", param_hint="--format")

    @report.command("cost")
    def cost_cmd(
        month: str = typer.Option(..., help="YYYY-MM (UTC)"),
        experiment: str | None = typer.Option(None),
        fmt: ReportFormat = typer.Option(ReportFormat.TABLE, "--format"),
        out: Path = typer.Option(Path("reports"), help="directory for CSV / HTML output"),
        budgets: Path | None = typer.Option(
            None, exists=True, dir_okay=False, help="policy file with budgets"
        ),
        burn_days: int = typer.Option(7, min=1, help="forecast: mean daily spend of the last N full days"),
        as_of: str | None = typer.Option(
            None,
            "--as-of",
            help="report as of this UTC time (ISO 8601, e.g. 2026-11-30T12:00Z); default: now, or the "
            "month's end for a past month",
        ),
    ) -> None:
        """Spend by experiment, backend, offering family and month against budget, with a forecast.

        Every figure is computed as of one time, printed in the title: spend, allocations' node-hours
        (settled, in flight, committed, left) and the forecast with the burn running units commit.
        """
        m = _month(month)
        when = _as_of(as_of) if as_of is not None else SystemClock().now()
        monthly, offerings = _policy_figures(budgets, when.date())
        with _session() as session:
            result = cost_report(
                session,
                m,
                experiment=experiment,
                budgets=monthly,
                offerings=offerings,
                burn_days=burn_days,
                now=when,
            )
        if fmt is ReportFormat.TABLE:
            print_report(result, console)
        elif fmt is ReportFormat.CSV:
            for path in write_csv(result, out):
                console.print(str(path))
        else:
            from accounting.report_html import write_html  # matplotlib only when asked for

            write_csv(result, out)
            console.print(str(write_html(result, out)))

    root.add_typer(acct, name="accounting")
    root.add_typer(report, name="report")
