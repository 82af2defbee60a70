"""The policy in force follows its file: a valid change applies at the next cycle, a bad one is refused whole."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from policies import PolicyError
from provisioner.broker import EXAMPLE_POLICY, Broker, build_broker
from provisioner.clock import SimulatedClock
from provisioner.policy_source import PolicySource
from provisioner.settings import Settings

EXAMPLE = EXAMPLE_POLICY.read_text()
DAY = date(2026, 11, 23)


def with_experiment(name: str, text: str = EXAMPLE) -> str:
    return text.replace("\n[end]", f'\n[experiments.{name}]\nbackends = ["aws"]\n\n[end]')


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(EXAMPLE)
    return path


@pytest.fixture
def broker(tmp_path: Path, policy_file: Path) -> Broker:
    settings = Settings(state_dir=tmp_path / "state", broker_id="broker-reload-test", policy_file=policy_file)
    return build_broker(settings, clock=SimulatedClock())


def experiments_planned(broker: Broker) -> set[str]:
    constraints = broker.constraints([], list(broker.offerings.values()), [], broker.clock.now())
    return set(constraints.experiments)


def test_a_valid_change_to_the_policy_file_applies_at_the_next_cycle(
    broker: Broker, policy_file: Path
) -> None:
    assert experiments_planned(broker) == {"atlas", "lsst"}
    policy_file.write_text(with_experiment("cms"))
    assert experiments_planned(broker) == {"atlas", "lsst", "cms"}
    assert "cms" in broker.policy.experiments


def test_a_half_written_policy_file_is_refused_and_the_last_good_one_stays(
    broker: Broker, policy_file: Path
) -> None:
    good = with_experiment("cms")
    policy_file.write_text(good)
    assert "cms" in experiments_planned(broker)
    policy_file.write_text(good[: good.index("[experiments.lsst]")])  # a save cut short
    assert experiments_planned(broker) == {"atlas", "lsst", "cms"}
    policy_file.write_text("version = 1\n[end]\n")  # no experiments: refused, not "everything allowed"
    assert experiments_planned(broker) == {"atlas", "lsst", "cms"}
    policy_file.unlink()
    assert experiments_planned(broker) == {"atlas", "lsst", "cms"}
    policy_file.write_text(EXAMPLE)  # fixed: applied
    assert experiments_planned(broker) == {"atlas", "lsst"}


def test_a_reloaded_policy_changes_the_idle_drain_the_reconciler_uses(
    broker: Broker, policy_file: Path
) -> None:
    assert broker.engine.reconciler.settings.idle_drain.total_seconds() == 600
    policy_file.write_text(EXAMPLE.replace("idle_drain_minutes = 10", "idle_drain_minutes = 25"))
    experiments_planned(broker)
    assert broker.engine.reconciler.settings.idle_drain.total_seconds() == 1500
    assert broker.engine.settings.reconcile.idle_drain.total_seconds() == 1500


def test_a_bad_file_is_reported_once_not_every_cycle(policy_file: Path) -> None:
    source = PolicySource.load(policy_file, today=lambda: DAY)
    policy_file.write_text(EXAMPLE.replace("share = 2.0", "share = -1"))
    assert source.refresh() is False and source.refused is not None
    refused = source.refused
    assert source.refresh() is False and source.refused == refused
    assert set(source.current().experiments) == {"atlas", "lsst"}


def test_a_bad_file_at_start_up_is_an_error_naming_its_problems(policy_file: Path) -> None:
    policy_file.write_text("[experiments.atlas]\n")
    with pytest.raises(PolicyError) as caught:
        PolicySource.load(policy_file, today=lambda: DAY)
    assert "end" in {p.key for p in caught.value.problems}


def test_relative_dates_move_on_with_the_clock_of_a_running_broker(policy_file: Path) -> None:
    days = [DAY]
    source = PolicySource.load(policy_file, today=lambda: days[-1])
    first_end = source.current().allocations["polaris-gpu"].ends
    assert source.refresh() is False  # same file, same day: nothing re-read
    days.append(DAY + timedelta(days=1))
    assert source.refresh() is True
    assert source.current().allocations["polaris-gpu"].ends - first_end == timedelta(days=1)
