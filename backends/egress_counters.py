"""Bytes-out counters of a cloud's instances, as read from the provider's metrics (CloudWatch, Cloud
Monitoring): how often to read them and what a listing reports in between.

A backend sums each instance's bytes out since launch from the metrics service and reports the
total as `BackendResource.egress_bytes`; the store turns each increase into a `resource.egress`
event. Metric reads are billed (CloudWatch) or quota'd (Cloud Monitoring) and the provider publishes
a datapoint every 1 to 5 minutes, so a scope (a region, a project) is read at most every
`refresh_s`; in between, and when a read fails, the last values stand.

A counter never goes back: a sum that comes out lower (a datapoint missing from one answer, not yet
visible on one replica) would otherwise have its bytes counted twice when it reappears.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_POINTS = 1440  # values per instance and query, at most


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    period_s: int


def lifetime_window(first_launch: datetime, now: datetime) -> Window:
    """The query window covering every instance launched at or after `first_launch`: from the hour of
    that launch (a datapoint is stamped with the start of its 1 or 5 minute period, which may lie just
    before the launch time) to a minute past `now` (a datapoint of this very minute counts too), in
    hourly periods, longer for old instances, so no query returns more than MAX_POINTS per instance.
    The total is the same whatever the period: only the sum of all of them is used."""
    start = first_launch.replace(minute=0, second=0, microsecond=0)
    end = now + timedelta(minutes=1)
    hours = (end - start).total_seconds() / 3600
    return Window(start, end, 3600 * max(1, math.ceil(hours / MAX_POINTS)))


class EgressCounters:
    def __init__(self, refresh_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._values: dict[str, dict[str, int]] = {}  # scope -> instance -> bytes out since launch
        self._read_at: dict[str, float] = {}

    def due(self, scope: str) -> bool:
        """Whether to read `scope` now; if so, the read is counted as made (a failing service is
        retried after `refresh_s`, not hammered every cycle)."""
        now = self._monotonic()
        last = self._read_at.get(scope)
        if last is not None and now - last < self.refresh_s:
            return False
        self._read_at[scope] = now
        return True

    def last(self, scope: str) -> dict[str, int]:
        return self._values.get(scope, {})

    def record(self, scope: str, measured: Mapping[str, int], listed: Collection[str]) -> dict[str, int]:
        """Store a read of `scope`; instances no longer `listed` are forgotten, those measured before
        but absent from this answer keep their counter."""
        before = self._values.get(scope, {})
        values = {i: max(n, before.get(i, 0)) for i, n in measured.items()}
        values.update({i: n for i, n in before.items() if i not in values and i in listed})
        self._values[scope] = values
        return values

    def forget(self, scope: str) -> None:
        """Read `scope` at the next listing (tests, and an operator's refresh)."""
        self._read_at.pop(scope, None)
