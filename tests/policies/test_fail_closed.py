"""The policy fails closed: a cut-short or empty file is refused, and an unnamed experiment gets nothing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import Policy, PolicyError, evaluate, load_policy, parse_policy
from provisioner.domain import Arch, DemandGroup, Market, Offering, RejectReason
from provisioner.planner import plan
from provisioner.requests import BurstRequestSpec, admit

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("policy*.toml"))  # not auth.toml
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def widenings(part: Policy, full: Policy) -> list[str]:
    """What `part` grants that `full` does not (empty: `part` is at most as generous as `full`)."""
    out: list[str] = []

    def looser_amount(what: str, mine: object, theirs: object) -> None:
        if theirs is not None and (mine is None or mine > theirs):  # type: ignore[operator]
            out.append(f"{what}: {mine} where the full file says {theirs}")

    def looser_set(what: str, mine: tuple[object, ...] | None, theirs: tuple[object, ...] | None) -> None:
        if theirs is not None and (mine is None or not set(mine) <= set(theirs)):
            out.append(f"{what}: {mine} where the full file says {theirs}")

    looser_amount("facility.spend_rate_cap_per_hour", part.facility.spend_rate_cap_per_hour,
                  full.facility.spend_rate_cap_per_hour)  # fmt: skip
    for family, cores in full.facility.quotas.items():
        looser_amount(f"facility.quotas.{family}", part.facility.quotas.get(family), cores)
    for name, mine in part.experiments.items():
        theirs = full.experiments.get(name)
        if theirs is None:
            out.append(f"experiment {name} is not in the full file")
            continue
        for period, amount in theirs.budgets.by_period().items():
            looser_amount(f"{name}.budgets.{period}", mine.budgets.by_period().get(period), amount)
        for period, gb in theirs.egress_cap_gb.by_period().items():
            looser_amount(f"{name}.egress_cap_gb.{period}", mine.egress_cap_gb.by_period().get(period), gb)
        looser_amount(f"{name}.spend_rate_cap_per_hour", mine.spend_rate_cap_per_hour,
                      theirs.spend_rate_cap_per_hour)  # fmt: skip
        looser_amount(f"{name}.gpu.max_gpus", mine.gpu.max_gpus, theirs.gpu.max_gpus)
        looser_amount(f"{name}.share", mine.share, theirs.share)
        for key in ("backends", "markets", "archs"):
            looser_set(f"{name}.{key}", getattr(mine, key), getattr(theirs, key))
        looser_set(f"{name}.gpu.models", mine.gpu.models, theirs.gpu.models)
    for name, alloc in part.allocations.items():
        other = full.allocations.get(name)
        if other is None:
            out.append(f"allocation {name} is not in the full file")
            continue
        looser_amount(f"{name}.hours left", alloc.node_hours_granted - alloc.node_hours_used,
                      other.node_hours_granted - other.node_hours_used)  # fmt: skip
        looser_amount(f"{name}.max_nodes", alloc.max_nodes, other.max_nodes)
        looser_amount(f"{name}.ends", alloc.ends, other.ends)
    for name, pool in part.backfill.items():
        other_pool = full.backfill.get(name)
        if other_pool is None:
            out.append(f"backfill {name} is not in the full file")
            continue
        looser_amount(f"{name}.max_nodes", pool.max_nodes, other_pool.max_nodes)
    return out


def _refused_or_no_wider(text: str, full: Policy) -> None:
    try:
        part = parse_policy(text, "prefix.toml", today=NOW.date())
    except PolicyError:
        return
    assert widenings(part, full) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_line_prefix_of_a_shipped_example_is_refused_or_grants_nothing_more(example: Path) -> None:
    full = load_policy(example, today=NOW.date())
    lines = example.read_text().splitlines(keepends=True)
    accepted = 0
    for n in range(len(lines) + 1):
        text = "".join(lines[:n])
        _refused_or_no_wider(text, full)
        try:
            parse_policy(text, "prefix.toml", today=NOW.date())
            accepted += 1
        except PolicyError:
            pass
    # only the complete file (and the same file with trailing comment lines dropped) is accepted
    trailing = len(list(itertools.takewhile(lambda line: not line.startswith("[end]"), reversed(lines))))
    assert 1 <= accepted <= 1 + trailing


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
@settings(max_examples=200, deadline=None)
@given(cut=st.floats(min_value=0.0, max_value=1.0))
def test_every_character_prefix_of_a_shipped_example_is_refused_or_grants_nothing_more(
    example: Path, cut: float
) -> None:
    """A save cut mid-line ("node_hours_used = 55000" → "= 5") must not open anything either."""
    text = example.read_text()
    _refused_or_no_wider(text[: int(len(text) * cut)], load_policy(example, today=NOW.date()))


def test_the_widening_check_sees_a_budget_lifted_by_a_cut() -> None:
    """The property's own check would catch a prefix that drops lsst's weekly budget."""
    full = load_policy(EXAMPLES[0], today=NOW.date())
    cut = EXAMPLES[0].read_text().replace('weekly = "10000"', "")
    assert any(
        "lsst.budgets.weekly" in w for w in widenings(parse_policy(cut, "cut.toml", today=NOW.date()), full)
    )


def test_a_policy_naming_no_experiment_is_refused_with_a_clear_error() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("version = 1\n[facility]\nhorizon_hours = 24\n[end]\n", "empty.toml")
    problems = {p.key: p.problem for p in caught.value.problems}
    assert "no experiment is named" in problems["experiments"]


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("", "empty.toml")
    keys = {p.key for p in caught.value.problems}
    assert keys == {"experiments", "end"}


def test_a_file_without_its_end_table_is_refused_as_possibly_truncated() -> None:
    text = EXAMPLES[0].read_text().replace("\n[end]", "\n")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "cut.toml", today=NOW.date())
    assert caught.value.key == "end" and "truncated" in caught.value.problem


def test_a_table_after_end_is_refused() -> None:
    text = EXAMPLES[0].read_text() + "\n[experiments.cms]\nshare = 1\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "after.toml", today=NOW.date())
    found = {p.key: p for p in caught.value.problems}
    assert "must be the last table" in found["end"].problem and "experiments.cms" in found["end"].problem


def _offering() -> Offering:
    return Offering(
        id="aws:us-east-1:c7a.2xlarge:on_demand", backend="aws", provider="aws", region="us-east-1",
        instance_type="c7a.2xlarge", family="aws:c7a", market=Market.ON_DEMAND, cores=8, memory_gb=16.0,
        arch=Arch.X86_64, price_per_hour=Decimal("0.41"), hs23_per_core=14.0,
    )  # fmt: skip


def test_the_planner_gives_an_experiment_the_policy_does_not_name_nothing() -> None:
    constraints = evaluate(
        load_policy(EXAMPLES[0], today=NOW.date()),
        now=NOW,
        spend_so_far={},
        egress_used_gb={},
        offerings_for_pricing=None,
    )
    groups = [
        DemandGroup(
            id=f"g-{vo}",
            experiment=vo,
            jobs=4,
            cores_per_job=8,
            memory_gb_per_job=16.0,
            walltime_hours=2.0,
            archs=frozenset({Arch.X86_64}),
        )
        for vo in ("atlas", "cms")
    ]
    result = plan(groups, [_offering()], [], constraints)
    assert {i.group_id for i in result.items} == {"g-atlas"}
    cms = next(e for e in result.explanations if e.group_id == "g-cms")
    assert cms.unserved_jobs == 4
    assert [r.reason for r in cms.rejected] == [RejectReason.NOT_IN_POLICY]


def test_admission_refuses_an_experiment_the_policy_does_not_name() -> None:
    constraints = evaluate(
        load_policy(EXAMPLES[0], today=NOW.date()),
        now=NOW,
        spend_so_far={},
        egress_used_gb={},
        offerings_for_pricing=None,
    )
    spec = BurstRequestSpec(experiment="cms", cores=8, duration_hours=1)
    result = admit(
        "r1", spec, constraints=constraints, offerings=[_offering()], fleet=[], plan_fn=plan, now=NOW
    )
    assert not result.accepted and "'cms' is not in the policy" in result.reason
