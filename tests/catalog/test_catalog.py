"""The bundled catalog: size, coverage, prices, benchmarks, ids, filters and the columnar view."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.catalog import (
    ARCH_CODES,
    MARKET_CODES,
    Catalog,
    CatalogFileMissing,
    InvalidFilter,
    UnknownOffering,
    load_catalog,
)
from provisioner.domain import Arch, Market, Offering


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_bundled_catalog_has_over_20000_offerings_across_both_clouds_and_markets(catalog: Catalog) -> None:
    assert len(catalog) > 20_000
    kinds = {(o.provider, o.market) for o in catalog}
    assert kinds == {
        ("aws", Market.ON_DEMAND),
        ("aws", Market.SPOT),
        ("gce", Market.ON_DEMAND),
        ("gce", Market.SPOT),
    }
    assert len({o.region for o in catalog if o.provider == "aws"}) >= 25
    assert len({o.region for o in catalog if o.provider == "gce"}) >= 40


def test_arm_and_gpu_offerings_are_present_on_both_clouds(catalog: Catalog) -> None:
    for provider in ("aws", "gce"):
        assert catalog.filter(provider=provider, arch=Arch.ARM64)
        assert catalog.filter(provider=provider, gpu=True)
    assert {"A100", "H100", "L4", "T4"} <= catalog.gpu_models()


def test_prices_are_positive_decimals_with_at_most_micro_dollar_precision(catalog: Catalog) -> None:
    for o in catalog:
        assert isinstance(o.price_per_hour, Decimal)
        assert o.price_per_hour > 0, o.id
        exponent = o.price_per_hour.as_tuple().exponent
        assert isinstance(exponent, int) and exponent >= -6, o.id


def test_every_offering_has_a_positive_benchmark_and_says_how_it_was_derived(catalog: Catalog) -> None:
    for o in catalog:
        assert o.hs23_per_core > 0, o.id
        assert o.benchmark_assumption.startswith(o.family + " -> "), o.id


def test_spot_is_cheaper_than_on_demand_at_the_same_place(catalog: Catalog) -> None:
    compared = 0
    for o in catalog.filter(market=Market.SPOT):
        on_demand_id = o.id.rsplit(":", 1)[0] + ":on_demand"
        if on_demand_id in catalog:
            assert o.price_per_hour < catalog.by_id(on_demand_id).price_per_hour, o.id
            compared += 1
    assert compared > 15_000


def test_derived_aws_spot_prices_are_a_discount_on_a_published_on_demand_price(catalog: Catalog) -> None:
    derived = [o for o in catalog if catalog.price_source(o.id) == "derived-advisor"]
    assert len(derived) > 500
    for o in derived:
        assert o.provider == "aws" and o.market is Market.SPOT
        on_demand = catalog.by_id(o.id.rsplit(":", 1)[0] + ":on_demand")
        assert catalog.price_source(on_demand.id) in {"karpenter", "vantage"}
        assert Decimal(0) < o.price_per_hour < on_demand.price_per_hour
        assert o.interruption_rate_per_hour > 0


def test_only_spot_offerings_carry_an_interruption_rate(catalog: Catalog) -> None:
    for o in catalog:
        if o.market is Market.SPOT:
            assert 0 < o.interruption_rate_per_hour < 0.05, o.id
        else:
            assert o.interruption_rate_per_hour == 0, o.id


def test_offering_ids_are_unique_and_spell_backend_place_type_market(catalog: Catalog) -> None:
    assert len({o.id for o in catalog}) == len(catalog)
    for o in catalog:
        assert o.backend == o.provider
        assert o.id == f"{o.backend}:{o.zone or o.region}:{o.instance_type}:{o.market.value}"
        assert o.family == f"{o.provider}:{o.family.split(':', 1)[1]}"
    assert catalog.by_id("aws:us-east-1:m7g.xlarge:on_demand").family == "aws:m7g"
    assert catalog.by_id("gce:us-central1:n2d-standard-8:spot").family == "gce:n2d"


def test_aws_local_zone_offerings_count_under_their_parent_region(catalog: Catalog) -> None:
    local = [o for o in catalog if o.zone]
    assert local
    for o in local:
        assert o.provider == "aws"
        assert o.zone is not None and o.zone.startswith(o.region + "-")
    assert any(o.zone for o in catalog.filter(region="us-east-1"))


def test_cpu_mapping_follows_the_documented_processor_generations(catalog: Catalog) -> None:
    def hs23(offering_id: str) -> float:
        return catalog.by_id(offering_id).hs23_per_core

    graviton2 = hs23("aws:us-east-1:m6g.xlarge:on_demand")
    graviton4 = hs23("aws:us-east-1:m8g.xlarge:on_demand")
    assert graviton2 == 16.5  # Neoverse-N1, no SMT
    assert graviton4 == 28.55  # Neoverse-V2 (Grace row)
    # a Genoa vCPU on m7a is a whole core; a Sapphire Rapids vCPU on m7i is a hyperthread
    assert hs23("aws:us-east-1:m7a.xlarge:on_demand") > hs23("aws:us-east-1:m7i.xlarge:on_demand")
    assert hs23("gce:us-central1:c4a-standard-8:on_demand") == graviton4
    assert hs23("gce:us-central1:t2a-standard-8:on_demand") == 18.7
    assert "lower bound" in catalog.by_id("aws:us-east-1:m7g.xlarge:on_demand").benchmark_assumption


def test_excluded_kinds_are_absent(catalog: Catalog) -> None:
    types = {o.instance_type for o in catalog}
    for absent in ("t3.large", "t4g.large", "inf2.xlarge", "trn1.2xlarge", "e2-micro", "f1-micro"):
        assert absent not in types
    assert all(o.cores >= 1 for o in catalog)


def test_every_offering_carries_marginal_internet_egress_tiers(catalog: Catalog) -> None:
    for o in catalog:
        tiers = o.egress_tiers
        assert tiers, o.id
        assert tiers[-1].up_to_gb is None
        edges = [t.up_to_gb for t in tiers[:-1]]
        assert all(edge is not None for edge in edges)
        assert edges == sorted(e for e in edges if e is not None)
        assert all(t.usd_per_gb >= 0 for t in tiers)
    aws = catalog.by_id("aws:us-east-1:m7g.xlarge:on_demand").egress_tiers
    assert aws[0].usd_per_gb == 0 and aws[1].usd_per_gb == Decimal("0.09")
    gce = catalog.by_id("gce:us-central1:n2d-standard-8:on_demand").egress_tiers
    assert [t.usd_per_gb for t in gce] == sorted((t.usd_per_gb for t in gce), reverse=True)


FILTERS: list[tuple[dict[str, object], Callable[[Offering], bool]]] = [
    ({"arch": "arm64"}, lambda o: o.arch is Arch.ARM64),
    ({"arch": Arch.X86_64}, lambda o: o.arch is Arch.X86_64),
    ({"gpu": True}, lambda o: o.gpu_count > 0),
    ({"gpu": False}, lambda o: o.gpu_count == 0),
    ({"gpu_model": "a100"}, lambda o: o.gpu_model == "A100"),
    ({"region": "us-east-1"}, lambda o: o.region == "us-east-1"),
    ({"market": "spot"}, lambda o: o.market is Market.SPOT),
    ({"market": Market.ON_DEMAND}, lambda o: o.market is Market.ON_DEMAND),
    ({"max_price": "0.5"}, lambda o: o.price_per_hour <= Decimal("0.5")),
    ({"max_price": 2.5}, lambda o: o.price_per_hour <= Decimal("2.5")),
    ({"provider": "aws"}, lambda o: o.provider == "aws"),
    ({"min_cores": 16}, lambda o: o.cores >= 16),
    ({"min_memory_gb": 256}, lambda o: o.memory_gb >= 256),
]


@pytest.mark.parametrize(("kwargs", "predicate"), FILTERS, ids=[str(k) for k, _ in FILTERS])
def test_each_filter_keeps_exactly_the_matching_offerings(
    catalog: Catalog, kwargs: dict[str, object], predicate: Callable[[Offering], bool]
) -> None:
    result = catalog.filter(**kwargs)  # type: ignore[arg-type]
    expected = [o for o in catalog if predicate(o)]
    assert 0 < len(result) < len(catalog)
    assert result == expected


def test_filters_combine_as_an_intersection(catalog: Catalog) -> None:
    result = catalog.filter(arch="arm64", market="spot", provider="gce", min_cores=16, max_price="1")
    assert result
    assert set(result) == (
        set(catalog.filter(arch="arm64"))
        & set(catalog.filter(market="spot"))
        & set(catalog.filter(provider="gce"))
        & set(catalog.filter(min_cores=16))
        & set(catalog.filter(max_price="1"))
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"market": "preemptible"}, "market"),
        ({"arch": "sparc"}, "arch"),
        ({"max_price": "cheap"}, "max_price"),
        ({"max_price": -1}, "max_price"),
        ({"min_cores": -4}, "min_cores"),
    ],
)
def test_meaningless_filter_arguments_raise_naming_the_field(
    catalog: Catalog, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidFilter) as raised:
        catalog.filter(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert field in str(raised.value)


def test_unknown_offering_id_raises_a_typed_error(catalog: Catalog) -> None:
    with pytest.raises(UnknownOffering, match=re.escape("aws:mars-1:m7g.large:spot")):
        catalog.by_id("aws:mars-1:m7g.large:spot")


def test_load_catalog_is_cached_per_path(catalog: Catalog) -> None:
    assert load_catalog() is catalog


def test_loading_from_an_empty_directory_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileMissing, match=re.escape("egress_tiers.csv")):
        load_catalog(tmp_path)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0, max_value=20_000))
def test_columns_describe_the_same_offering_as_the_index(index: int) -> None:
    columns = load_catalog().columns()
    o = columns.offering(index)
    assert columns.cores[index] == o.cores
    assert columns.memory_gb[index] == o.memory_gb
    assert columns.gpu_count[index] == o.gpu_count
    assert columns.price_per_hour[index] == pytest.approx(float(o.price_per_hour))
    assert columns.hs23_per_core[index] == o.hs23_per_core
    assert columns.interruption_rate_per_hour[index] == o.interruption_rate_per_hour
    assert columns.arch[index] == ARCH_CODES[o.arch]
    assert columns.market[index] == MARKET_CODES[o.market]
    assert columns.startup_seconds[index] == o.startup_seconds


def test_columns_cover_the_whole_catalog_and_score_per_hs23_hour(catalog: Catalog) -> None:
    columns = catalog.columns()
    assert len(columns) == len(catalog)
    assert catalog.columns() is columns
    best = int(np.argmin(columns.price_per_hs23_hour))
    o = catalog.offerings[best]
    cheapest = min(catalog, key=lambda x: x.price_per_hour / Decimal(repr(x.hs23)))
    assert o.price_per_hour / Decimal(repr(o.hs23)) == cheapest.price_per_hour / Decimal(repr(cheapest.hs23))


def test_keyword_fallback_loader_builds_the_same_offerings(monkeypatch: pytest.MonkeyPatch) -> None:
    import provisioner.catalog as module

    fast = load_catalog()
    monkeypatch.setattr(module, "_POSITIONAL_OK", False)
    module._load.cache_clear()
    try:
        slow = load_catalog()
    finally:
        module._load.cache_clear()
    assert slow is not fast
    assert slow.offerings == fast.offerings
