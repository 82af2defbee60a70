"""A broken policy file is refused as a whole, and every problem names the file, the line and the key."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from policies import Policy, PolicyError, load_policy, parse_policy

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.toml"


def _problems(name: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy(DATA / name)
    return caught.value


@pytest.mark.parametrize(
    ("name", "line", "key", "words"),
    [
        ("unknown_key.toml", 5, "experiments.atlas.budgets.montly", ["unknown key 'montly'", "'monthly'"]),
        ("bad_type.toml", 4, "backfill.maxwell.max_nodes", ["valid integer", "'forty'"]),
        ("negative_budget.toml", 6, "experiments.lsst.budgets.weekly", ["greater than or equal to 0"]),
        ("end_before_start.toml", 7, "allocations.perlmutter-cpu.ends", ["not after starts"]),
        ("duplicate_names.toml", 7, "experiments.atlas", ["duplicate name"]),
        (
            "unknown_dataset.toml",
            6,
            "experiments.atlas.datasets[0]",
            ["'atlas-run2'", "did you mean 'atlas-run3'"],
        ),
    ],
)
def test_each_broken_file_names_file_line_key_and_problem(
    name: str, line: int, key: str, words: list[str]
) -> None:
    error = _problems(name)
    assert error.file == str(DATA / name)
    assert (error.line, error.key) == (line, key)
    for word in words:
        assert word in error.problem
    assert f"{DATA / name}:{line}: {key}:" in str(error)


def test_unknown_market_and_arch_are_both_reported_with_suggestions() -> None:
    error = _problems("unknown_market.toml")
    found = {(p.line, p.key): p.problem for p in error.problems}
    assert "did you mean 'spot'" in found[(2, "experiments.atlas.markets[1]")]
    assert "'spott'" in found[(2, "experiments.atlas.markets[1]")]
    assert "did you mean 'arm64'" in found[(3, "experiments.atlas.archs[1]")]


def test_all_problems_are_reported_together_in_file_order() -> None:
    error = _problems("many_problems.toml")
    got = [(p.line, p.key) for p in error.problems]
    assert got == [
        (3, "facility.spend_rate_cap_per_hour"),
        (4, "facility.horizon_hour"),
        (7, 'facility.quotas."aws:p5"'),
        (12, "facility.egress_routes[0].tiers"),
        (17, 'experiments."atlas/prod"'),
        (18, 'experiments."atlas/prod".share'),
    ]
    assert "did you mean 'horizon_hours'" in error.problems[1].problem
    assert "last tier must omit up_to_gb" in error.problems[3].problem


def test_syntax_error_is_a_policy_error_not_a_toml_exception() -> None:
    error = _problems("syntax_error.toml")
    assert "TOML syntax" in error.problem
    with pytest.raises(PolicyError) as caught:
        parse_policy("a = 1\na = 2\n", "inline.toml")
    assert (caught.value.file, caught.value.line, caught.value.key) == ("inline.toml", 2, "a")


def test_missing_required_key_points_at_the_table_that_lacks_it() -> None:
    text = '[backfill.maxwell]\nbackend = "maxwell"\npartition = "allcpu"\nmax_nodes = 4\n'
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    found = {p.key: p for p in caught.value.problems}
    assert found["backfill.maxwell.node"].line == 1
    assert found["backfill.maxwell.eviction_rate_per_hour"].problem == (
        "missing required key 'eviction_rate_per_hour'"
    )


def test_typo_in_a_top_level_table_name_suggests_the_right_one() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("\n[experiment.atlas]\nshare = 1\n", "p.toml")
    assert caught.value.line == 2
    assert "did you mean 'experiments'" in caught.value.problem


def test_unknown_key_in_an_inline_table_is_found_on_its_line() -> None:
    text = (
        "[[facility.egress_routes]]\nsource = 'aws:us-east-1'\ndestination = '*'\n"
        "tiers = [\n  { usd_per_gb = 0.09, up_to = 10 },\n]\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    assert caught.value.line == 5
    assert caught.value.key == "facility.egress_routes[0].tiers[0].up_to"
    assert "did you mean 'up_to_gb'" in caught.value.problem


def test_naive_datetime_and_bad_location_are_refused() -> None:
    text = (
        '[facility.data_locations]\nrun3 = "us-east-1"\n'
        "[allocations.a]\nbackend='b'\naccount='x'\npartition='p'\nnode_hours_granted=10\n"
        "starts = 2026-01-01T00:00:00\nends = 2026-02-01\nmax_walltime_hours=1\nmax_nodes=1\n"
        "node = { name='n', cores=1, memory_gb=1, hs23_per_core=10 }\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    found = {p.key: p for p in caught.value.problems}
    assert "<provider>:<region>" in found["facility.data_locations.run3"].problem
    assert found["allocations.a.starts"].line == 8
    assert "timezone" in found["allocations.a.starts"].problem


def test_gpu_count_without_model_and_names_differing_in_case_are_refused() -> None:
    text = (
        "[experiments.Atlas]\n[experiments.atlas]\n"
        "[backfill.pool]\nbackend='m'\npartition='p'\nmax_nodes=1\neviction_rate_per_hour=0.1\n"
        "node = { name='n', cores=1, memory_gb=1, hs23_per_core=10, gpu_count=2 }\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    keys = {p.key: p.problem for p in caught.value.problems}
    assert "differ only in case" in keys["experiments.atlas"]
    assert "needs gpu_model" in keys["backfill.pool.node.gpu_count"]


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "absent.toml")
    assert "cannot read" in caught.value.problem


def test_the_shipped_example_is_valid_and_complete() -> None:
    policy = load_policy(EXAMPLE, today=date(2026, 11, 23))
    assert isinstance(policy, Policy)
    assert set(policy.experiments) == {"atlas", "lsst"}
    atlas, lsst = policy.experiments["atlas"], policy.experiments["lsst"]
    assert atlas.archs == ("x86_64",) and str(atlas.budgets.monthly) == "50000"
    assert policy.facility.data_locations["atlas-run3"] == "aws:us-east-1"
    assert set(lsst.archs or ()) == {"arm64", "x86_64"} and lsst.gpu.max_gpus == 64
    assert (
        set(lsst.gpu.models or ()) == {"A100", "A100-80GB", "H100", "L4"}
        and str(lsst.budgets.monthly) == "30000"
    )
    assert policy.facility.quotas["aws:p5"] == 0
    assert {a.pacing.value for a in policy.allocations.values()} == {"even", "asap"}
    assert "maxwell" in policy.backfill


def test_relative_dates_count_from_the_day_the_policy_is_read() -> None:
    # the shipped example tells the same story on any day: perlmutter a little ahead of pace, polaris ending soon
    for today in (date(2026, 11, 23), date(2031, 2, 28)):
        policy = load_policy(EXAMPLE, today=today)
        perlmutter, polaris = policy.allocations["perlmutter-cpu"], policy.allocations["polaris-gpu"]
        assert (perlmutter.starts.date(), perlmutter.ends.date()) == (
            date.fromordinal(today.toordinal() - 83),
            date.fromordinal(today.toordinal() + 10),
        )
        assert polaris.ends.date() == date.fromordinal(today.toordinal() + 7)


def test_a_relative_date_without_the_reading_day_is_refused_naming_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(EXAMPLE)
    assert "allocations.perlmutter-cpu.starts" in str(caught.value)
    assert "needs the day the policy is read" in str(caught.value)


def test_a_malformed_relative_date_is_refused_naming_the_key() -> None:
    text = EXAMPLE.read_text().replace('ends = "today+10d"', 'ends = "today+ten days"')
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml", today=date(2026, 11, 23))
    assert "allocations.perlmutter-cpu.ends" in str(caught.value)
