"""Turns the shared raw catalog, benchmark and egress tables into the bundled catalog files in `data/`.

Nothing is invented: a price is either published in one of the source tables or derived by the
one documented rule (AWS spot = on-demand × (1 − Spot Advisor savings)). Output is deterministic
(sorted rows, gzip without a timestamp) so a rebuild from the same inputs is byte-identical.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from provisioner.catalog_hs23 import (
    CpuClass,
    assumption_text,
    aws_cpu_class,
    gce_cpu_class,
    hs23_per_vcpu,
    normalise_cpu_name,
)

OFFERINGS_FILE = "offerings.csv.gz"
FAMILIES_FILE = "hs23_families.csv"
EGRESS_FILE = "egress_tiers.csv"
MANIFEST_FILE = "catalog_manifest.json"

OFFERING_COLUMNS = (
    "provider",
    "region",
    "zone",
    "instance_type",
    "family",
    "market",
    "cores",
    "memory_gb",
    "arch",
    "gpu_model",
    "gpu_count",
    "price_per_hour",
    "price_source",
    "interruption_band",
    "interruption_rate_per_hour",
    "startup_seconds",
)

SOURCE_FILES = (
    "catalog/aws_karpenter_instance_types.csv",
    "catalog/aws_karpenter_ondemand_prices.csv",
    "catalog/aws_vantage_gpu_prices_by_region.csv",
    "catalog/aws_spot_advisor_linux.csv",
    "catalog/gcp_cyclenerd_instances.csv",
    "benchmarks/HS23_per_core_summary_by_cpu.csv",
    "egress/skypilot_egress_tiers.csv",
    "egress/gcp_cyclenerd_internet_egress_per_gb.csv",
)

MICRO = Decimal("0.000001")

# Spot Advisor "frequency of interruption" is the share of instances reclaimed over the trailing
# month. Assumed band midpoints (">20%" taken as 25%), spread evenly over 730 hours.
HOURS_PER_MONTH = 730
AWS_BAND_MONTHLY = {"<5%": 0.025, "5-10%": 0.075, "10-15%": 0.125, "15-20%": 0.175, ">20%": 0.25}
AWS_UNKNOWN_BAND = ">20%"  # no band published for this type and region: assume the worst
# Google documented preemption of 5-15% per day for preemptible VMs; spot VMs share the mechanism.
GCE_DAILY_PREEMPTION = 0.10


def hourly_rate(probability: float, hours: float) -> float:
    """Per-hour probability that gives `probability` of being taken back over `hours`."""
    return 1.0 - (1.0 - probability) ** (1.0 / hours)


def aws_band_rate(band: str) -> float:
    return hourly_rate(AWS_BAND_MONTHLY[band], HOURS_PER_MONTH)


GCE_SPOT_RATE = hourly_rate(GCE_DAILY_PREEMPTION, 24)

# Start-up defaults (request to a booted VM ready for a pilot): assumptions, not measurements.
STARTUP_SECONDS = {"aws": 90, "gce": 60}
GPU_STARTUP_SECONDS = {"aws": 180, "gce": 150}  # bigger images, driver initialisation
METAL_STARTUP_SECONDS = 600  # bare-metal hosts POST before booting

# Types left out, with the reason (documented in data/README.md).
AWS_BURSTABLE = frozenset({"t1", "t2", "t3", "t3a", "t4g"})
AWS_ML_ASIC = frozenset({"inf1", "inf2", "trn1", "trn1n", "trn2", "dl2q"})
AWS_FRACTIONAL_GPU = frozenset({"g6f", "gr6f"})
GCE_SHARED_CORE = frozenset({"e2-micro", "e2-small", "e2-medium", "f1-micro", "g1-small"})

# Canonical GPU model names: the same card has one name across providers.
AWS_KARPENTER_GPU = {
    "a10g": "A10G",
    "l4": "L4",
    "l40s": "L40S",
    "t4": "T4",
    "t4g": "T4G",
    "v100": "V100",
    "h100": "H100",
    "h200": "H200",
    "b200": "B200",
    "b300": "B300",
    "radeon-pro-v520": "RADEON-PRO-V520",
    "rtx-pro-4500": "RTX-PRO-4500",
    "rtx-pro-server-6000": "RTX-PRO-6000",
}
AWS_VANTAGE_GPU = {
    "NVIDIA L4": "L4",
    "NVIDIA T4 Tensor Core": "T4",
    "NVIDIA T4G Tensor Core": "T4G",
    "NVIDIA A10G": "A10G",
    "NVIDIA L40S": "L40S",
    "NVIDIA Tesla M60": "M60",
    "NVIDIA Tesla V100": "V100",
    "NVIDIA Tesla K80": "K80",
    "NVIDIA GRID K520": "K520",
    "NVIDIA H100": "H100",
    "NVIDIA H200": "H200",
    "NVIDIA B200": "B200",
    "NVIDIA B300": "B300",
    "AMD Radeon Pro V520": "RADEON-PRO-V520",
}
AWS_VANTAGE_ASIC = frozenset({"AWS Inferentia", "AWS Inferentia2", "Qualcomm AI 100 Accelerators"})
GCE_GPU = {
    "a100": "A100",
    "a100-80gb": "A100-80GB",
    "h100-80gb": "H100",
    "h100-80gb-mega": "H100",
    "l4": "L4",
    "rtx6000": "RTX-PRO-6000",  # g4: NVIDIA RTX PRO 6000 Blackwell Server Edition
}


class CatalogBuildError(ValueError):
    """The raw data does not fit the build's expectations (unknown GPU name, missing CPU row...)."""


@dataclass(frozen=True, slots=True)
class CatalogRow:
    provider: str
    region: str
    zone: str
    instance_type: str
    family: str
    market: str
    cores: int
    memory_gb: float
    arch: str
    gpu_model: str
    gpu_count: int
    price_per_hour: Decimal
    price_source: str
    interruption_band: str
    interruption_rate_per_hour: float
    startup_seconds: int

    def cells(self) -> list[str]:
        return [
            self.provider,
            self.region,
            self.zone,
            self.instance_type,
            self.family,
            self.market,
            str(self.cores),
            f"{self.memory_gb:g}",
            self.arch,
            self.gpu_model,
            str(self.gpu_count),
            format(self.price_per_hour.normalize(), "f"),
            self.price_source,
            self.interruption_band,
            f"{self.interruption_rate_per_hour:.6g}",
            str(self.startup_seconds),
        ]


@dataclass(frozen=True, slots=True)
class FamilyBenchmark:
    family: str  # "aws:m7g"
    cpu_class: str
    benchmark_cpu: str
    smt: bool
    hs23_per_core: float
    assumption: str


@dataclass(frozen=True, slots=True)
class EgressRow:
    location: str
    up_to_gb: float | None
    usd_per_gb: Decimal
    source: str


@dataclass
class BuiltCatalog:
    rows: list[CatalogRow]
    families: dict[str, FamilyBenchmark]
    egress: list[EgressRow]
    notes: Counter[str] = field(default_factory=Counter)  # what was skipped, and why


@dataclass(frozen=True, slots=True)
class _AwsSpec:
    family: str
    cores: int
    memory_gb: float
    arch: str
    manufacturer: str
    gpu_model: str
    gpu_count: int
    metal: bool


def _read(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def _money(text: str) -> Decimal:
    return Decimal(text).quantize(MICRO, rounding=ROUND_HALF_EVEN)


def _startup(provider: str, gpu_count: int, metal: bool) -> int:
    if metal:
        return METAL_STARTUP_SECONDS
    return (GPU_STARTUP_SECONDS if gpu_count else STARTUP_SECONDS)[provider]


_AWS_REGION = re.compile(r"^([a-z]{2}(?:-gov)?-[a-z]+-\d+)(?:-[a-z]+-\d+)?$")


def _aws_location(name: str) -> tuple[str, str] | None:
    """(region, zone) for a vantage region column: Local Zones keep their zone, Wavelength is dropped."""
    if "-wl" in name:
        return None
    match = _AWS_REGION.match(name)
    if match is None:
        raise CatalogBuildError(f"unrecognised AWS region or zone name {name!r} in the vantage table")
    region = match.group(1)
    return region, "" if region == name else name


def _benchmark_summary(shared: Path) -> dict[tuple[str, bool], float]:
    summary: dict[tuple[str, bool], float] = {}
    for row in _read(shared / "benchmarks/HS23_per_core_summary_by_cpu.csv"):
        key = (normalise_cpu_name(row["CPU"]), row["SMT_enabled"] == "1")
        summary[key] = float(row["median_HS23_per_online_cpu"])
    return summary


class _Families:
    """Collects the HEPscore23 mapping of every family that gets at least one offering."""

    def __init__(self, summary: dict[tuple[str, bool], float]) -> None:
        self.summary = summary
        self.by_family: dict[str, FamilyBenchmark] = {}

    def add(self, provider: str, family: str, cpu_class: CpuClass) -> None:
        key = f"{provider}:{family}"
        if key in self.by_family:
            return
        value = hs23_per_vcpu(cpu_class, self.summary)
        self.by_family[key] = FamilyBenchmark(
            family=key,
            cpu_class=cpu_class.key,
            benchmark_cpu=normalise_cpu_name(cpu_class.benchmark_cpu or ""),
            smt=cpu_class.smt,
            hs23_per_core=value,
            assumption=assumption_text(provider, family, cpu_class, value),
        )


def _aws_specs(shared: Path, notes: Counter[str]) -> tuple[dict[str, _AwsSpec], dict[str, str]]:
    """Instance specs by type, and the excluded types with their reason."""
    specs: dict[str, _AwsSpec] = {}
    excluded: dict[str, str] = {}
    for row in _read(shared / "catalog/aws_karpenter_instance_types.csv"):
        itype = row["instance_type"]
        family = itype.split(".")[0]
        reason = _aws_exclusion(family, accelerator=row["accelerator-name"])
        if reason:
            excluded[itype] = reason
            continue
        gpu_name = row["gpu-name"]
        gpu_model = ""
        if gpu_name:
            if gpu_name == "a100":
                gpu_model = "A100-80GB" if int(row["gpu-memory"]) >= 80 * 1024 else "A100"
            elif gpu_name in AWS_KARPENTER_GPU:
                gpu_model = AWS_KARPENTER_GPU[gpu_name]
            else:
                raise CatalogBuildError(f"{itype}: unknown GPU name {gpu_name!r} in the Karpenter table")
        specs[itype] = _AwsSpec(
            family=family,
            cores=int(row["cpu"]),
            memory_gb=float(row["memory_gib"]),
            arch="arm64" if row["arch"] == "arm64" else "x86_64",
            manufacturer=row["cpu-manufacturer"],
            gpu_model=gpu_model,
            gpu_count=int(row["gpu-count"] or 0) if gpu_model else 0,
            metal="metal" in itype.split(".")[1],
        )
    for row in _read(shared / "catalog/aws_vantage_gpu_prices_by_region.csv"):
        itype = row["instance_type"]
        if itype in specs or itype in excluded:
            continue
        family = itype.split(".")[0]
        reason = _aws_exclusion(family, accelerator="asic" if row["gpu_model"] in AWS_VANTAGE_ASIC else "")
        if not reason and not float(row["gpu_count"]).is_integer():
            reason = "fractional GPU"
        if reason:
            excluded[itype] = reason
            continue
        if row["gpu_model"] == "NVIDIA A100":
            per_gpu = float(row["gpu_memory_gib"]) / float(row["gpu_count"])
            gpu_model = "A100-80GB" if per_gpu >= 80 else "A100"
        elif row["gpu_model"] in AWS_VANTAGE_GPU:
            gpu_model = AWS_VANTAGE_GPU[row["gpu_model"]]
        else:
            raise CatalogBuildError(f"{itype}: unknown GPU model {row['gpu_model']!r} in the vantage table")
        specs[itype] = _AwsSpec(
            family=family,
            cores=int(row["vcpu"]),
            memory_gb=float(row["memory_gib"]),
            arch=row["arch"],
            manufacturer="aws" if row["arch"] == "arm64" else "intel",
            gpu_model=gpu_model,
            gpu_count=int(float(row["gpu_count"])),
            metal="metal" in itype.split(".")[1],
        )
    for reason in excluded.values():
        notes[f"aws types excluded: {reason}"] += 1
    return specs, excluded


def _aws_exclusion(family: str, accelerator: str) -> str:
    if family in AWS_BURSTABLE:
        return "burstable (CPU credits; no sustained throughput)"
    if accelerator or family in AWS_ML_ASIC:
        return "ML ASIC accelerator, not a GPU"
    if family in AWS_FRACTIONAL_GPU:
        return "fractional GPU"
    return ""


def _aws_rows(shared: Path, families: _Families, notes: Counter[str]) -> list[CatalogRow]:
    specs, excluded = _aws_specs(shared, notes)
    # (region, zone, type) -> (price, source)
    on_demand: dict[tuple[str, str, str], tuple[Decimal, str]] = {}
    for row in _read(shared / "catalog/aws_karpenter_ondemand_prices.csv"):
        itype = row["instance_type"]
        if itype in excluded:
            continue
        if itype not in specs:
            notes["aws on-demand prices without instance specs"] += 1
            continue
        on_demand[(row["region"], "", itype)] = (_money(row["ondemand_usd_per_hour_linux"]), "karpenter")
    spot: dict[tuple[str, str, str], tuple[Decimal, str, str]] = {}  # price, source, band
    for row in _read(shared / "catalog/aws_vantage_gpu_prices_by_region.csv"):
        itype = row["instance_type"]
        location = _aws_location(row["region"])
        if itype in excluded or itype not in specs:
            continue
        if location is None:
            notes["aws vantage rows in Wavelength zones (dropped)"] += 1
            continue
        key = (*location, itype)
        if key not in on_demand and row["linux_ondemand_usd_hr"]:
            on_demand[key] = (_money(row["linux_ondemand_usd_hr"]), "vantage")
        if row["linux_spot_avg"]:
            spot[key] = (_money(row["linux_spot_avg"]), "vantage-spot-avg", row["spot_pct_interrupt"])
    advisor: dict[tuple[str, str], tuple[int, str]] = {}
    for row in _read(shared / "catalog/aws_spot_advisor_linux.csv"):
        advisor[(row["region"], row["instance_type"])] = (
            int(row["savings_pct_vs_ondemand"]),
            row["interruption_freq_range"],
        )
    for (region, zone, itype), (price, _source) in on_demand.items():
        key = (region, zone, itype)
        if key in spot or zone or (region, itype) not in advisor:
            continue
        savings, band = advisor[(region, itype)]
        derived = (price * (100 - savings) / 100).quantize(MICRO, rounding=ROUND_HALF_EVEN)
        spot[key] = (derived, "derived-advisor", band)

    rows: list[CatalogRow] = []
    for (region, zone, itype), (price, source) in on_demand.items():
        rows.append(_aws_row(specs[itype], region, zone, itype, "on_demand", price, source, "", families))
    for (region, zone, itype), (price, source, band) in spot.items():
        od = on_demand.get((region, zone, itype))
        if price <= 0:
            notes["aws spot prices not positive (dropped)"] += 1
            continue
        if od is not None and price >= od[0]:
            notes["aws spot prices not below on-demand (dropped)"] += 1
            continue
        if not band:
            band = advisor.get((region, itype), (0, AWS_UNKNOWN_BAND))[1]
        rows.append(_aws_row(specs[itype], region, zone, itype, "spot", price, source, band, families))
    return rows


def _aws_row(
    spec: _AwsSpec,
    region: str,
    zone: str,
    itype: str,
    market: str,
    price: Decimal,
    source: str,
    band: str,
    families: _Families,
) -> CatalogRow:
    families.add("aws", spec.family, aws_cpu_class(spec.family, spec.manufacturer))
    return CatalogRow(
        provider="aws",
        region=region,
        zone=zone,
        instance_type=itype,
        family=f"aws:{spec.family}",
        market=market,
        cores=spec.cores,
        memory_gb=spec.memory_gb,
        arch=spec.arch,
        gpu_model=spec.gpu_model,
        gpu_count=spec.gpu_count,
        price_per_hour=price,
        price_source=source,
        interruption_band=band,
        interruption_rate_per_hour=aws_band_rate(band) if market == "spot" else 0.0,
        startup_seconds=_startup("aws", spec.gpu_count, spec.metal),
    )


def _gce_rows(shared: Path, families: _Families, notes: Counter[str]) -> list[CatalogRow]:
    rows: list[CatalogRow] = []
    for row in _read(shared / "catalog/gcp_cyclenerd_instances.csv"):
        mtype = row["machine_type"]
        if mtype in GCE_SHARED_CORE:
            notes["gce rows excluded: shared-core (fractional vCPU)"] += 1
            continue
        gpu_count_text = row["gpu_count"] or "0"
        if not float(gpu_count_text).is_integer():
            notes["gce rows excluded: fractional GPU"] += 1
            continue
        gpu_count = int(float(gpu_count_text))
        gpu_model = ""
        if row["gpu_type"]:
            if row["gpu_type"] not in GCE_GPU:
                raise CatalogBuildError(f"{mtype}: unknown GPU type {row['gpu_type']!r} in the GCE table")
            gpu_model = GCE_GPU[row["gpu_type"]]
        series = mtype.split("-")[0]
        series = "n1" if series == "custom" else series
        families.add("gce", series, gce_cpu_class("custom" if mtype.startswith("custom-") else series))
        od = _money(row["ondemand_usd_hr"]) if row["ondemand_usd_hr"] else None
        sp = _money(row["spot_usd_hr"]) if row["spot_usd_hr"] else None
        markets: list[tuple[str, Decimal, str, float]] = []
        if od is not None and od > 0:
            markets.append(("on_demand", od, "", 0.0))
        else:
            notes["gce rows without an on-demand price"] += 1
        if sp is not None and sp > 0 and (od is None or sp < od):
            markets.append(("spot", sp, "", GCE_SPOT_RATE))
        else:
            notes["gce rows without a usable spot price"] += 1
        metal = mtype.endswith("-metal")
        for market, price, band, rate in markets:
            rows.append(
                CatalogRow(
                    provider="gce",
                    region=row["region"],
                    zone="",
                    instance_type=mtype,
                    family=f"gce:{series}",
                    market=market,
                    cores=int(row["vcpus"]),
                    memory_gb=float(row["memory_gb"]),
                    arch=row["arch"],
                    gpu_model=gpu_model,
                    gpu_count=gpu_count,
                    price_per_hour=price,
                    price_source="cyclenerd",
                    interruption_band=band,
                    interruption_rate_per_hour=rate,
                    startup_seconds=_startup("gce", gpu_count, metal),
                )
            )
    return rows


def _egress_rows(shared: Path, rows: Iterable[CatalogRow]) -> list[EgressRow]:
    aws_tiers: list[tuple[float | None, Decimal]] = []
    for row in _read(shared / "egress/skypilot_egress_tiers.csv"):
        if row["cloud"] == "aws":
            aws_tiers.append((float(row["gb_to"]) if row["gb_to"] else None, Decimal(row["usd_per_gb"])))
    edges = {"0-1": 1024.0, "1-10": 10240.0, "10n": None}
    gce: dict[str, list[tuple[float | None, Decimal]]] = {}
    for row in _read(shared / "egress/gcp_cyclenerd_internet_egress_per_gb.csv"):
        if row["destination"] != "worldwide_excl_china_australia":
            continue
        gce.setdefault(row["source_region"], []).append(
            (edges[row["tier_tib_per_month"]], Decimal(row["usd_per_gib"]))
        )
    out: list[EgressRow] = []
    locations = sorted({(r.provider, r.region) for r in rows})
    for provider, region in locations:
        location = f"{provider}:{region}"
        if provider == "aws":
            for up_to, price in aws_tiers:
                out.append(EgressRow(location, up_to, price, "skypilot-aws-us-east"))
        elif region in gce:
            tiers = sorted(gce[region], key=lambda t: math.inf if t[0] is None else t[0])
            for up_to, price in tiers:
                out.append(EgressRow(location, up_to, price, "cyclenerd"))
        else:
            raise CatalogBuildError(f"gce region {region}: no internet egress tiers in the cyclenerd table")
    return out


def build_catalog(shared: Path) -> BuiltCatalog:
    """Read the raw tables under `shared` (the shared data directory) and derive the catalog."""
    missing = [name for name in SOURCE_FILES if not (shared / name).is_file()]
    if missing:
        raise CatalogBuildError(f"shared data at {shared}: missing {', '.join(missing)}")
    notes: Counter[str] = Counter()
    families = _Families(_benchmark_summary(shared))
    rows = _aws_rows(shared, families, notes) + _gce_rows(shared, families, notes)
    rows.sort(key=lambda r: (r.provider, r.region, r.zone, r.instance_type, r.market))
    ids = Counter((r.provider, r.zone or r.region, r.instance_type, r.market) for r in rows)
    duplicated = [key for key, n in ids.items() if n > 1]
    if duplicated:
        raise CatalogBuildError(f"duplicate offering ids, e.g. {duplicated[:3]}")
    return BuiltCatalog(
        rows=rows, families=families.by_family, egress=_egress_rows(shared, rows), notes=notes
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_catalog(built: BuiltCatalog, shared: Path, out: Path) -> list[Path]:
    """Write the bundled files into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(OFFERING_COLUMNS)
    writer.writerows(row.cells() for row in built.rows)
    offerings = out / OFFERINGS_FILE
    with offerings.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.getvalue().encode("utf-8"))

    families = out / FAMILIES_FILE
    with families.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("family", "cpu_class", "benchmark_cpu", "smt", "hs23_per_core", "assumption"))
        for fam in sorted(built.families.values(), key=lambda f: f.family):
            writer.writerow(
                (
                    fam.family,
                    fam.cpu_class,
                    fam.benchmark_cpu,
                    int(fam.smt),
                    fam.hs23_per_core,
                    fam.assumption,
                )
            )

    egress = out / EGRESS_FILE
    with egress.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("location", "up_to_gb", "usd_per_gb", "source"))
        for tier in built.egress:
            up_to = "" if tier.up_to_gb is None else f"{tier.up_to_gb:g}"
            writer.writerow((tier.location, up_to, str(tier.usd_per_gb), tier.source))

    counts = Counter(f"{r.provider}:{r.market}" for r in built.rows)
    manifest = {
        "offerings": len(built.rows),
        "by_provider_market": dict(sorted(counts.items())),
        "by_price_source": dict(sorted(Counter(r.price_source for r in built.rows).items())),
        "locations": len({(r.provider, r.region) for r in built.rows}),
        "families": len(built.families),
        "skipped": dict(sorted(built.notes.items())),
        "assumptions": {
            "aws_band_monthly_probability": AWS_BAND_MONTHLY,
            "aws_unknown_band": AWS_UNKNOWN_BAND,
            "hours_per_month": HOURS_PER_MONTH,
            "gce_daily_preemption": GCE_DAILY_PREEMPTION,
            "startup_seconds": STARTUP_SECONDS,
            "gpu_startup_seconds": GPU_STARTUP_SECONDS,
            "metal_startup_seconds": METAL_STARTUP_SECONDS,
        },
        "sources_sha256": {name: _sha256(shared / name) for name in SOURCE_FILES},
    }
    manifest_path = out / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [offerings, families, egress, manifest_path]
