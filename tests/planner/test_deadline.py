"""A MILP phase's time limit holds even where HiGHS overruns it (`planner/deadline.py`): the run goes to a
guard process killed at its deadline, and the planner plans on as after any time limit."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.planner import deadline, highs, plan
from provisioner.planner.deadline import Guard
from provisioner.planner.problem import solve_lexicographic
from tests.planner.instances import random_instance
from tests.planner.test_jobs_lp import _problem
from tests.planner.test_properties import check_plan

ROOT = Path(__file__).resolve().parents[2]
STUCK_GAP = 0.123  # a run asked with this gap hangs, as HiGHS 1.16's presolve did
FAILING_GAP = 0.456  # and with this one raises
CRASHING_GAP = 0.789  # and with this one takes its process down (a segfault in HiGHS)


def stuck_on_gap(r: highs.Run) -> highs.Outcome:
    """The guard's solve in these tests (module level: pickled by name)."""
    if r.gap == STUCK_GAP:
        time.sleep(3600)
    if r.gap == FAILING_GAP:
        raise ValueError("HiGHS: the model is broken")
    if r.gap == CRASHING_GAP:
        os._exit(11)
    return highs.run(r)


class Here:
    """Every run in this process, no deadline: what solve_lexicographic gave before the guard."""

    def run(self, r: highs.Run) -> highs.Outcome | None:
        return highs.run(r)


class KillsPhase:
    """A guard whose `phase`-th run (1: value, 2: cost) was killed at its deadline."""

    def __init__(self, phase: int) -> None:
        self.phase, self.calls = phase, 0

    def run(self, r: highs.Run) -> highs.Outcome | None:
        self.calls += 1
        return None if self.calls == self.phase else highs.run(r)


def test_a_run_past_its_deadline_is_killed_and_the_next_runs_in_a_new_process() -> None:
    guard = Guard(stuck_on_gap)
    problem = _problem(3)
    assert problem.pairs
    first = solve_lexicographic(problem, True, time_limit=5.0, runs=guard)  # starts the process
    process = guard._process
    assert process is not None and first.status == "optimal"
    start = time.monotonic()
    stuck = solve_lexicographic(problem, True, time_limit=0.5, gap=STUCK_GAP, runs=guard)
    waited = time.monotonic() - start
    # killed at 0.5 s × 1.5 + 1 s: nothing found in the value phase, the all-zero plan
    assert stuck.status == "none" and not stuck.y.any()
    assert 1.7 <= waited < 30 and guard.killed == 1
    assert process.process.returncode is not None  # killed and reaped
    again = solve_lexicographic(problem, True, time_limit=5.0, runs=guard)
    assert guard._process is not None and guard._process is not process
    assert np.array_equal(again.y, first.y) and again.status == "optimal"
    guard.close()


def test_a_guard_process_that_died_between_runs_is_replaced_and_the_run_done() -> None:
    guard = Guard(stuck_on_gap)
    problem = _problem(3)
    first = solve_lexicographic(problem, True, time_limit=5.0, runs=guard)
    assert guard._process is not None
    guard._process.process.kill()  # the out-of-memory killer, an operator
    guard._process.process.wait()
    again = solve_lexicographic(problem, True, time_limit=5.0, runs=guard)
    assert again.status == "optimal" and np.array_equal(again.y, first.y) and guard.killed == 0
    guard.close()


def test_a_run_that_fails_in_the_guard_process_raises_its_error_here() -> None:
    guard = Guard(stuck_on_gap)
    with pytest.raises(ValueError, match="the model is broken"):
        solve_lexicographic(_problem(3), True, time_limit=5.0, gap=FAILING_GAP, runs=guard)
    assert guard.killed == 0
    guard.close()


def test_a_run_that_takes_the_guard_process_down_is_not_run_again_here() -> None:
    """Run here, a crash in HiGHS would take the broker down: it counts as stopped with nothing found."""
    guard = Guard(stuck_on_gap)
    got = solve_lexicographic(_problem(3), True, time_limit=5.0, gap=CRASHING_GAP, runs=guard)
    assert got.status == "none" and guard.killed == 1 and guard._process is None


def test_a_guard_process_busy_with_a_hung_run_ends_with_the_process_that_started_it() -> None:
    """A broker killed mid-plan must not leave a hung HiGHS run spinning: the kernel kills its guard."""
    code = textwrap.dedent(
        """
        import os, sys, threading, time
        from provisioner.planner.deadline import Guard
        from provisioner.planner.problem import solve_lexicographic
        from tests.planner.test_deadline import STUCK_GAP, stuck_on_gap
        from tests.planner.test_jobs_lp import _problem
        guard = Guard(stuck_on_gap)
        problem = _problem(3)
        args = dict(time_limit=3600.0, gap=STUCK_GAP, runs=guard)
        threading.Thread(target=solve_lexicographic, args=(problem, True), kwargs=args, daemon=True).start()
        while guard._process is None:
            time.sleep(0.05)
        print(guard._process.process.pid, flush=True)
        time.sleep(1.0)  # the run under way in the guard
        os._exit(0)  # killed mid-plan
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie until init reaps it: gone all the same
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def test_a_run_with_no_time_limit_or_an_infinite_one_runs_here_with_nothing_to_hold() -> None:
    guard = Guard(stuck_on_gap)
    problem = _problem(3)
    for limit in (None, math.inf):
        assert solve_lexicographic(problem, True, time_limit=limit, runs=guard).status == "optimal"
    assert guard._process is None  # no process started


def test_a_killed_cost_phase_keeps_the_value_phases_point_and_says_it_was_cut_short() -> None:
    problem = _problem(3)
    value_phase_only = solve_lexicographic(problem, True, time_limit=5.0, runs=KillsPhase(2))
    both = solve_lexicographic(problem, True, time_limit=5.0, runs=Here())
    assert value_phase_only.status == "incumbent" and both.status == "optimal"
    value = problem.value[problem.pair_group]
    assert float(value @ value_phase_only.y) >= float(value @ both.y) * (1 - 1e-9)  # as much served


def test_a_forced_milp_whose_every_phase_is_killed_still_plans_within_every_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`plan` runs its MILPs through the process-wide guard; each killed, it plans by the repaired LP."""
    monkeypatch.setattr(deadline.GUARD, "run", lambda r: None)
    inst = random_instance(7, groups=40, offerings=40, fleet=3)
    p = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method="milp")
    check_plan(inst, p)
    assert "time limit" in p.solver and p.items


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_a_phase_in_the_guard_process_finds_what_it_finds_here(seed: int) -> None:
    problem = _problem(seed)
    guarded = solve_lexicographic(problem, True, time_limit=30.0, runs=deadline.GUARD)
    here = solve_lexicographic(problem, True, time_limit=30.0, runs=Here())
    assert guarded.status == here.status
    for a, b in ((guarded.x, here.x), (guarded.z, here.z), (guarded.y, here.y)):
        assert np.array_equal(a, b)
