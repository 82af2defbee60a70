"""What a simulated cloud bills, written as the real export: an AWS CUR 2.0 CSV or a GCP billing export.

The simulated provider knows what it really ran: each unit from the moment it started running to
the moment it was terminated (by the broker, an interruption or its walltime), per second, at the
offering's price. It writes one line per unit and hour, as both exports do, with the broker's tags
or labels on it, plus what a real account carries beside the instances and the broker does not
price: the instance's root disk and its public IPv4 address, every hour the instance exists. With
`egress_gb_per_hour` set, the data the units sent out is billed too, at the region's marginal tiers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from backends.simulated import SimulatedBackend, SimUnit
from policies.egress import marginal_egress_cost
from provisioner.domain import Market

HOUR = timedelta(hours=1)
ROOT_DISK_GB = 30
DISK_USD_PER_GB_MONTH = Decimal("0.08")  # gp3 / pd-balanced list price
HOURS_PER_MONTH = Decimal(730)
IPV4_USD_PER_HOUR = Decimal("0.005")
ACCOUNT = "123456789012"
PROJECT = "provisioner-demo"

CUR_COLUMNS = (
    "identity_line_item_id", "identity_time_interval", "bill_billing_period_start_date",
    "line_item_usage_account_id", "line_item_line_item_type", "line_item_usage_start_date",
    "line_item_usage_end_date", "line_item_product_code", "line_item_usage_type", "line_item_operation",
    "line_item_resource_id", "line_item_usage_amount", "line_item_unblended_cost", "line_item_currency_code",
    "product_region_code", "resource_tags",
)  # fmt: skip


def _usd(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_EVEN))


def _pieces(
    start: datetime, end: datetime, lo: datetime, hi: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) ∩ [lo, hi) cut at whole hours."""
    a, b = max(start, lo), min(end, hi)
    hour = a.replace(minute=0, second=0, microsecond=0)
    while hour < b:
        yield max(hour, a), min(hour + HOUR, b)
        hour += HOUR


def _ran(unit: SimUnit, until: datetime) -> tuple[datetime, datetime] | None:
    if unit.started_at is None:
        return None  # never ran: nothing to bill
    return unit.started_at, unit.terminated_at or until


def _instance_type(offering_id: str) -> tuple[str, str]:
    parts = offering_id.split(":")
    region = parts[1] if len(parts) > 1 else "region"
    itype = parts[2] if len(parts) > 2 else offering_id
    return region, itype


Egress = dict[tuple[str, datetime], tuple[Decimal, Decimal]]  # (unit, piece start) → (GB, USD)


def egress_charges(backend: SimulatedBackend, lo: datetime, hi: datetime, *, until: datetime) -> Egress:
    """GB each unit sent in each hour piece (the backend's `egress_gb_per_hour` while running), priced
    at its region's marginal tiers on the GB sent from that region since `lo`, in time order."""
    if not backend.egress_gb_per_hour:
        return {}
    rate = Decimal(str(backend.egress_gb_per_hour))
    pieces = []
    for unit in backend.billable_units():
        span = _ran(unit, until)
        offering = backend.offering(unit.offering_id)
        if span is None or offering is None:
            continue
        for a, b in _pieces(*span, lo, hi):
            pieces.append((a, unit.provider_id, offering, rate * Decimal((b - a).total_seconds()) / 3600))
    used: dict[str, Decimal] = {}
    out: Egress = {}
    for a, pid, offering, gb in sorted(pieces, key=lambda p: (p[0], p[1])):
        before = used.get(offering.location, Decimal(0))
        out[(pid, a)] = (gb, marginal_egress_cost(gb, before, offering.egress_tiers))
        used[offering.location] = before + gb
    return out


def write_cur(backend: SimulatedBackend, path: Path, lo: datetime, hi: datetime, *, until: datetime) -> int:
    """AWS CUR 2.0 CSV of [lo, hi); returns the number of lines."""
    lines = 0
    egress = egress_charges(backend, lo, hi, until=until)
    with path.open("w", newline="") as handle:
        w = csv.DictWriter(handle, CUR_COLUMNS)
        w.writeheader()
        for unit in backend.billable_units():
            span = _ran(unit, until)
            if span is None:
                continue
            offering = backend.offering(unit.offering_id)
            region, itype = _instance_type(unit.offering_id)
            spot = offering is not None and offering.market == Market.SPOT
            price = offering.price_per_hour if offering is not None else Decimal(0)
            tags = json.dumps({"user_" + k.replace("-", "_"): v for k, v in sorted(unit.tags.items())})
            for a, b in _pieces(*span, lo, hi):
                hours = Decimal((b - a).total_seconds()) / 3600
                base = {
                    "identity_time_interval": f"{a:%Y-%m-%dT%H:00:00Z}/{a + HOUR:%Y-%m-%dT%H:00:00Z}",
                    "bill_billing_period_start_date": f"{lo:%Y-%m-%dT%H:%M:%S.000Z}",
                    "line_item_usage_account_id": ACCOUNT,
                    "line_item_line_item_type": "Usage",
                    "line_item_usage_start_date": f"{a:%Y-%m-%dT%H:%M:%S.000Z}",
                    "line_item_usage_end_date": f"{b:%Y-%m-%dT%H:%M:%S.000Z}",
                    "line_item_product_code": "AmazonEC2",
                    "line_item_currency_code": "USD",
                    "product_region_code": region,
                    "resource_tags": tags,
                }
                charges = (
                    ("compute", f"{'SpotUsage' if spot else 'BoxUsage'}:{itype}",
                     "RunInstances:SV001" if spot else "RunInstances", unit.provider_id, hours, price * hours),
                    ("disk", "EBS:VolumeUsage.gp3", "CreateVolume-Gp3", f"vol-{unit.provider_id}",
                     hours * ROOT_DISK_GB / HOURS_PER_MONTH, hours * ROOT_DISK_GB * DISK_USD_PER_GB_MONTH / HOURS_PER_MONTH),
                    ("ip", "PublicIPv4:InUseAddress", "AssociateAddress", unit.provider_id, hours,
                     hours * IPV4_USD_PER_HOUR),
                )  # fmt: skip
                extra: tuple[tuple[str, str, str, str, Decimal, Decimal], ...] = ()
                if (unit.provider_id, a) in egress:
                    gb, usd = egress[(unit.provider_id, a)]
                    extra = (("egress", "DataTransfer-Out-Bytes", "RunInstances", unit.provider_id, gb, usd),)
                for what, usage_type, operation, resource, amount, cost in (*charges, *extra):
                    w.writerow(
                        base
                        | {
                            "identity_line_item_id": f"{unit.provider_id}:{what}",
                            "line_item_usage_type": usage_type,
                            "line_item_operation": operation,
                            "line_item_resource_id": resource,
                            "line_item_usage_amount": _usd(amount),
                            "line_item_unblended_cost": _usd(cost),
                        }
                    )
                    lines += 1
    return lines


def write_gcp(backend: SimulatedBackend, path: Path, lo: datetime, hi: datetime, *, until: datetime) -> int:
    """GCP billing export (the BigQuery table's columns) as JSON lines of [lo, hi); returns the line count."""
    lines = 0
    egress = egress_charges(backend, lo, hi, until=until)
    with path.open("w") as handle:
        for unit in backend.billable_units():
            span = _ran(unit, until)
            if span is None:
                continue
            offering = backend.offering(unit.offering_id)
            zone, itype = _instance_type(unit.offering_id)
            spot = offering is not None and offering.market == Market.SPOT
            price = offering.price_per_hour if offering is not None else Decimal(0)
            labels = [{"key": k, "value": v} for k, v in sorted(unit.tags.items())]
            family = itype.split("-")[0].upper()
            name = f"projects/{PROJECT}/zones/{zone}/instances/{unit.provider_id}"
            for a, b in _pieces(*span, lo, hi):
                hours = Decimal((b - a).total_seconds()) / 3600
                charges = (
                    ("Compute Engine", f"{'Spot Preemptible ' if spot else ''}{family} Instance Core running in {zone}",
                     name, price * hours),
                    ("Compute Engine", "Storage PD Capacity", name.replace("/instances/", "/disks/"),
                     hours * ROOT_DISK_GB * DISK_USD_PER_GB_MONTH / HOURS_PER_MONTH),
                    ("Compute Engine", "External IP Charge on a Standard VM", name, hours * IPV4_USD_PER_HOUR),
                )  # fmt: skip
                more: tuple[tuple[str, str, str, Decimal], ...] = ()
                if (unit.provider_id, a) in egress:
                    _, usd = egress[(unit.provider_id, a)]
                    more = (("Compute Engine", f"Network Internet Egress from {zone}", name, usd),)
                for service, sku, resource, cost in (*charges, *more):
                    record = {
                        "billing_account_id": "01ABCD-234567-89EF01",
                        "service": {"id": "6F81-5844-456A", "description": service},
                        "sku": {"description": sku},
                        "usage_start_time": a.isoformat(),
                        "usage_end_time": b.isoformat(),
                        "project": {"id": PROJECT},
                        "labels": labels,
                        "location": {"zone": zone},
                        "resource": {"name": resource, "global_name": f"//compute.googleapis.com/{resource}"},
                        "cost": float(cost.quantize(Decimal("0.000001"))),
                        "currency": "USD",
                        "cost_type": "regular",
                        "usage": {"amount_in_pricing_units": float(hours), "pricing_unit": "hour"},
                        "invoice": {"month": f"{lo:%Y%m}"},
                        "credits": [],
                    }
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
                    lines += 1
    return lines
