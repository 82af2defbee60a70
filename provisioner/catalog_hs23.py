"""Which CPU, and so which HEPscore23 per vCPU, sits behind each AWS instance family and GCE series.

Cloud providers publish the processor generation, not a HEPscore23. Each family is mapped to a
CPU class, and each class to one row of the HEPiX per-core summary (median HEPscore23 per logical
CPU, with SMT on or off). An x86 cloud vCPU is a hyperthread, so the SMT-on row is used unless
the provider documents one vCPU per physical core (Graviton, Ampere, Axion, AWS 7th/8th-gen AMD,
hpc6a/hpc6id, GCE t2d/h3). Every mapping is an assumption; the text goes into
`Offering.benchmark_assumption` and `data/README.md`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A family with no matching CPU row gets this: about a 2016 Broadwell hyperthread
# (E5-2680 v4 SMT on: 11.3; E5-2630 v4 SMT on: 9.7) and the domain's reference core.
DEFAULT_HS23_PER_VCPU = 10.0


@dataclass(frozen=True, slots=True)
class CpuClass:
    key: str
    description: str  # the processor the provider documents
    benchmark_cpu: str | None  # CPU column of HS23_per_core_summary_by_cpu.csv; None: no data
    smt: bool
    note: str = ""  # why this row, when it is not the same CPU


def _c(key: str, description: str, cpu: str | None, smt: bool, note: str = "") -> CpuClass:
    return CpuClass(key, description, cpu, smt, note)


_LOWER_BOUND = "no HEPscore23 for this CPU in the data; an older generation is used as a lower bound"

CPU_CLASSES: dict[str, CpuClass] = {
    c.key: c
    for c in (
        _c("westmere", "Intel Xeon (Nehalem/Westmere era)", "Intel(R) Xeon(R) CPU E5630 @ 2.53GHz", True),
        _c("sandy", "Intel Xeon E5-2670 (Sandy Bridge)", "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", True),
        _c(
            "ivy",
            "Intel Xeon E5-2670/2680 v2 (Ivy Bridge)",
            "Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz",
            True,
            "nearest Ivy Bridge SKU in the data",
        ),
        _c(
            "haswell",
            "Intel Xeon E5-2666/2676 v3 (Haswell)",
            "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz",
            True,
            "nearest Haswell SKU in the data",
        ),
        _c(
            "broadwell",
            "Intel Xeon E5-2686 v4 (Broadwell)",
            "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz",
            True,
            "nearest Broadwell SKU in the data",
        ),
        _c(
            "skylake",
            "Intel Xeon Scalable 1st gen (Skylake-SP, e.g. 8175M)",
            "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz",
            True,
            "Skylake-SP Gold 6130; also used where the platform is a Skylake/Cascade Lake mix",
        ),
        _c(
            "cascade",
            "Intel Xeon Scalable 2nd gen (Cascade Lake, e.g. 8259CL/8275CL)",
            "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz",
            True,
        ),
        _c(
            "cascade_hf",
            "Intel Xeon Cascade Lake at 3.8 GHz all-core (GCE c2)",
            "Intel(R) Xeon(R) Gold 6226 CPU @ 2.70GHz",
            True,
            "high-frequency Cascade Lake SKU",
        ),
        _c(
            "icelake",
            "Intel Xeon Scalable 3rd gen (Ice Lake, e.g. 8375C)",
            "Intel(R) Xeon(R) Gold 6336Y CPU @ 2.40GHz",
            True,
            "median of the Ice Lake SMT-on rows (6326 15.9, 6336Y 13.6, 4314 13.3)",
        ),
        _c(
            "icelake_nosmt",
            "Intel Xeon Ice Lake, one vCPU per physical core (hpc6id)",
            "Intel(R) Xeon(R) Platinum 8352Y CPU @ 2.20GHz",
            False,
        ),
        _c(
            "sapphire",
            "Intel Xeon Scalable 4th gen (Sapphire Rapids, e.g. 8488C)",
            "Intel(R) Xeon(R) Platinum 8480CL",
            True,
        ),
        _c(
            "sapphire_nosmt",
            "Intel Xeon Sapphire Rapids, one vCPU per physical core (GCE h3)",
            "Intel(R) Xeon(R) Platinum 8480CL",
            False,
        ),
        _c(
            "emerald",
            "Intel Xeon Scalable 5th gen (Emerald Rapids, e.g. 8559C)",
            "INTEL(R) XEON(R) PLATINUM 8592+",
            True,
        ),
        _c(
            "granite",
            "Intel Xeon 6 (Granite Rapids)",
            "INTEL(R) XEON(R) PLATINUM 8592+",
            True,
            _LOWER_BOUND + " (Emerald Rapids)",
        ),
        _c(
            "naples",
            "AMD EPYC 1st gen (Naples, EPYC 7571)",
            "AMD EPYC 7551P 32-Core Processor",
            True,
        ),
        _c(
            "rome",
            "AMD EPYC 2nd gen (Rome, e.g. EPYC 7R32)",
            "AMD EPYC 7452 32-Core Processor",
            True,
            "32-core Rome SKU; Rome SMT-on rows span 9.9-15.6",
        ),
        _c(
            "milan",
            "AMD EPYC 3rd gen (Milan, e.g. EPYC 7R13)",
            "AMD EPYC 7763 64-Core Processor",
            True,
        ),
        _c(
            "milan_hf",
            "AMD EPYC Milan at 3.5 GHz all-core (GCE c2d)",
            "AMD EPYC 74F3 24-Core Processor",
            True,
            "high-frequency Milan SKU",
        ),
        _c(
            "milan_nosmt",
            "AMD EPYC Milan, one vCPU per physical core (hpc6a, GCE t2d)",
            "AMD EPYC 7763 64-Core Processor",
            False,
        ),
        _c("genoa", "AMD EPYC 4th gen (Genoa)", "AMD EPYC 9654 96-Core Processor", True),
        _c(
            "genoa_nosmt",
            "AMD EPYC 4th gen (Genoa, EPYC 9R14), one vCPU per physical core",
            "AMD EPYC 9654 96-Core Processor",
            False,
        ),
        _c("turin", "AMD EPYC 5th gen (Turin)", "AMD EPYC 9655 96-Core Processor", True),
        _c(
            "turin_nosmt",
            "AMD EPYC 5th gen (Turin, EPYC 9R45), one vCPU per physical core",
            "AMD EPYC 9655 96-Core Processor",
            False,
        ),
        _c(
            "graviton1",
            "AWS Graviton (Cortex-A72)",
            None,
            False,
            "no Cortex-A72 HEPscore23 in the data; documented default",
        ),
        _c("graviton2", "AWS Graviton2 (Neoverse-N1)", "Neoverse-N1", False),
        _c(
            "graviton3",
            "AWS Graviton3 (Neoverse-V1)",
            "Neoverse-N1",
            False,
            _LOWER_BOUND + " (Neoverse-N1)",
        ),
        _c(
            "graviton4",
            "AWS Graviton4 (Neoverse-V2)",
            "Neoverse-V2 - Grace A02 900-2G535-0020-000 CPU @ 3.3GHz",
            False,
            "Grace row (28.55), the lower of the two Neoverse-V2 rows",
        ),
        _c(
            "graviton5",
            "AWS Graviton5",
            "Neoverse-V2 - Grace A02 900-2G535-0020-000 CPU @ 3.3GHz",
            False,
            _LOWER_BOUND + " (Neoverse-V2)",
        ),
        _c(
            "ampere_altra",
            "Ampere Altra (Neoverse-N1)",
            "Neoverse-N1 - Ampere(R) Altra(R) Processor",
            False,
        ),
        _c(
            "axion_v2",
            "Google Axion (Neoverse-V2)",
            "Neoverse-V2 - Grace A02 900-2G535-0020-000 CPU @ 3.3GHz",
            False,
            "Grace row (28.55), the lower of the two Neoverse-V2 rows",
        ),
        _c(
            "axion_n4a",
            "Google Axion (N4A)",
            "Neoverse-N1",
            False,
            _LOWER_BOUND + " (Neoverse-N1)",
        ),
        _c("unknown", "CPU not documented in the data", None, True, "documented default"),
    )
}

_AWS_FAMILY_CLASS: dict[str, str] = {}
for _cls, _families in {
    "westmere": "m1 m2 c1 t1 cc1 cg1",
    "sandy": "g2 cc2",
    "ivy": "m3 c3 r3 i2 hs1",
    "haswell": "c4 m4 d2 x1 x1e t2",
    "broadwell": "r4 i3 h1 p2 p3 g3 g3s f1",
    "skylake": "m5 m5d m5n m5dn r5 r5d r5n r5dn r5b c5n z1d i3en p3dn u-3tb1 u-6tb1 t3",
    "cascade": "c5 c5d m5zn x2iezn g4dn p4d p4de d3 d3en vt1",
    "icelake": "m6i m6id m6in m6idn c6i c6id c6in r6i r6id r6in r6idn x2idn x2iedn i4i",
    "icelake_nosmt": "hpc6id",
    "sapphire": "m7i m7i-flex c7i c7i-flex r7i r7iz u7i-6tb u7i-8tb u7i-12tb u7in-16tb u7in-24tb u7in-32tb p5en",
    "emerald": "i7i i7ie p6-b200 p6-b300",
    "naples": "m5a m5ad r5a r5ad t3a",
    "rome": "c5a c5ad g4ad g5",
    "milan": "m6a c6a r6a g6 g6e g6f gr6 gr6f p5 p5e f2",
    "milan_nosmt": "hpc6a",
    "genoa_nosmt": "m7a c7a r7a hpc7a",
    "turin_nosmt": "m8a c8a r8a hpc8a m8azn x8aedz",
    "graviton1": "a1",
}.items():
    for _family in _families.split():
        _AWS_FAMILY_CLASS[_family] = _cls

GCE_SERIES_CLASS: dict[str, str] = {
    "n1": "skylake",
    "custom": "skylake",  # custom-*-ext machine types in the data are N1 custom shapes
    "e2": "skylake",  # E2 runs on whatever Intel/AMD platform is free: the older end of it
    "m1": "skylake",
    "n2": "cascade",
    "m2": "cascade",
    "a2": "cascade",
    "g2": "cascade",
    "c2": "cascade_hf",
    "m3": "icelake",
    "n2d": "rome",  # Rome or Milan depending on zone: the slower of the two
    "c2d": "milan_hf",
    "t2d": "milan_nosmt",
    "c3": "sapphire",
    "z3": "sapphire",
    "a3": "sapphire",
    "h3": "sapphire_nosmt",
    "c3d": "genoa",
    "c4": "emerald",  # Emerald or Granite Rapids: the older of the two
    "c4n": "emerald",
    "n4": "emerald",
    "m4": "emerald",
    "g4": "granite",
    "c4d": "turin",
    "n4d": "turin",
    "t2a": "ampere_altra",
    "c4a": "axion_v2",
    "n4a": "axion_n4a",
}

_GENERATION = re.compile(r"^[a-z]+(\d)")


def aws_cpu_class(family: str, manufacturer: str) -> CpuClass:
    """The CPU class of an AWS instance family ("m7g", "c7i-flex"); `manufacturer` is intel|amd|aws."""
    key = _AWS_FAMILY_CLASS.get(family)
    if key is None:
        match = _GENERATION.match(family)
        generation = int(match.group(1)) if match else 0
        if manufacturer == "aws":
            key = {9: "graviton5", 8: "graviton4", 7: "graviton3"}.get(generation, "graviton2")
        elif manufacturer == "intel" and generation == 8:
            key = "granite"
        else:
            key = "unknown"
    return CPU_CLASSES[key]


def gce_cpu_class(series: str) -> CpuClass:
    return CPU_CLASSES[GCE_SERIES_CLASS.get(series, "unknown")]


def normalise_cpu_name(name: str) -> str:
    return " ".join(name.split())


def hs23_per_vcpu(cpu_class: CpuClass, summary: dict[tuple[str, bool], float]) -> float:
    """Median HEPscore23 per logical CPU for the class, from the per-CPU summary table.

    `summary` maps (normalised CPU name, SMT enabled) to the median. A class that names a row
    missing from the table is a build error, not a silent default.
    """
    if cpu_class.benchmark_cpu is None:
        return DEFAULT_HS23_PER_VCPU
    key = (normalise_cpu_name(cpu_class.benchmark_cpu), cpu_class.smt)
    if key not in summary:
        raise KeyError(f"CPU class {cpu_class.key}: no row {key[0]!r} with SMT={int(key[1])} in the summary")
    return summary[key]


def assumption_text(provider: str, family: str, cpu_class: CpuClass, value: float) -> str:
    """One line saying how the family's HEPscore23 per vCPU was derived."""
    if cpu_class.benchmark_cpu is None:
        basis = f"default {DEFAULT_HS23_PER_VCPU} HS23/vCPU"
    else:
        smt = "SMT on" if cpu_class.smt else "SMT off, vCPU = physical core"
        basis = f"{normalise_cpu_name(cpu_class.benchmark_cpu)} ({smt}) median {value} HS23 per logical CPU"
    text = f"{provider}:{family} -> {cpu_class.description}; {basis}"
    if cpu_class.note:
        text += f"; {cpu_class.note}"
    return text
