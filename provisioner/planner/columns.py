"""The offering catalog as numpy columns, so the planner prices every offering for a group at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from provisioner.domain import Arch, Market, Offering

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MARKETS: tuple[Market, ...] = tuple(Market)
ARCHS: tuple[Arch, ...] = tuple(Arch)


class HasOfferings(Protocol):
    """Anything carrying a tuple of offerings, e.g. the bundled `Catalog`."""

    @property
    def offerings(self) -> tuple[Offering, ...]: ...


def _codes(values: Sequence[str]) -> tuple[IntArray, tuple[str, ...]]:
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(v, len(names)) for v in values), dtype=np.int64, count=len(values))
    return codes, tuple(names)


@dataclass(frozen=True, slots=True, eq=False)
class Interruptible:
    """The offerings with an interruption rate, by their distinct (rate, HS23 per core): a job shape's
    interruption factors depend on nothing else, so they are computed once per pair (76 pairs for the
    18,678 such offerings of the bundled catalog) and gathered."""

    offerings: IntArray  # positions in the catalog
    rate: FloatArray  # per pair, per hour
    hs23_per_core: FloatArray  # per pair
    pair: IntArray  # per offering of `offerings`, its pair
    pair_of: IntArray  # per catalog offering, its pair (-1: not interruptible)

    @classmethod
    def of(cls, interruption: FloatArray, hs23_per_core: FloatArray) -> Interruptible:
        offerings = np.flatnonzero(interruption > 0)
        # distinct pairs through integer codes (np.unique over rows is several times slower)
        rates, rate_of = np.unique(interruption[offerings], return_inverse=True)
        speeds, speed_of = np.unique(hs23_per_core[offerings], return_inverse=True)
        codes, pair = np.unique(rate_of * len(speeds) + speed_of, return_inverse=True)
        width = max(len(speeds), 1)
        pair = pair.reshape(-1).astype(np.int64)
        pair_of = np.full(len(interruption), -1, dtype=np.int64)
        pair_of[offerings] = pair
        return cls(offerings, rates[codes // width], speeds[codes % width], pair, pair_of)


@dataclass(frozen=True, slots=True)
class Profiles:
    """The offerings by what a job shape's run time, waves and cost per job before price and packing depend
    on: HS23 per core, start-up hours and interruption pair (191 profiles for the 39,404 offerings of the
    bundled catalog). `cost.base_total` computes those once per profile and gathers them: elementwise maths
    on equal inputs, so the same bits as computed on every offering."""

    of: IntArray  # per catalog offering, its profile
    hs23_per_core: FloatArray  # per profile
    startup_hours: FloatArray  # per profile
    pair: IntArray  # per profile, its `Interruptible` pair (-1: not interruptible)
    risky: IntArray  # the profiles with a pair

    @classmethod
    def of_offerings(
        cls, hs23_per_core: FloatArray, startup_hours: FloatArray, pair_of: IntArray
    ) -> Profiles:
        # distinct triples through integer codes (np.unique over rows is several times slower)
        _, speed_of = np.unique(hs23_per_core, return_inverse=True)
        starts, start_of = np.unique(startup_hours, return_inverse=True)
        pairs = int(pair_of.max(initial=-1)) + 2
        code = (speed_of.reshape(-1) * len(starts) + start_of.reshape(-1)) * pairs + (pair_of + 1)
        _, first, of = np.unique(code, return_index=True, return_inverse=True)
        pair = pair_of[first]
        return cls(
            of.reshape(-1).astype(np.int64),
            hs23_per_core[first],
            startup_hours[first],
            pair,
            np.flatnonzero(pair >= 0),
        )


@dataclass(frozen=True, slots=True, eq=False)
class OfferingColumns:
    """One array per offering attribute, aligned with `offerings`; strings become integer codes."""

    offerings: tuple[Offering, ...]
    index: dict[str, int]
    cores: IntArray
    memory_gb: FloatArray
    gpu_count: IntArray
    gpu_model: IntArray  # code into gpu_models, -1: no GPU
    gpu_models: tuple[str, ...]
    arch: IntArray  # index into ARCHS
    market: IntArray  # index into MARKETS
    backend: IntArray
    backends: tuple[str, ...]
    family: IntArray
    families: tuple[str, ...]
    location: IntArray
    locations: tuple[str, ...]
    price: FloatArray  # USD per unit-hour
    hs23_per_core: FloatArray
    interruption: FloatArray  # per hour
    startup_hours: FloatArray
    max_walltime: FloatArray  # inf: none
    capacity: FloatArray  # inf: unbounded
    allocation_left: FloatArray  # node-hours left, inf for non-allocation offerings
    allocation_ends: FloatArray  # POSIX seconds, inf for non-allocation offerings
    allocation_starts: FloatArray  # POSIX seconds, -inf for non-allocation offerings
    risk: Interruptible  # of `interruption` and `hs23_per_core`
    profiles: Profiles  # of `hs23_per_core`, `startup_hours` and `risk`

    def __len__(self) -> int:
        return len(self.price)

    def without_offerings(self) -> OfferingColumns:
        """The columns alone, for a worker process: the offering objects and the id index stay here."""
        return replace(self, offerings=(), index={})

    @classmethod
    def from_offerings(cls, offerings: Sequence[Offering]) -> OfferingColumns:
        offs = tuple(offerings)
        n = len(offs)

        def floats(values: Sequence[float]) -> FloatArray:
            return np.asarray(values, dtype=np.float64).reshape(n)

        gpu_names: dict[str, int] = {}
        gpu_model = np.fromiter(
            (gpu_names.setdefault(o.gpu_model, len(gpu_names)) if o.gpu_model else -1 for o in offs),
            dtype=np.int64,
            count=n,
        )
        backend, backends = _codes([o.backend for o in offs])
        family, families = _codes([o.family for o in offs])
        location, locations = _codes([o.location for o in offs])
        arch_index = {a: i for i, a in enumerate(ARCHS)}
        market_index = {m: i for i, m in enumerate(MARKETS)}
        inf = float("inf")
        hs23_per_core = floats([o.hs23_per_core for o in offs])
        interruption = floats([o.interruption_rate_per_hour for o in offs])
        startup_hours = floats([o.startup_seconds / 3600.0 for o in offs])
        risk = Interruptible.of(interruption, hs23_per_core)
        return cls(
            offerings=offs,
            index={o.id: i for i, o in enumerate(offs)},
            cores=np.fromiter((o.cores for o in offs), dtype=np.int64, count=n),
            memory_gb=floats([o.memory_gb for o in offs]),
            gpu_count=np.fromiter((o.gpu_count for o in offs), dtype=np.int64, count=n),
            gpu_model=gpu_model,
            gpu_models=tuple(gpu_names),
            arch=np.fromiter((arch_index[o.arch] for o in offs), dtype=np.int64, count=n),
            market=np.fromiter((market_index[o.market] for o in offs), dtype=np.int64, count=n),
            backend=backend,
            backends=backends,
            family=family,
            families=families,
            location=location,
            locations=locations,
            price=floats([float(o.price_per_hour) for o in offs]),
            hs23_per_core=hs23_per_core,
            interruption=interruption,
            startup_hours=startup_hours,
            max_walltime=floats(
                [inf if o.max_walltime_hours is None else o.max_walltime_hours for o in offs]
            ),
            capacity=floats([inf if o.capacity_units is None else float(o.capacity_units) for o in offs]),
            allocation_left=floats([o.allocation.node_hours_left if o.allocation else inf for o in offs]),
            allocation_ends=floats([o.allocation.ends.timestamp() if o.allocation else inf for o in offs]),
            allocation_starts=floats(
                [o.allocation.starts.timestamp() if o.allocation else -inf for o in offs]
            ),
            risk=risk,
            profiles=Profiles.of_offerings(hs23_per_core, startup_hours, risk.pair_of),
        )


def as_columns(offerings: Sequence[Offering] | OfferingColumns | HasOfferings) -> OfferingColumns:
    """Accept offerings in any of the shapes callers hold them."""
    if isinstance(offerings, OfferingColumns):
        return offerings
    if isinstance(offerings, Sequence):
        return OfferingColumns.from_offerings(offerings)
    return OfferingColumns.from_offerings(offerings.offerings)
