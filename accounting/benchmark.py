"""HEPscore23 benchmark normalisation: the per-core values APEL accepts and normalised durations."""

from __future__ import annotations

import csv
import functools
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

# The ServiceLevelType / BenchmarkType string APEL's loader accepts for HEPscore23 (case-insensitive
# there; we always write this spelling). "HS23" and "HEPSPEC06" are rejected by the loader.
BENCHMARK_TYPE = "HEPscore23"
VALID_BENCHMARK_TYPES = frozenset({"hepscore23", "hepspec", "si2k"})

# Published HEPscore23 per logical core spans ~8 (old SMT-on Xeons) to ~31 (Neoverse-V2); anything far
# outside is a unit mistake (whole-node score, HS06 × cores, si2k) rather than a real machine.
MIN_HS23_PER_CORE = 3.0
MAX_HS23_PER_CORE = 80.0

CPU_TABLE = Path(__file__).parent / "data" / "hs23_per_core_by_cpu.csv"


class UnknownBenchmark(ValueError):
    """A benchmark value that cannot be a HEPscore23 per core."""

    def __init__(self, value: float | None, problem: str) -> None:
        super().__init__(f"hs23_per_core={value!r}: {problem}")
        self.value = value
        self.problem = problem


def benchmark_problem(hs23_per_core: float | None) -> str | None:
    """Why this per-core value cannot be published as HEPscore23, or None if it is plausible."""
    if hs23_per_core is None:
        return "unknown benchmark (no HEPscore23 per core recorded)"
    if hs23_per_core != hs23_per_core:  # NaN
        return "benchmark is NaN"
    if not MIN_HS23_PER_CORE <= hs23_per_core <= MAX_HS23_PER_CORE:
        return (
            f"HEPscore23 per core {hs23_per_core} outside the plausible range "
            f"{MIN_HS23_PER_CORE}-{MAX_HS23_PER_CORE} (whole-node score or wrong unit?)"
        )
    return None


def checked_hs23(hs23_per_core: float | None) -> float:
    problem = benchmark_problem(hs23_per_core)
    if problem is not None:
        raise UnknownBenchmark(hs23_per_core, problem)
    assert hs23_per_core is not None
    return hs23_per_core


def service_level_text(hs23_per_core: float) -> str:
    """The ServiceLevel / Benchmark value as written in a message: a plain float, per core."""
    return repr(float(hs23_per_core))


def normalised_seconds(seconds_times_level: Decimal) -> int:
    """Round an exact sum of duration × HEPscore23 per core the way the server's ROUND() does."""
    return int(seconds_times_level.to_integral_value(rounding=ROUND_HALF_EVEN))


def exact_product(seconds: int, hs23_per_core: float) -> Decimal:
    """duration × benchmark as an exact Decimal of the value written in the message (no float drift)."""
    return Decimal(seconds) * Decimal(service_level_text(hs23_per_core))


def hs23_hours(wall_seconds: int, cores: int, hs23_per_core: float) -> float:
    """Work delivered in HS23-hours: wall × cores × HEPscore23 per core."""
    return wall_seconds * cores * hs23_per_core / 3600.0


@functools.cache
def _cpu_table() -> dict[tuple[str, bool], float]:
    table: dict[tuple[str, bool], float] = {}
    with CPU_TABLE.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["CPU"].strip().lower(), row["SMT_enabled"].strip() == "1")
            table[key] = float(row["median_HS23_per_online_cpu"])
    return table


def hs23_per_core_for_cpu(cpu_model: str, smt: bool = True) -> float | None:
    """Median published HEPscore23 per logical core for a CPU model (exact name), or None if unknown."""
    return _cpu_table().get((cpu_model.strip().lower(), smt))
