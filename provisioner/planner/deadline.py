"""HiGHS runs with a time limit that holds: each runs in a kept process of its own, killed at its deadline.

HiGHS checks its `time_limit` only at some points. HiGHS 1.16's MIP presolve, run again when the root node
restarts, was still in `HPresolve::strengthenInequalities` after 7 minutes of a phase limited to 2 s, when
it was stopped: the cost phase of forced `milp` on nasa-ipsc/6000/budget of benchmarks/planner_gap.py,
in about 2 runs of 3 (whether it happens depends on how far HiGHS got when its clock struck;
`python -m benchmarks.time_limit_guard` counts them). Nothing in this process can stop native code, and
`mip_allow_restart=false` did not avoid that presolve; so a run with a time limit goes to a guard process,
killed when the run is GRACE_SHARE of its limit plus GRACE_SECONDS past it. The planner then takes the
run as stopped by its limit with nothing found, which it already handles (the LP path, or the value
phase's point).

One guard process per planner process, as HiGHS keeps one thread pool per process: started on first
use (starting one took 0.47 s; passing a run and its answer about 2 ms, for the 0.8 MB of a 4,269-pair
MILP as for 8-group ones), kept for the next runs, replaced after a kill; the kernel kills it when the
thread that started it ends (Linux), so a hung run never outlives a broker stopped mid-plan. A run with no time limit (or an
infinite one) runs here."""

from __future__ import annotations

import math
import pickle
import threading
from collections.abc import Callable

from provisioner.planner import highs
from provisioner.planner.workers import _Worker

STARTUP_SECONDS = 60.0  # a guard process not ready by then is taken for broken: runs go on here, unguarded
GRACE_SECONDS = 1.0  # past a run's time limit, besides GRACE_SHARE of it, before its process is killed
GRACE_SHARE = 0.5


def ready(_: None) -> bool:
    """The guard's first request: it imports this module, hence HiGHS, before any run is timed."""
    return True


class Guard:
    """Runs `highs.run` in a kept process; `run` returns None for a run killed at its deadline (or whose
    process died)."""

    def __init__(self, solve: Callable[[highs.Run], highs.Outcome] = highs.run) -> None:
        """`solve`: a module-level function (pickled by name), `highs.run` but in tests."""
        self._solve = solve
        self._process: _Worker | None = None
        self._lock = threading.Lock()  # one run at a time in the one process
        self.killed = 0  # runs killed at their deadline (for tests and benchmarks)

    def run(self, r: highs.Run) -> highs.Outcome | None:
        if r.time_limit is None or not math.isfinite(r.time_limit):  # no limit to hold
            return self._solve(r)
        request = pickle.dumps((self._solve, r), protocol=pickle.HIGHEST_PROTOCOL)
        seconds = r.time_limit * (1 + GRACE_SHARE) + GRACE_SECONDS
        with self._lock:
            for _ in range(2):  # a second time when the process had died between runs
                process = self._started()
                if process is None:
                    return self._solve(r)
                try:
                    found = process.ask_within(request, seconds)
                except OSError:  # its pipe is closed: it died before this run reached it
                    self._drop(process)
                    continue
                except BaseException:  # interrupted mid-run: its answer must never be read as the next run's
                    process.process.kill()
                    self._drop(process)
                    raise
                if found is not None:
                    outcome = found[0]
                    assert isinstance(outcome, highs.Outcome)
                    return outcome
                if process.error is not None:  # it raised there: run here, where the error is raised
                    return self._solve(r)
                self.killed += 1  # killed at its deadline, or it died in the run
                self._drop(process)
                return None
            return None

    def _drop(self, process: _Worker) -> None:
        self._process = None
        process.stop()

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                self._drop(self._process)

    def _started(self) -> _Worker | None:
        if self._process is not None:
            return self._process
        try:
            process = _Worker(die_with_parent=True)  # a hung run must not outlive the broker
            up = process.ask_within(pickle.dumps((ready, None)), STARTUP_SECONDS)
        except OSError:  # no process can be started here (a sandbox): unguarded, as before
            return None
        if up is None:
            process.stop()
            return None
        self._process = process
        return process


GUARD = Guard()
