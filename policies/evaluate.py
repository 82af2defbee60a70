"""Policy evaluation: a validated `Policy` plus what was spent and moved so far → `PlanningConstraints` now.

Pure functions; the engine supplies spend and egress from its ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from policies.pacing import PacingStatus, pacing_status
from policies.schema import ExperimentPolicy, Facility, Policy
from policies.site import site_offerings
from provisioner.domain import (
    EgressRoute,
    EgressTier,
    ExperimentLimits,
    Market,
    Offering,
    PlanningConstraints,
)

_MICRO = Decimal("0.000001")


def _usage_for(key: str, period: str, used: Mapping[str, Decimal] | Mapping[str, float]) -> Decimal:
    # "<experiment>/<period>" (when an experiment has several periods) wins over "<experiment>"
    value = used.get(f"{key}/{period}", used.get(key, 0))
    return value if isinstance(value, Decimal) else Decimal(str(value))


def experiment_limits(
    name: str,
    experiment: ExperimentPolicy,
    *,
    spend_so_far: Mapping[str, Decimal],
    egress_used_gb: Mapping[str, float],
) -> ExperimentLimits:
    """One experiment's limits net of what it already spent and moved in each current period."""
    budgets = experiment.budgets.by_period()
    remaining = [
        max(Decimal(0), budget - _usage_for(name, p.value, spend_so_far)) for p, budget in budgets.items()
    ]
    caps = experiment.egress_cap_gb.by_period()
    egress_left = [
        max(0.0, cap - float(_usage_for(name, p.value, egress_used_gb))) for p, cap in caps.items()
    ]
    gpu = experiment.gpu
    return ExperimentLimits(
        experiment=name,
        budget_remaining=min(remaining) if remaining else None,
        spend_rate_cap_per_hour=experiment.spend_rate_cap_per_hour,
        allowed_backends=frozenset(experiment.backends) if experiment.backends is not None else None,
        allowed_markets=frozenset(experiment.markets) if experiment.markets is not None else None,
        allowed_archs=frozenset(experiment.archs) if experiment.archs is not None else None,
        allowed_gpu_models=frozenset(gpu.models) if gpu.models is not None else None,
        max_gpus=gpu.max_gpus,
        egress_cap_gb=min(egress_left) if egress_left else None,
        share=experiment.share,
    )


def policy_routes(policy: Policy) -> tuple[EgressRoute, ...]:
    return tuple(
        EgressRoute(
            source=route.source,
            destination=route.destination,
            tiers=tuple(EgressTier(up_to_gb=t.up_to_gb, usd_per_gb=t.usd_per_gb) for t in route.tiers),
        )
        for route in policy.facility.egress_routes
    )


def reference_price_per_node_hour(
    offering: Offering, pricing: Sequence[Offering] | None, facility: Facility
) -> Decimal:
    """What one node-hour of `offering` would cost on the cheapest on-demand cloud offering that can do
    the same work (same arch per HS23-hour; same GPU model per GPU-hour), else the facility's reference."""
    cloud = [o for o in pricing or () if o.market is Market.ON_DEMAND and o.price_per_hour > 0]
    if offering.gpu_count > 0:
        model = (offering.gpu_model or "").casefold()
        per_gpu = [
            o.price_per_hour / o.gpu_count
            for o in cloud
            if o.gpu_count > 0 and (o.gpu_model or "").casefold() == model
        ]
        rate = min(per_gpu) if per_gpu else facility.reference_usd_per_gpu_hour
        return (rate * offering.gpu_count).quantize(_MICRO)
    per_hs23 = [
        o.price_per_hour / Decimal(repr(o.hs23))
        for o in cloud
        if o.gpu_count == 0 and o.arch is offering.arch and o.hs23 > 0
    ]
    rate = min(per_hs23) if per_hs23 else facility.reference_usd_per_hs23_hour
    return (rate * Decimal(repr(offering.hs23))).quantize(_MICRO)


def allocation_pacing(
    policy: Policy, *, now: datetime, offerings_for_pricing: Sequence[Offering] | None = None
) -> dict[str, PacingStatus]:
    """Pacing status of every allocation offering by offering id, including unavailable ones.

    An allocation offering in `offerings_for_pricing` with the same id supplies fresher usage
    (node_hours_used from the site's accounting) than the policy file.
    """
    fresher = {o.id: o.allocation for o in offerings_for_pricing or () if o.allocation is not None}
    statuses = {}
    for offering in site_offerings(policy):
        info = fresher.get(offering.id) or offering.allocation
        if info is None:
            continue
        tolerance = policy.allocations[info.name].pace_tolerance if info.name in policy.allocations else 0.05
        reference = reference_price_per_node_hour(offering, offerings_for_pricing, policy.facility)
        statuses[offering.id] = pacing_status(info, now, reference, tolerance)
    return statuses


def paced_offerings(
    policy: Policy, *, now: datetime, offerings_for_pricing: Sequence[Offering] | None = None
) -> frozenset[str]:
    """Allocation offerings ahead of their pace by more than the tolerance ("allocation paced")."""
    statuses = allocation_pacing(policy, now=now, offerings_for_pricing=offerings_for_pricing)
    return frozenset(oid for oid, status in statuses.items() if status.paced)


def evaluate(
    policy: Policy,
    *,
    now: datetime,
    spend_so_far: Mapping[str, Decimal],
    egress_used_gb: Mapping[str, float],
    offerings_for_pricing: Sequence[Offering] | None,
    default_routes: Sequence[EgressRoute] = (),
) -> PlanningConstraints:
    """The constraints for one planning round at `now`.

    `spend_so_far`: experiment → USD spent in the current period of its budget; an experiment with
    budgets for several periods may give "<experiment>/<period>" keys (e.g. "atlas/weekly").
    `egress_used_gb`: keys without ':' are experiments (GB moved this period, for the egress caps, with
    the same "/<period>" form); keys with ':' are source locations ("aws:us-east-1": GB out this
    period, for marginal tier pricing) and are passed on to the planner.
    Allocation values only cover allocations that are offered now (started, not ended, hours left).
    """
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    experiments = {
        name: experiment_limits(name, experiment, spend_so_far=spend_so_far, egress_used_gb=egress_used_gb)
        for name, experiment in policy.experiments.items()
    }
    values = {
        oid: status.value_per_node_hour
        for oid, status in allocation_pacing(
            policy, now=now, offerings_for_pricing=offerings_for_pricing
        ).items()
        if status.available
    }
    return PlanningConstraints(
        experiments=experiments,
        only_named_experiments=True,
        spend_rate_cap_per_hour=policy.facility.spend_rate_cap_per_hour,
        family_quota_cores=dict(policy.facility.quotas),
        egress_routes=policy_routes(policy) + tuple(default_routes),
        egress_used_gb={k: float(v) for k, v in egress_used_gb.items() if ":" in k},
        allocation_hour_value=values,
        horizon_hours=policy.facility.horizon_hours,
        idle_drain_hours=policy.facility.timeouts.idle_drain_minutes / 60.0,
        now=now,
    )
