"""The bundled offerings catalog: AWS and GCE instance types × regions × markets as `Offering`s.

`load_catalog()` reads the files `scripts/build_catalog.py` writes into `data/` (cached per
path); `Catalog.filter` answers "which offerings fit", `Catalog.columns` gives the planner
numpy arrays over the same offerings, and `default_egress_routes` prices data movement
between the catalog's locations when no policy does.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from provisioner.catalog_build import EGRESS_FILE, FAMILIES_FILE, OFFERING_COLUMNS, OFFERINGS_FILE
from provisioner.catalog_egress import egress_routes, load_egress_tiers
from provisioner.domain import Arch, EgressRoute, EgressTier, Market, Offering

_E = TypeVar("_E", Arch, Market)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Integer codes used in `CatalogColumns.arch` / `.market`.
ARCH_CODES: Mapping[Arch, int] = {Arch.X86_64: 0, Arch.ARM64: 1}
MARKET_CODES: Mapping[Market, int] = {
    Market.ON_DEMAND: 0,
    Market.SPOT: 1,
    Market.ALLOCATION: 2,
    Market.BACKFILL: 3,
}


class CatalogError(Exception):
    """Base of catalog failures."""


class CatalogFileMissing(CatalogError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"catalog file {path} is missing; run scripts/build_catalog.py")
        self.path = path


class CorruptCatalog(CatalogError):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"catalog file {path}: {problem}")
        self.path = path
        self.problem = problem


class UnknownOffering(CatalogError, KeyError):
    def __init__(self, offering_id: str) -> None:
        super().__init__(f"no offering {offering_id!r} in the catalog")
        self.offering_id = offering_id

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class InvalidFilter(CatalogError, ValueError):
    """A filter argument that cannot mean anything (unknown market, negative price...)."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        super().__init__(f"{field}={value!r}: {problem}")
        self.field = field
        self.value = value
        self.problem = problem


@dataclass(frozen=True, slots=True)
class CatalogColumns:
    """The catalog as parallel arrays: row i describes `offerings[i]`.

    `price_per_hour` is float64 for vectorised scoring only; money that is added up or stored
    comes from `offerings[i].price_per_hour` (a Decimal).
    """

    offerings: tuple[Offering, ...]
    cores: npt.NDArray[np.int32]
    memory_gb: npt.NDArray[np.float64]
    gpu_count: npt.NDArray[np.int32]
    price_per_hour: npt.NDArray[np.float64]
    hs23_per_core: npt.NDArray[np.float64]
    interruption_rate_per_hour: npt.NDArray[np.float64]
    arch: npt.NDArray[np.int8]  # ARCH_CODES
    market: npt.NDArray[np.int8]  # MARKET_CODES
    startup_seconds: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.offerings)

    def offering(self, index: int) -> Offering:
        return self.offerings[index]

    @property
    def hs23_per_unit(self) -> npt.NDArray[np.float64]:
        return self.cores * self.hs23_per_core

    @property
    def price_per_hs23_hour(self) -> npt.NDArray[np.float64]:
        return self.price_per_hour / self.hs23_per_unit


def _as_enum(kind: type[_E], field: str, value: _E | str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidFilter(field, value, f"not one of {allowed}") from None


def _as_price(value: Decimal | int | float | str) -> Decimal:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise InvalidFilter("max_price", value, "not a number") from None
    if not price.is_finite() or price < 0:
        raise InvalidFilter("max_price", value, "must be a non-negative number")
    return price


class Catalog:
    """An immutable set of offerings with lookups by id, filters and a columnar view."""

    def __init__(
        self,
        offerings: Iterable[Offering],
        price_sources: Mapping[str, str] | None = None,
        internet_egress: Mapping[str, tuple[EgressTier, ...]] | None = None,
    ) -> None:
        self.offerings: tuple[Offering, ...] = tuple(offerings)
        self._by_id = {offering.id: offering for offering in self.offerings}
        if len(self._by_id) != len(self.offerings):
            raise CatalogError("duplicate offering ids in the catalog")
        self._price_sources = dict(price_sources or {})
        self._internet_egress = dict(internet_egress or {})
        self._columns: CatalogColumns | None = None

    def __len__(self) -> int:
        return len(self.offerings)

    def __iter__(self) -> Iterator[Offering]:
        return iter(self.offerings)

    def __contains__(self, offering_id: object) -> bool:
        return offering_id in self._by_id

    def by_id(self, offering_id: str) -> Offering:
        try:
            return self._by_id[offering_id]
        except KeyError:
            raise UnknownOffering(offering_id) from None

    def price_source(self, offering_id: str) -> str:
        """Where the price comes from: karpenter, vantage, vantage-spot-avg, derived-advisor, cyclenerd."""
        self.by_id(offering_id)
        return self._price_sources.get(offering_id, "")

    def internet_egress(self, location: str) -> tuple[EgressTier, ...]:
        """Internet egress tiers out of "<provider>:<region>"; () when the catalog has none."""
        return self._internet_egress.get(location, ())

    def providers(self) -> frozenset[str]:
        return frozenset(o.provider for o in self.offerings)

    def regions(self) -> frozenset[str]:
        return frozenset(o.region for o in self.offerings)

    def gpu_models(self) -> frozenset[str]:
        return frozenset(o.gpu_model for o in self.offerings if o.gpu_model)

    def locations(self) -> frozenset[str]:
        return frozenset(o.location for o in self.offerings)

    def filter(
        self,
        *,
        arch: Arch | str | None = None,
        gpu: bool | None = None,
        gpu_model: str | None = None,
        region: str | None = None,
        market: Market | str | None = None,
        max_price: Decimal | int | float | str | None = None,
        provider: str | None = None,
        min_cores: int | None = None,
        min_memory_gb: float | None = None,
    ) -> list[Offering]:
        """Offerings matching every given criterion, in catalog order.

        `gpu=True` keeps offerings with at least one GPU, `gpu=False` those without; `gpu_model`
        matches the canonical model name ("A100", "A100-80GB", "L4"...) case-insensitively;
        `region` matches the region (AWS Local Zones count under their parent region);
        `max_price` is USD per unit-hour, inclusive.
        """
        want_arch = _as_enum(Arch, "arch", arch) if arch is not None else None
        want_market = _as_enum(Market, "market", market) if market is not None else None
        price_cap = _as_price(max_price) if max_price is not None else None
        model = gpu_model.casefold() if gpu_model is not None else None
        if min_cores is not None and min_cores < 0:
            raise InvalidFilter("min_cores", min_cores, "must not be negative")
        if min_memory_gb is not None and min_memory_gb < 0:
            raise InvalidFilter("min_memory_gb", min_memory_gb, "must not be negative")
        return [
            o
            for o in self.offerings
            if (want_arch is None or o.arch == want_arch)
            and (gpu is None or (o.gpu_count > 0) == gpu)
            and (model is None or (o.gpu_model is not None and o.gpu_model.casefold() == model))
            and (region is None or o.region == region)
            and (want_market is None or o.market == want_market)
            and (price_cap is None or o.price_per_hour <= price_cap)
            and (provider is None or o.provider == provider)
            and (min_cores is None or o.cores >= min_cores)
            and (min_memory_gb is None or o.memory_gb >= min_memory_gb)
        ]

    def columns(self) -> CatalogColumns:
        """Numpy arrays over all offerings, built once."""
        if self._columns is None:
            self._columns = columns_of(self.offerings)
        return self._columns

    def default_egress_routes(self, locations: Iterable[str] | None = None) -> tuple[EgressRoute, ...]:
        """Default routes between `locations` (default: every location in the catalog)."""
        chosen = self.locations() if locations is None else locations
        return egress_routes(chosen, self._internet_egress)


def columns_of(offerings: tuple[Offering, ...]) -> CatalogColumns:
    """The columnar view of any tuple of offerings (a filtered subset, say)."""
    n = len(offerings)
    return CatalogColumns(
        offerings=offerings,
        cores=np.fromiter((o.cores for o in offerings), dtype=np.int32, count=n),
        memory_gb=np.fromiter((o.memory_gb for o in offerings), dtype=np.float64, count=n),
        gpu_count=np.fromiter((o.gpu_count for o in offerings), dtype=np.int32, count=n),
        price_per_hour=np.fromiter((float(o.price_per_hour) for o in offerings), dtype=np.float64, count=n),
        hs23_per_core=np.fromiter((o.hs23_per_core for o in offerings), dtype=np.float64, count=n),
        interruption_rate_per_hour=np.fromiter(
            (o.interruption_rate_per_hour for o in offerings), dtype=np.float64, count=n
        ),
        arch=np.fromiter((ARCH_CODES[o.arch] for o in offerings), dtype=np.int8, count=n),
        market=np.fromiter((MARKET_CODES[o.market] for o in offerings), dtype=np.int8, count=n),
        startup_seconds=np.fromiter((o.startup_seconds for o in offerings), dtype=np.int32, count=n),
    )


def _read_families(path: Path) -> dict[str, tuple[float, str]]:
    if not path.is_file():
        raise CatalogFileMissing(path)
    with path.open(newline="", encoding="utf-8") as handle:
        return {
            row["family"]: (float(row["hs23_per_core"]), row["assumption"]) for row in csv.DictReader(handle)
        }


# Positional construction is about twice as fast as keywords for 40k offerings. It is used only
# while Offering's fields start in this order and every later field has a default; otherwise the
# loader falls back to keywords, so a change in domain.py costs speed, never correctness.
_POSITIONAL_FIELDS = (
    "id",
    "backend",
    "provider",
    "region",
    "instance_type",
    "family",
    "market",
    "cores",
    "memory_gb",
    "arch",
    "price_per_hour",
    "hs23_per_core",
    "zone",
    "gpu_model",
    "gpu_count",
    "interruption_rate_per_hour",
    "startup_seconds",
    "max_walltime_hours",
    "capacity_units",
    "egress_tiers",
    "allocation",
    "benchmark_assumption",
)
_FIELDS = dataclasses.fields(Offering)
_POSITIONAL_OK = tuple(f.name for f in _FIELDS[: len(_POSITIONAL_FIELDS)]) == _POSITIONAL_FIELDS and all(
    f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    for f in _FIELDS[len(_POSITIONAL_FIELDS) :]
)


def _read_offerings(
    path: Path, families: Mapping[str, tuple[float, str]], egress: Mapping[str, tuple[EgressTier, ...]]
) -> tuple[list[Offering], dict[str, str]]:
    if not path.is_file():
        raise CatalogFileMissing(path)
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    reader = csv.reader(text.splitlines())
    header = tuple(next(reader, ()))
    if header != OFFERING_COLUMNS:
        raise CorruptCatalog(path, f"unexpected columns {header}")
    arches = {a.value: a for a in Arch}
    markets = {m.value: m for m in Market}
    positional = _POSITIONAL_OK
    ints: dict[str, int] = {}
    floats: dict[str, float] = {}
    offerings: list[Offering] = []
    sources: dict[str, str] = {}
    # Columns in OFFERING_COLUMNS order; rows are trusted output of catalog_build.
    try:
        for (
            provider,
            region,
            zone,
            instance_type,
            family,
            market,
            cores,
            memory_gb,
            arch,
            gpu_model,
            gpu_count,
            price,
            price_source,
            _band,
            rate,
            startup,
        ) in reader:
            offering_id = f"{provider}:{zone or region}:{instance_type}:{market}"
            hs23, assumption = families[family]
            # repeated numeric strings are parsed once
            n_cores = ints[cores] if cores in ints else ints.setdefault(cores, int(cores))
            n_gpus = ints[gpu_count] if gpu_count in ints else ints.setdefault(gpu_count, int(gpu_count))
            n_start = ints[startup] if startup in ints else ints.setdefault(startup, int(startup))
            memory = (
                floats[memory_gb] if memory_gb in floats else floats.setdefault(memory_gb, float(memory_gb))
            )
            p_rate = floats[rate] if rate in floats else floats.setdefault(rate, float(rate))
            tiers = egress.get(f"{provider}:{region}", ())
            if positional:
                offering = Offering(
                    offering_id,
                    provider,
                    provider,
                    region,
                    instance_type,
                    family,
                    markets[market],
                    n_cores,
                    memory,
                    arches[arch],
                    Decimal(price),
                    hs23,
                    zone or None,
                    gpu_model or None,
                    n_gpus,
                    p_rate,
                    n_start,
                    None,
                    None,
                    tiers,
                    None,
                    assumption,
                )
            else:
                offering = Offering(
                    id=offering_id,
                    backend=provider,
                    provider=provider,
                    region=region,
                    instance_type=instance_type,
                    family=family,
                    market=markets[market],
                    cores=n_cores,
                    memory_gb=memory,
                    arch=arches[arch],
                    price_per_hour=Decimal(price),
                    hs23_per_core=hs23,
                    zone=zone or None,
                    gpu_model=gpu_model or None,
                    gpu_count=n_gpus,
                    interruption_rate_per_hour=p_rate,
                    startup_seconds=n_start,
                    egress_tiers=tiers,
                    benchmark_assumption=assumption,
                )
            offerings.append(offering)
            sources[offering_id] = price_source
    except (ValueError, KeyError) as error:
        raise CorruptCatalog(path, f"row {reader.line_num}: {error!r}") from error
    return offerings, sources


@functools.lru_cache(maxsize=4)
def _load(directory: Path) -> Catalog:
    egress_path = directory / EGRESS_FILE
    if not egress_path.is_file():
        raise CatalogFileMissing(egress_path)
    egress = load_egress_tiers(egress_path)
    families = _read_families(directory / FAMILIES_FILE)
    offerings, sources = _read_offerings(directory / OFFERINGS_FILE, families, egress)
    return Catalog(offerings, price_sources=sources, internet_egress=egress)


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog in directory `path` (default: the bundled `data/`), loaded once per path."""
    return _load((path or DEFAULT_DATA_DIR).resolve())


def default_egress_routes(
    locations: Iterable[str] | None = None, path: Path | None = None
) -> tuple[EgressRoute, ...]:
    """Published list-price routes between `locations` (default: all catalog locations).

    Same location: free. Same cloud: AWS $0.02/GB; GCE $0.02/GB within a continent, $0.08/GB
    between continents. Across clouds, and to "*": the source's internet egress tiers.
    """
    return load_catalog(path).default_egress_routes(locations)
