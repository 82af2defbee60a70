"""Default data-transfer prices between cloud locations, for when no policy gives a route.

Internet egress tiers per region come from the bundled catalog (`data/egress_tiers.csv`).
Transfer inside one cloud uses published list prices (see `data/README.md`): AWS about
$0.02/GB between any two regions; GCE $0.02/GB within a continent (the upper end of the
published $0.01-0.02) and $0.08/GB between continents. Data crossing clouds leaves through the
source's internet egress tiers. Staying in one location costs nothing here (zone placement
is not known, so cross-zone charges of $0.01/GB are not modelled).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path

from provisioner.domain import EgressRoute, EgressTier

AWS_INTER_REGION_USD_PER_GB = Decimal("0.02")
GCE_SAME_CONTINENT_USD_PER_GB = Decimal("0.02")
GCE_INTER_CONTINENT_USD_PER_GB = Decimal("0.08")
FREE: tuple[EgressTier, ...] = (EgressTier(None, Decimal(0)),)
ANYWHERE = "*"

_GCE_CONTINENTS = (
    ("northamerica-", "north_america"),
    ("us-", "north_america"),
    ("southamerica-", "south_america"),
    ("europe-", "europe"),
    ("asia-", "asia"),
    ("australia-", "oceania"),
    ("me-", "middle_east"),
    ("africa-", "africa"),
)


class UnknownContinent(ValueError):
    def __init__(self, region: str) -> None:
        super().__init__(f"gce region {region!r}: no continent known for its prefix")
        self.region = region


def gce_continent(region: str) -> str:
    for prefix, continent in _GCE_CONTINENTS:
        if region.startswith(prefix):
            return continent
    raise UnknownContinent(region)


def load_egress_tiers(path: Path) -> dict[str, tuple[EgressTier, ...]]:
    """Internet egress tiers by location ("aws:us-east-1") from the bundled CSV."""
    tiers: dict[str, list[EgressTier]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            up_to = float(row["up_to_gb"]) if row["up_to_gb"] else None
            tiers.setdefault(row["location"], []).append(EgressTier(up_to, Decimal(row["usd_per_gb"])))
    return {location: tuple(band) for location, band in tiers.items()}


def _split(location: str) -> tuple[str, str]:
    provider, _, region = location.partition(":")
    return provider, region


def _same_cloud_tiers(provider: str, source: str, destination: str) -> tuple[EgressTier, ...] | None:
    if provider == "aws":
        return (EgressTier(None, AWS_INTER_REGION_USD_PER_GB),)
    if provider == "gce":
        try:
            same = gce_continent(source) == gce_continent(destination)
        except UnknownContinent:
            same = False  # unknown: price it as the dearer inter-continent transfer
        price = GCE_SAME_CONTINENT_USD_PER_GB if same else GCE_INTER_CONTINENT_USD_PER_GB
        return (EgressTier(None, price),)
    return None


def egress_routes(
    locations: Iterable[str], internet: Mapping[str, tuple[EgressTier, ...]]
) -> tuple[EgressRoute, ...]:
    """Routes between every ordered pair of `locations`, plus each source's route to "*".

    Only sources whose internet egress is known (`internet`) get routes: for other providers
    (Slurm sites, OpenStack) the catalog has no price and policies must say.
    """
    unique = sorted(set(locations))
    routes: list[EgressRoute] = []
    for source in unique:
        internet_tiers = internet.get(source)
        if internet_tiers is None:
            continue
        provider, region = _split(source)
        routes.append(EgressRoute(source, source, FREE))
        routes.append(EgressRoute(source, ANYWHERE, internet_tiers))
        for destination in unique:
            if destination == source:
                continue
            other_provider, other_region = _split(destination)
            tiers = _same_cloud_tiers(provider, region, other_region) if other_provider == provider else None
            routes.append(EgressRoute(source, destination, tiers if tiers is not None else internet_tiers))
    return tuple(routes)
