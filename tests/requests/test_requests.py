"""Burst requests: validation, admission against policies and the planner's estimate, storage and cost so far."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlmodel import Session

from provisioner.db import open_database
from provisioner.domain import (
    Arch,
    CostBreakdown,
    DemandGroup,
    ExperimentLimits,
    FleetUnit,
    GroupExplanation,
    Offering,
    Plan,
    PlanItem,
    PlanningConstraints,
    RejectReason,
)
from provisioner.model import ResourceRow, to_micro
from provisioner.requests import (
    BurstRequestSpec,
    RequestNotFound,
    admit,
    cancel,
    demand_group_for,
    load_request_groups,
    record_admission,
    view,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def flat_price_planner(price_per_core_hour: Decimal, capacity_jobs: int = 10**9):
    """A planner stand-in with a known answer: every job costs cores × hours × price, up to a capacity."""

    def plan(
        groups: Sequence[DemandGroup],
        offerings: Sequence[Offering],
        fleet: Sequence[FleetUnit],
        constraints: PlanningConstraints,
    ) -> Plan:
        items, explanations = [], []
        for g in groups:
            jobs = min(g.jobs, capacity_jobs)
            cost = price_per_core_hour * g.cores_per_job * Decimal(str(g.walltime_hours)) * jobs
            item = PlanItem(
                g.id, "sim:r:t:on_demand", jobs, jobs, g.walltime_hours, cost, CostBreakdown(Decimal(0))
            )
            items.append(item)
            explanations.append(
                GroupExplanation(
                    g.id,
                    g.experiment,
                    (item,),
                    (),
                    unserved_jobs=g.jobs - jobs,
                    unserved_reason=RejectReason.OVER_BUDGET if jobs < g.jobs else None,
                )
            )
        total = sum((i.cost for i in items), Decimal(0))
        return Plan(tuple(items), (), tuple(explanations), total, Decimal(0))

    return plan


CONSTRAINTS = PlanningConstraints(
    experiments={
        "atlas": ExperimentLimits(
            "atlas", budget_remaining=Decimal(50_000), allowed_archs=frozenset({Arch.X86_64})
        ),
        "lsst": ExperimentLimits(
            "lsst",
            budget_remaining=Decimal(30_000),
            allowed_gpu_models=frozenset({"A100", "H100"}),
            max_gpus=64,
        ),
    }
)


def _admit(spec: BurstRequestSpec, planner=None):
    return admit(
        "req-1",
        spec,
        constraints=CONSTRAINTS,
        offerings=[],
        fleet=[],
        plan_fn=planner or flat_price_planner(Decimal("0.05")),
        now=NOW,
    )


def test_cores_request_becomes_slots_of_cores_per_job_for_the_duration() -> None:
    spec = BurstRequestSpec(experiment="atlas", cores=20_000, duration_hours=72, input_gb=5000)
    group = demand_group_for("r", spec)
    assert (group.jobs, group.cores_per_job, group.walltime_hours) == (2500, 8, 72)
    assert group.input_gb_per_job == pytest.approx(2.0)
    assert group.source == "request" and group.request_id == "r"


def test_hs23_hours_request_is_rounded_up_to_whole_slots() -> None:
    spec = BurstRequestSpec(experiment="atlas", cores=8, hs23_hours=1001, job_hours=12)
    # one slot = 8 cores × 12 h × 10 HS23/core = 960 HS23-hours: 1001 needs two
    assert demand_group_for("r", spec).jobs == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cores": 16, "gpus": 2, "duration_hours": 1}, "exactly one of cores or gpus"),
        ({"cores": 16}, "exactly one of duration_hours or hs23_hours"),
        ({"cores": 12, "duration_hours": 1}, "multiple of cores_per_job"),
        ({"cores": 16, "duration_hours": -1}, "duration_hours"),
        ({"cores": 16, "duration_hours": 1, "data_location": "us-east-1"}, "<provider>:<region>"),
        ({"cores": 16, "duration_hours": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_request_names_the_field_and_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        BurstRequestSpec(experiment="atlas", **fields)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_unknown_experiment_is_rejected_naming_the_known_ones() -> None:
    result = _admit(BurstRequestSpec(experiment="cms", cores=8, duration_hours=1))
    assert not result.accepted
    assert "'cms' is not in the policy" in result.reason and "atlas" in result.reason


def test_architecture_not_allowed_for_the_experiment_is_rejected() -> None:
    result = _admit(BurstRequestSpec(experiment="atlas", cores=8, duration_hours=1, archs=(Arch.ARM64,)))
    assert not result.accepted and "architecture arm64 not allowed" in result.reason


def test_gpu_rules_reject_too_many_and_wrong_model() -> None:
    too_many = _admit(BurstRequestSpec(experiment="lsst", gpus=65, duration_hours=1))
    assert not too_many.accepted and "at most 64" in too_many.reason
    wrong = _admit(BurstRequestSpec(experiment="lsst", gpus=8, gpu_model="T4", duration_hours=1))
    assert not wrong.accepted and "GPU model T4 not allowed" in wrong.reason


def test_deadline_that_cannot_be_met_is_rejected() -> None:
    spec = BurstRequestSpec(
        experiment="atlas", cores=8, duration_hours=48, deadline=NOW + timedelta(hours=24)
    )
    result = _admit(spec)
    assert not result.accepted and "cannot finish before the deadline" in result.reason


def test_estimate_over_max_cost_is_rejected_with_both_amounts() -> None:
    # 8 slots × 8 cores × 10 h × $0.05 = $32
    spec = BurstRequestSpec(experiment="atlas", cores=64, duration_hours=10, max_cost_usd=Decimal(30))
    result = _admit(spec)
    assert not result.accepted
    assert "$32.00" in result.reason and "$30.00" in result.reason


def test_partly_placeable_request_is_rejected_with_the_planners_reason() -> None:
    spec = BurstRequestSpec(experiment="atlas", cores=64, duration_hours=10)
    result = _admit(spec, flat_price_planner(Decimal("0.05"), capacity_jobs=3))
    assert not result.accepted and "only 3 of 8 slots" in result.reason and "over budget" in result.reason


def test_admitted_request_is_stored_with_its_demand_and_cancel_removes_the_demand(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="atlas", cores=64, duration_hours=10, max_cost_usd=Decimal(100))
    result = _admit(spec)
    assert result.accepted and result.estimated_cost == Decimal("32.00")
    record_admission(engine, "req-1", spec, result, now=NOW)
    assert [g.id for g in load_request_groups(engine)] == ["request:req-1"]
    assert load_request_groups(engine)[0] == result.group
    # the slots are wanted together: the planner gets a deadline of duration + boot slack
    assert result.group.deadline == NOW + timedelta(hours=11)

    cancelled = cancel(engine, "req-1")
    assert cancelled.status == "cancelled"
    assert load_request_groups(engine) == []
    with pytest.raises(RequestNotFound):
        cancel(engine, "req-nope")


def test_rejected_request_leaves_no_demand(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="cms", cores=8, duration_hours=1)
    record_admission(engine, "req-2", spec, _admit(spec))
    assert view(engine, "req-2").row.status == "rejected"
    assert load_request_groups(engine) == []


def test_cost_so_far_sums_each_resource_price_over_its_running_time(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    spec = BurstRequestSpec(experiment="atlas", cores=64, duration_hours=10)
    record_admission(engine, "req-3", spec, _admit(spec))
    with Session(engine) as session:
        for i, (launched, released) in enumerate(
            [(NOW - timedelta(hours=2), None), (NOW - timedelta(hours=3), NOW - timedelta(hours=1))]
        ):
            session.add(
                ResourceRow(
                    id=f"res-{i}",
                    backend="sim",
                    offering_id="o",
                    market="on_demand",
                    request_id="req-3",
                    state="running" if released is None else "released",
                    idempotency_token=f"t{i}",
                    price_micro_per_hour=to_micro(Decimal("1.50")),
                    created_at=NOW,
                    updated_at=NOW,
                    state_since=NOW,
                    launched_at=launched,
                    released_at=released,
                )
            )
        session.commit()
    v = view(engine, "req-3", now=NOW)
    assert v.cost_so_far == Decimal("6.00")  # 2 h + 2 h at $1.50
    assert (v.live_resources, v.resources) == (1, 2)
