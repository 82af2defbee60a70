"""EC2's own stop time (StateTransitionReason) ends a unit's billing, not the moment the broker noticed."""

from __future__ import annotations

from datetime import UTC, datetime

from backends.aws import stop_time


def test_a_terminated_instance_carries_the_time_ec2_stopped_it() -> None:
    instance = {
        "State": {"Name": "terminated"},
        "StateTransitionReason": "User initiated (2026-11-30 07:58:12 GMT)",
    }
    assert stop_time(instance) == datetime(2026, 11, 30, 7, 58, 12, tzinfo=UTC)


def test_no_stop_time_while_running_or_when_ec2_gives_none() -> None:
    running = {
        "State": {"Name": "running"},
        "StateTransitionReason": "User initiated (2026-11-30 07:58:12 GMT)",
    }
    spot = {"State": {"Name": "terminated"}, "StateTransitionReason": "Server.SpotInstanceTermination"}
    assert stop_time(running) is None
    assert stop_time(spot) is None
