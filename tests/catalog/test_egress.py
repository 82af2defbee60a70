"""Default egress routes between catalog locations, and the interruption-band conversion."""

from __future__ import annotations

from decimal import Decimal

import pytest

from provisioner.catalog import default_egress_routes, load_catalog
from provisioner.catalog_build import AWS_BAND_MONTHLY, GCE_SPOT_RATE, aws_band_rate, hourly_rate
from provisioner.catalog_egress import gce_continent
from provisioner.domain import EgressRoute, EgressTier

PLACES = ["aws:us-east-1", "aws:eu-west-1", "gce:europe-west4", "gce:europe-west1", "gce:us-central1"]


def _routes(locations: list[str]) -> dict[tuple[str, str], tuple[EgressTier, ...]]:
    return {(r.source, r.destination): r.tiers for r in default_egress_routes(locations)}


def test_inside_one_cloud_data_moves_at_the_published_inter_region_price() -> None:
    routes = _routes(PLACES)
    assert routes[("aws:us-east-1", "aws:eu-west-1")] == (EgressTier(None, Decimal("0.02")),)
    assert routes[("gce:europe-west4", "gce:europe-west1")] == (EgressTier(None, Decimal("0.02")),)
    assert routes[("gce:europe-west4", "gce:us-central1")] == (EgressTier(None, Decimal("0.08")),)


def test_across_clouds_and_to_anywhere_data_pays_the_source_internet_tiers() -> None:
    catalog = load_catalog()
    routes = _routes(PLACES)
    aws_internet = catalog.internet_egress("aws:us-east-1")
    assert aws_internet and aws_internet[1].usd_per_gb == Decimal("0.09")
    assert routes[("aws:us-east-1", "gce:europe-west4")] == aws_internet
    assert routes[("aws:us-east-1", "*")] == aws_internet
    assert routes[("gce:europe-west4", "aws:eu-west-1")] == catalog.internet_egress("gce:europe-west4")


def test_staying_in_one_location_is_free_and_unknown_providers_get_no_route() -> None:
    routes = _routes([*PLACES, "slurm:maxwell"])
    assert routes[("gce:us-central1", "gce:us-central1")] == (EgressTier(None, Decimal(0)),)
    assert not any(source == "slurm:maxwell" for source, _ in routes)
    # but data flowing *to* the HPC site from a cloud is priced as internet egress
    assert ("aws:us-east-1", "slurm:maxwell") in routes


def test_default_routes_cover_every_ordered_pair_of_catalog_locations() -> None:
    catalog = load_catalog()
    locations = catalog.locations()
    routes = default_egress_routes()
    assert all(isinstance(r, EgressRoute) for r in routes)
    # n×(n−1) pairs + one self route + one "*" route per location
    assert len(routes) == len(locations) * (len(locations) + 1)


def test_gce_continents_group_regions_by_prefix() -> None:
    assert gce_continent("northamerica-northeast1") == gce_continent("us-east4") == "north_america"
    assert gce_continent("europe-west4") == "europe"
    assert gce_continent("australia-southeast1") == "oceania"


def test_interruption_bands_convert_to_increasing_hourly_rates_that_compound_back() -> None:
    bands = ["<5%", "5-10%", "10-15%", "15-20%", ">20%"]
    rates = [aws_band_rate(band) for band in bands]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    for band, rate in zip(bands, rates, strict=True):
        assert 1 - (1 - rate) ** 730 == pytest.approx(AWS_BAND_MONTHLY[band])
    daily = 1 - (1 - GCE_SPOT_RATE) ** 24
    assert daily == pytest.approx(0.10)
    assert hourly_rate(0.0, 10) == 0.0
