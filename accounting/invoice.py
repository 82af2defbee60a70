"""Provider invoices read line by line: AWS Cost and Usage Report 2.0 and the GCP Cloud Billing export.

Each line becomes an `InvoiceLine` in US dollars (integer micros), with its usage interval, the
provider's resource id, its tags or labels (keys normalised: lower case, `_` for anything else, no
`user_` prefix, so AWS's `user_provisioner_resource` and GCE's `provisioner-resource` read alike)
and a category saying what was charged: compute, egress, storage, ip, nat, support, credit, tax,
other. A line that cannot be read is refused on its own, naming the line and the column.

Formats (the exports' own column names):
- AWS CUR 2.0, CSV (optionally gzip) or Parquet: `identity_line_item_id`, `identity_time_interval`,
  `line_item_line_item_type`, `line_item_usage_start_date`, `line_item_usage_end_date`,
  `line_item_product_code`, `line_item_usage_type`, `line_item_operation`, `line_item_resource_id`,
  `line_item_usage_amount`, `line_item_unblended_cost`, `line_item_currency_code`, `resource_tags`
  (a map in Parquet, JSON text in CSV).
- GCP billing export (the BigQuery table's columns), JSON lines with nested records, or CSV with
  dotted headers and the repeated fields as JSON text: `service.description`, `sku.description`,
  `usage_start_time`, `usage_end_time`, `cost`, `currency`, `cost_type`, `credits` (each becomes its
  own credit line), `labels`, `resource.name`, `resource.global_name`, `project.id`.
"""

from __future__ import annotations

import csv
import enum
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

MICRO = Decimal(1_000_000)


class InvoiceFormat(enum.StrEnum):
    AWS_CUR = "aws-cur"
    GCP_BILLING = "gcp-billing"


class InvoiceFileError(ValueError):
    """The file as a whole cannot be read as an invoice (unknown format, required columns missing)."""


@dataclass(frozen=True, slots=True)
class InvoiceProblem:
    line: int
    column: str
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.problem}"


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    source: InvoiceFormat
    line_key: str  # stable across re-imports of the same export
    line: int  # 1-based data line (or record) number in the file
    usage_start: datetime
    usage_end: datetime
    service: str
    usage_type: str
    line_type: str
    category: str
    amount_micro: int  # USD; credits negative
    currency: str = "USD"
    provider_resource: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    usage_amount: float | None = None
    account: str | None = None


@dataclass(slots=True)
class ParsedInvoice:
    format: InvoiceFormat
    lines: list[InvoiceLine] = field(default_factory=list)
    problems: list[InvoiceProblem] = field(default_factory=list)


_KEY = re.compile(r"[^a-z0-9]+")


def tag_key(key: str) -> str:
    """`user:Provisioner-Resource`, `user_provisioner_resource`, `provisioner-resource` → `provisioner_resource`."""
    k = _KEY.sub("_", key.strip().lower()).strip("_")
    return k.removeprefix("user_")


class _Bad(ValueError):
    def __init__(self, column: str, problem: str) -> None:
        super().__init__(problem)
        self.column = column
        self.problem = problem


def _time(row: Mapping[str, Any], column: str) -> datetime:
    value = row.get(column)
    if value is None or value == "":
        raise _Bad(column, "missing")
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    except ValueError as exc:
        raise _Bad(column, f"not a time: {text!r}") from exc
    if parsed.tzinfo is None:
        # Both exports write UTC; CUR 2.0 CSV writes "2026-10-01T00:00:00.000Z", Parquet naive UTC.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _money(row: Mapping[str, Any], column: str) -> int:
    value = row.get(column)
    if value is None or value == "":
        raise _Bad(column, "missing")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise _Bad(column, f"not a number: {value!r}") from exc
    if not amount.is_finite():
        raise _Bad(column, f"not a number: {value!r}")
    return int((amount * MICRO).to_integral_value())


def _number(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise _Bad(column, f"not a number: {value!r}") from exc


def _text(row: Mapping[str, Any], column: str, *, required: bool = False) -> str:
    value = row.get(column)
    if value is None or value == "":
        if required:
            raise _Bad(column, "missing")
        return ""
    return str(value)


def _json_value(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _Bad(column, f"not JSON: {value[:60]!r}") from exc
    return value


# ---- AWS CUR 2.0 -------------------------------------------------------------------------------

CUR_REQUIRED = (
    "line_item_line_item_type",
    "line_item_usage_start_date",
    "line_item_usage_end_date",
    "line_item_unblended_cost",
)


def cur_category(line_type: str, product: str, usage_type: str) -> str:
    """What a CUR line charged, from its line item type, product code and usage type."""
    if line_type in ("Credit", "Refund", "BundledDiscount", "SavingsPlanNegation", "EdpDiscount",
                     "PrivateRateDiscount", "Discount"):  # fmt: skip
        return "credit"
    if line_type == "Tax":
        return "tax"
    if product.startswith("AWSSupport") or product == "AWSDeveloperSupport":
        return "support"
    if "DataTransfer-Out-Bytes" in usage_type or "-AWS-Out-Bytes" in usage_type:
        return "egress"
    if "NatGateway" in usage_type:
        return "nat"
    if "PublicIPv4" in usage_type or "ElasticIP" in usage_type:
        return "ip"
    if "EBS:" in usage_type or product in ("AmazonS3", "AmazonEFS") or "TimedStorage" in usage_type:
        return "storage"
    if product == "AmazonEC2" and any(k in usage_type for k in ("BoxUsage", "SpotUsage", "DedicatedUsage")):
        return "compute"
    return "other"


def _cur_tags(row: Mapping[str, Any]) -> dict[str, str]:
    raw = _json_value(row, "resource_tags")
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        items: Any = raw.items()
    elif isinstance(raw, list):  # DuckDB hands a Parquet MAP as a list of {key, value}
        items = [(i.get("key"), i.get("value")) for i in raw if isinstance(i, Mapping)]
    elif raw is None:
        items = []
    else:
        raise _Bad("resource_tags", f"expected a map of tags, got {type(raw).__name__}")
    for k, v in items:
        if k is not None and v not in (None, ""):
            out[tag_key(str(k))] = str(v)
    # CUR 1.0-style flattened columns (resource_tags_user_<key>) are accepted too.
    for column, v in row.items():
        if column.startswith("resource_tags_") and v not in (None, ""):
            out[tag_key(column.removeprefix("resource_tags_"))] = str(v)
    return out


def _cur_line(row: Mapping[str, Any], number: int) -> InvoiceLine:
    start = _time(row, "line_item_usage_start_date")
    end = _time(row, "line_item_usage_end_date")
    if end < start:
        raise _Bad("line_item_usage_end_date", f"{end.isoformat()} before the start {start.isoformat()}")
    line_type = _text(row, "line_item_line_item_type", required=True)
    product = _text(row, "line_item_product_code")
    usage_type = _text(row, "line_item_usage_type")
    currency = _text(row, "line_item_currency_code") or "USD"
    if currency != "USD":
        raise _Bad("line_item_currency_code", f"{currency}: only USD invoices are reconciled")
    line_id = _text(row, "identity_line_item_id")
    interval = _text(row, "identity_time_interval")
    key = f"cur:{line_id}:{interval}" if line_id else "cur:" + _digest(row)
    return InvoiceLine(
        source=InvoiceFormat.AWS_CUR,
        line_key=key,
        line=number,
        usage_start=start,
        usage_end=end,
        service=product,
        usage_type=usage_type,
        line_type=line_type,
        category=cur_category(line_type, product, usage_type),
        amount_micro=_money(row, "line_item_unblended_cost"),
        currency=currency,
        provider_resource=_text(row, "line_item_resource_id") or None,
        tags=_cur_tags(row),
        usage_amount=_number(row, "line_item_usage_amount"),
        account=_text(row, "line_item_usage_account_id") or None,
    )


# ---- GCP Cloud Billing export ------------------------------------------------------------------

GCP_REQUIRED = ("usage_start_time", "usage_end_time", "cost")


def gcp_category(service: str, sku: str, cost_type: str) -> str:
    """What a GCP billing line charged, from its service, SKU description and cost type."""
    s, k = service.lower(), sku.lower()
    if cost_type == "tax":
        return "tax"
    if cost_type in ("adjustment", "rounding error"):
        return "other"
    if "support" in s:
        return "support"
    if "egress" in k or ("network" in k and "internet" in k):
        return "egress"
    if "nat" in k.split() or "cloud nat" in k:
        return "nat"
    if "ip charge" in k or "external ip" in k or "static ip" in k:
        return "ip"
    if "storage" in s or k.startswith("storage") or "pd capacity" in k or "snapshot" in k:
        return "storage"
    if s == "compute engine" and ("instance core" in k or "instance ram" in k or "gpu" in k):
        return "compute"
    return "other"


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested JSON records to dotted column names (`service.description`); lists stay values."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _gcp_labels(row: Mapping[str, Any]) -> dict[str, str]:
    raw = _json_value(row, "labels")
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        raw = [{"key": k, "value": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not all(isinstance(i, Mapping) and "key" in i for i in raw):
        raise _Bad("labels", "expected a list of {key, value}")
    return {tag_key(str(i["key"])): str(i.get("value", "")) for i in raw}


def _gcp_lines(row: Mapping[str, Any], number: int) -> list[InvoiceLine]:
    start = _time(row, "usage_start_time")
    end = _time(row, "usage_end_time")
    if end < start:
        raise _Bad("usage_end_time", f"{end.isoformat()} before the start {start.isoformat()}")
    service = _text(row, "service.description")
    sku = _text(row, "sku.description")
    cost_type = _text(row, "cost_type") or "regular"
    currency = _text(row, "currency") or "USD"
    if currency != "USD":
        raise _Bad("currency", f"{currency}: only USD invoices are reconciled")
    labels = _gcp_labels(row)
    resource = _text(row, "resource.name") or _text(row, "resource.global_name") or None
    credits = _json_value(row, "credits") or []
    if not isinstance(credits, list):
        raise _Bad("credits", "expected a list of {name, amount, type}")
    key = "gcp:" + _digest(row)
    base = InvoiceLine(
        source=InvoiceFormat.GCP_BILLING,
        line_key=key,
        line=number,
        usage_start=start,
        usage_end=end,
        service=service,
        usage_type=sku,
        line_type=cost_type,
        category=gcp_category(service, sku, cost_type),
        amount_micro=_money(row, "cost"),
        currency=currency,
        provider_resource=resource,
        tags=labels,
        usage_amount=_number(row, "usage.amount_in_pricing_units"),
        account=_text(row, "project.id") or None,
    )
    out = [base]
    for i, credit in enumerate(credits):
        if not isinstance(credit, Mapping):
            raise _Bad("credits", f"credit {i + 1}: expected {{name, amount}}")
        amount = _money(credit, "amount") if "amount" in credit else 0
        name = str(credit.get("full_name") or credit.get("name") or credit.get("type") or "credit")
        out.append(
            InvoiceLine(
                source=base.source,
                line_key=f"{key}:credit:{i}",
                line=number,
                usage_start=start,
                usage_end=end,
                service=service,
                usage_type=name,
                line_type="credit",
                category="credit",
                amount_micro=amount,
                currency=currency,
                provider_resource=resource,
                tags=labels,
                account=base.account,
            )
        )
    return out


def _digest(row: Mapping[str, Any]) -> str:
    text = json.dumps({k: row[k] for k in sorted(row)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ---- files -------------------------------------------------------------------------------------


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """The file's rows as dicts with the export's column names (nested JSON flattened with dots)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        import duckdb

        con = duckdb.connect()
        cursor = con.execute(f"SELECT * FROM read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')")
        columns = [d[0] for d in cursor.description or []]
        while batch := cursor.fetchmany(10_000):
            for values in batch:
                yield dict(zip(columns, values, strict=True))
        return
    with _open_text(path) as handle:
        if name.endswith(".csv"):
            yield from csv.DictReader(handle)
            return
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
        rest = handle.read()
        text = head + rest
        if head == "[":
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        for item in items:
            yield _flatten(item) if isinstance(item, Mapping) else {"": item}


def detect_format(columns: set[str]) -> InvoiceFormat:
    if "line_item_unblended_cost" in columns or "line_item_line_item_type" in columns:
        return InvoiceFormat.AWS_CUR
    if "cost" in columns and "usage_start_time" in columns:
        return InvoiceFormat.GCP_BILLING
    raise InvoiceFileError(
        "neither an AWS CUR 2.0 (line_item_unblended_cost, …) nor a GCP billing export (cost, usage_start_time, …)"
    )


def parse_invoice(path: Path, fmt: InvoiceFormat | None = None) -> ParsedInvoice:
    """Every line of the file, or a refusal for it naming the column at fault."""
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise InvoiceFileError(f"{path}: no invoice lines")
    chosen = fmt or detect_format(set(first))
    required = CUR_REQUIRED if chosen is InvoiceFormat.AWS_CUR else GCP_REQUIRED
    missing = [c for c in required if c not in first]
    if missing:
        raise InvoiceFileError(f"{path}: {chosen} without the column(s) {', '.join(missing)}")
    out = ParsedInvoice(chosen)
    for number, row in enumerate(_chain(first, rows), 1):
        try:
            if chosen is InvoiceFormat.AWS_CUR:
                out.lines.append(_cur_line(row, number))
            else:
                out.lines.extend(_gcp_lines(row, number))
        except _Bad as bad:
            out.problems.append(InvoiceProblem(number, bad.column, bad.problem))
    return out


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
