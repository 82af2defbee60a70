"""Any request spec at all: admission never raises — it is refused naming a field, or admitted/refused with a reason."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policies import evaluate, load_policy, site_offerings
from provisioner.broker import EXAMPLE_POLICY
from provisioner.catalog import load_catalog
from provisioner.domain import Offering, PlanningConstraints
from provisioner.planner import plan
from provisioner.requests import BurstRequestSpec, admit

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
FIELDS = set(BurstRequestSpec.model_fields)


@cache
def world() -> tuple[list[Offering], PlanningConstraints]:
    policy = load_policy(EXAMPLE_POLICY, today=NOW.date())
    catalog = [o for o in load_catalog().offerings if o.region in {"us-east-1", "us-central1"}][:400]
    offerings = catalog + site_offerings(policy, now=NOW)
    constraints = evaluate(
        policy, now=NOW, spend_so_far={}, egress_used_gb={}, offerings_for_pricing=offerings
    )
    return offerings, constraints


hostile = st.one_of(
    st.integers(min_value=-10, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1e-300, 1e308, 1e30, -1, 10**30]),
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e308", "1e-300", "1e30", "12", ""]),
)
sensible = st.one_of(st.sampled_from([1, 2, 8, 16, 64, 128, 1024]), st.floats(min_value=0.01, max_value=5000))
numbers = st.one_of(sensible, sensible, sensible, hostile)
rarely_hostile = st.one_of(*([sensible] * 8), hostile)
texts = st.one_of(
    st.sampled_from(["atlas", "lsst", "cms", "", "A100", "H100", "aws:us-east-1"]), st.text(max_size=80)
)
extras = st.fixed_dictionaries(
    {},
    optional={
        "gpu_model": st.one_of(st.sampled_from(["A100", "H100", "L4"]), texts),
        "archs": st.lists(st.sampled_from(["x86_64", "arm64", "sparc"]), max_size=3),
        "deadline": st.one_of(
            st.datetimes(
                min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
            ),
            st.sampled_from([NOW + timedelta(hours=1), NOW + timedelta(days=3), NOW - timedelta(days=1)]),
        ),
        "data_location": st.one_of(texts, st.sampled_from(["aws:us-east-1", "gce:us-central1"])),
        "input_gb": rarely_hostile,
        "output_gb": rarely_hostile,
        "max_cost_usd": rarely_hostile,
        "cores_per_job": st.one_of(st.sampled_from([1, 4, 8]), rarely_hostile),
        "cores_per_gpu": rarely_hostile,
        "memory_gb_per_core": rarely_hostile,
        "job_hours": rarely_hostile,
        "preemptible": st.booleans(),
        "keep_shape": st.booleans(),
    },
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed requests with hostile values; sometimes a missing or doubled size or length."""
    raw: dict[str, Any] = {"experiment": draw(st.one_of(st.sampled_from(["atlas", "lsst"]), texts))}
    for pair in (("cores", "gpus"), ("duration_hours", "hs23_hours")):
        for key in draw(st.sampled_from([(pair[0],), (pair[1],), (pair[0],), (), pair])):
            raw[key] = draw(st.one_of(st.sampled_from([8, 16, 64, 1024, 2048, 6, 72, 5000]), numbers))
    raw |= draw(extras)
    return raw


def _names_a_field(error: Any) -> bool:
    loc = [str(p) for p in error["loc"]]
    return bool(set(loc) & FIELDS) or any(f in error["msg"] for f in FIELDS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=specs())
def test_admission_never_raises_and_a_refusal_names_the_field(raw: dict[str, Any]) -> None:
    try:
        spec = BurstRequestSpec.model_validate(raw)
    except ValidationError as exc:
        assert all(_names_a_field(e) for e in exc.errors()), exc.errors()
        event("refused by validation")
        return
    # what passed validation is finite and bounded
    for name in ("duration_hours", "hs23_hours", "input_gb", "output_gb", "memory_gb_per_core", "job_hours"):
        value = getattr(spec, name)
        assert value is None or math.isfinite(value)
    assert spec.max_cost_usd is None or spec.max_cost_usd.is_finite()
    offerings, constraints = world()
    result = admit(
        "req-prop", spec, constraints=constraints, offerings=offerings, fleet=[], plan_fn=plan, now=NOW
    )
    assert result.reason
    event("admitted" if result.accepted else "refused by admission")
    assert result.estimated_cost >= 0 and result.estimated_cost.is_finite()
    if result.accepted and spec.max_cost_usd is not None:
        assert result.estimated_cost <= spec.max_cost_usd
    assert isinstance(result.estimated_cost, Decimal)


@st.composite
def valid_specs(draw: st.DrawFn) -> BurstRequestSpec:
    """Specs that pass validation, with values up to the bounds (tiny and huge durations, odd shapes)."""
    per_job = draw(st.sampled_from([1, 2, 8, 64, 4096]))
    size = (
        {"cores": per_job * draw(st.integers(min_value=1, max_value=2000))}
        if draw(st.booleans())
        else {
            "gpus": draw(st.integers(min_value=1, max_value=256)),
            "gpu_model": draw(st.sampled_from(["A100", "H100", "L4", "Z9"])),
        }
    )
    hours = st.floats(min_value=1 / 60, max_value=24 * 366)
    length = (
        {"duration_hours": draw(hours)}
        if draw(st.booleans())
        else {"hs23_hours": draw(st.floats(min_value=1e-6, max_value=1e7)), "job_hours": draw(hours)}
    )
    extra: dict[str, Any] = {
        "experiment": draw(st.sampled_from(["atlas", "lsst", "cms"])),
        "cores_per_job": per_job,
        "archs": draw(st.lists(st.sampled_from(["x86_64", "arm64"]), min_size=1, max_size=2, unique=True)),
        "memory_gb_per_core": draw(st.floats(min_value=0.01, max_value=4096)),
        "input_gb": draw(st.floats(min_value=0, max_value=1e8)),
        "preemptible": draw(st.booleans()),
    }
    if draw(st.booleans()):
        extra["max_cost_usd"] = draw(
            st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**9), places=6)
        )
    if draw(st.booleans()):
        extra["deadline"] = NOW + timedelta(hours=draw(st.floats(min_value=-10, max_value=1e5)))
    if "duration_hours" in length:
        extra["keep_shape"] = draw(st.booleans())
    try:
        return BurstRequestSpec.model_validate(extra | size | length)
    except ValidationError:  # e.g. more than a million slots: covered by the test above
        assume(False)
        raise


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=valid_specs())
def test_admission_of_any_valid_spec_admits_or_refuses_with_a_reason(spec: BurstRequestSpec) -> None:
    offerings, constraints = world()
    result = admit(
        "req-prop", spec, constraints=constraints, offerings=offerings, fleet=[], plan_fn=plan, now=NOW
    )
    assert result.reason and result.estimated_cost.is_finite()
    event("admitted" if result.accepted else "refused by admission")
