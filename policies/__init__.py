"""Facility policies: the policy file (TOML), its validation, and its evaluation into planning constraints."""

from __future__ import annotations

from policies.egress import find_route, marginal_egress_cost, marginal_egress_cost_array
from policies.errors import PolicyError, PolicyProblem
from policies.evaluate import allocation_pacing, evaluate, experiment_limits, paced_offerings
from policies.load import load_policy, parse_policy
from policies.pacing import (
    PacingStatus,
    allocation_available,
    allocation_hour_value,
    node_hours_on_pace,
    pacing_status,
)
from policies.periods import period_bounds
from policies.schema import BudgetPeriod, Policy
from policies.site import dataset_location, site_offerings

__all__ = [
    "BudgetPeriod",
    "PacingStatus",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "allocation_available",
    "allocation_hour_value",
    "allocation_pacing",
    "dataset_location",
    "evaluate",
    "experiment_limits",
    "find_route",
    "load_policy",
    "marginal_egress_cost",
    "marginal_egress_cost_array",
    "node_hours_on_pace",
    "paced_offerings",
    "pacing_status",
    "parse_policy",
    "period_bounds",
    "site_offerings",
]
