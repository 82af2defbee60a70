"""The planner's second core (`planner/workers.py`): parts costed in worker processes give the plan one
process gives, and a worker that fails, dies or hangs costs time, never a result."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.planner import _Clock, _prepare, _Setup, costing_parts, plan, workers
from provisioner.planner.candidates import packed_total
from provisioner.planner.costing_parts import shape_key
from provisioner.planner.jobs_lp import solve_jobs_lp
from provisioner.planner.pricing import ColumnGenerator
from provisioner.planner.workers import Workers, split
from tests.planner.instances import Instance, random_instance

ROOT = Path(__file__).resolve().parents[2]


# the functions workers run are pickled by name: module level. A part carries the pid of the process
# that made it, so a function knows whether it runs in a worker.
Part = tuple[int, int]


def parts(*values: int) -> list[Part]:
    return [(v, os.getpid()) for v in values]


def in_worker(part: Part) -> bool:
    return os.getpid() != part[1]


def slow_here(part: Part) -> None:
    """A part done here takes long enough for every feeder thread to take one (parts are handed out
    dynamically: quick ones would all be done here before a feeder thread runs)."""
    if not in_worker(part):
        time.sleep(0.2)


def value_and_pid(part: Part) -> tuple[int, int]:
    slow_here(part)
    return part[0], os.getpid()


def times_ten_or_die(part: Part) -> int:
    slow_here(part)
    if in_worker(part):
        os._exit(3)  # killed, out of memory: nothing on the pipe
    return part[0] * 10


def fails_on_two(part: Part) -> int:
    slow_here(part)
    if part[0] == 2:
        raise ValueError("group g2: no offering")
    return part[0]


def plus_one_or_hang(part: Part) -> int:
    slow_here(part)
    if in_worker(part):
        time.sleep(3600)  # a worker stuck
    return part[0] + 1


def interrupted_here(part: Part) -> int:
    if not in_worker(part):
        raise KeyboardInterrupt  # the operator stops the broker mid-round
    time.sleep(3600)
    return part[0]


def double(part: Part) -> int:
    slow_here(part)
    return part[0] * 2


def test_parts_run_here_and_in_kept_workers_and_come_back_in_order() -> None:
    pool = Workers(3)
    first = pool.map(value_and_pid, parts(*range(6)))
    again = pool.map(value_and_pid, parts(*range(6, 12)))
    pool.close()
    assert [v for v, _ in first + again] == list(range(12))
    here = os.getpid()
    kept = {pid for _, pid in first} - {here}
    assert len(kept) == 2  # each feeder takes a part, then starts its worker
    assert {pid for _, pid in again} - {here} <= kept  # the same workers next round
    assert pool.redone == 0


def test_one_worker_runs_everything_here() -> None:
    assert Workers(1).map(value_and_pid, parts(0, 1)) == [(0, os.getpid()), (1, os.getpid())]


def test_zero_workers_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="workers: must be at least 1, got 0"):
        Workers(0)


def test_a_worker_that_dies_has_its_part_redone_here_and_is_replaced() -> None:
    pool = Workers(2)
    assert pool.map(times_ten_or_die, parts(1, 2)) == [10, 20]
    assert pool.redone == 1
    got = pool.map(value_and_pid, parts(3, 4))  # a new worker
    pool.close()
    assert {pid for _, pid in got} - {os.getpid()} and pool.redone == 1


def test_a_worker_that_raises_has_its_part_redone_here_where_the_error_is_raised() -> None:
    pool = Workers(2)
    with pytest.raises(ValueError, match="group g2: no offering"):
        pool.map(fails_on_two, parts(1, 2))
    pool.close()


def test_a_hung_worker_is_killed_and_its_part_redone_here(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Workers(2)
    pool.map(double, parts(0, 0))  # started (importing takes about a second)
    monkeypatch.setattr(workers, "MIN_WAIT", 1.0)
    process = pool._workers[0].process  # type: ignore[union-attr]
    assert pool.map(plus_one_or_hang, parts(1, 2)) == [2, 3]
    assert pool.redone == 1
    assert process.returncode is not None  # killed and reaped: nothing left running


def test_an_error_here_leaves_no_worker_running() -> None:
    pool = Workers(2)
    pool.map(double, parts(0, 0))
    process = pool._workers[0].process  # type: ignore[union-attr]
    with pytest.raises(KeyboardInterrupt):
        pool.map(interrupted_here, parts(1, 2))
    assert process.returncode is not None


def test_a_worker_prints_nothing_on_the_brokers_stdout() -> None:
    code = (
        "import sys\n"
        "from provisioner.planner.workers import Workers\n"
        "from tests.planner.test_workers import double, parts\n"
        "sys.stdout.write('before\\n')\n"  # still in the buffer: stdout is a pipe
        "print(Workers(2).map(double, parts(1, 2)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout == "before\n[2, 4]\n"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=40), st.integers(1, 4), st.integers(1, 8))
def test_split_is_a_partition_into_parts_of_nearly_equal_size(
    keys: list[int], count: int, min_size: int
) -> None:
    got = split(keys, count, min_size)
    assert sorted(pos for part in got for pos in part) == list(range(len(keys)))
    assert all(part == sorted(part) for part in got)
    assert len(got) <= count
    sizes = [len(p) for p in got]
    assert max(sizes) - min(sizes) <= 1
    if len(got) > 1:
        assert min(sizes) >= min_size


def test_too_few_items_for_a_part_each_stay_in_one() -> None:
    assert split(list(range(100)), 2, 64) == [list(range(100))]
    assert [len(p) for p in split(list(range(128)), 2, 64)] == [64, 64]


def test_split_keeps_a_key_in_one_part_when_sizes_allow() -> None:
    assert split(["a", "b", "a", "b"], 2) == [[0, 2], [1, 3]]


POOL = Workers(2)  # one fork server for the examples, as the broker keeps one


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(["auto", "lp"]))
def test_two_workers_plan_what_one_plans(seed: int, method: str) -> None:
    """Groups costed, and the LP's two roundings repaired, in two processes: the same plan, to the
    explanation, and the worker delivered its parts (a part redone here would hide a worker that cannot
    cost or repair). The size thresholds are lowered so that these small instances are split."""
    inst = random_instance(seed, groups=12)
    one = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method=method)
    redone = POOL.redone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(costing_parts, "PART_MIN_GROUPS", 1)
        mp.setattr(sys.modules["provisioner.planner.solve"], "PARALLEL_REPAIR_PAIRS", 0)
        two = plan(inst.groups, inst.offerings, inst.fleet, inst.constraints, method=method, workers=POOL)
    assert POOL.redone == redone
    assert two == one


def test_groups_of_one_shape_are_costed_together() -> None:
    inst = random_instance(7, groups=12)
    keys = [shape_key(g) for g in inst.groups]
    for part in split(keys, 2):
        inside = {keys[k] for k in part}
        outside = {keys[k] for k in range(len(keys)) if k not in part}
        # a shape spans two parts only where the sizes force a cut through it
        assert len(inside & outside) <= 1


def costed_in_two_and_in_one(seed: int) -> tuple[Instance, _Setup, _Setup]:
    """A 12-group instance, its groups costed in two processes (split however small) and in this one."""
    inst = random_instance(seed, groups=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(costing_parts, "PART_MIN_GROUPS", 1)
        two = _prepare(
            inst.groups,
            inst.offerings,
            inst.fleet,
            inst.constraints,
            _Clock(None),
            exact=False,
            timings=None,
            workers=POOL,
        )
    one = _prepare(
        inst.groups, inst.offerings, inst.fleet, inst.constraints, _Clock(None), exact=False, timings=None
    )
    return inst, two, one


def test_the_shapes_a_worker_costed_are_kept_here_for_pricing() -> None:
    """Catalog pricing asks for every group's costs without egress; a worker sends back those of the
    shapes it costed, thin (what pricing reads), so that they are not costed again here: what costing
    them here gives, and in full where pricing asks for it."""
    inst, setup, alone = costed_in_two_and_in_one(7)
    kept, here = setup.bases._cache, alone.bases._cache
    assert kept.keys() == here.keys()
    assert any(base.thin for base in kept.values())  # some came back from the worker
    for key, base in here.items():
        got = kept[key]
        for name in (
            "prefix",
            "prefix_total",
            "prefix_location",
            "prefix_jpu",
            "risk_factor",
            "valued_total",
        ):
            assert (getattr(got, name) == getattr(base, name)).all(), name
        assert got.bound == base.bound
    for g in inst.groups:
        jpu, _ = setup.compat.static_reasons(g)
        full = setup.bases.full(g, jpu)
        assert not full.thin and (full.total == alone.bases.get(g, jpu).total).all()


def test_the_rules_and_packed_costs_a_worker_found_are_kept_here_for_pricing() -> None:
    """Catalog pricing reads every group's static reasons and its shortlist's packed costs: a worker sends
    back what it found, which is what finding them here gives."""
    _, setup, alone = costed_in_two_and_in_one(7)
    kept, here = setup.compat.statics(), alone.compat.statics()
    assert kept.keys() == here.keys()  # every group's, those of the worker's groups too
    for key, reasons in here.items():
        assert kept[key].tolist() == reasons.tolist()
    assert len(setup.candidates) == len(alone.candidates)
    for got, want in zip(setup.candidates, alone.candidates, strict=True):
        assert got.packed is not None and want.packed is not None
        assert got.packed.tolist() == want.packed.tolist()
        assert got.packed.tolist() == packed_total(got.solver, got.demand).tolist()


@pytest.mark.parametrize("seed", [13, 25, 113])  # floor wins, ceil wins, the same service and floor cheaper
def test_the_lps_two_roundings_repaired_side_by_side_give_the_plan_one_process_gives(seed: int) -> None:
    """On a large problem the LP's roundings down and up are repaired in two processes; the better one
    wins as in one process, whichever process each ran in (these seeds' two roundings differ)."""
    module = sys.modules["provisioner.planner.solve"]  # not the `solve` function the package exports
    inst = random_instance(seed, groups=12)
    setup = _prepare(
        inst.groups, inst.offerings, inst.fleet, inst.constraints, _Clock(None), exact=False, timings=None
    )
    _, problem = ColumnGenerator(
        setup.cols, setup.plan_ctx, setup.compat, inst.constraints, setup.limits
    ).run(setup.candidates)
    lp = solve_jobs_lp(problem)
    down, up = (
        module._rounded(module._Rounding(problem, targets.astype(np.int64), "test", None))
        for targets in (np.floor(lp + 1e-6), np.ceil(lp - 1e-6))
    )
    assert module._rank(problem, down) != module._rank(problem, up)
    one = module._lp_repair(problem, lp, "test")
    redone = POOL.redone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "PARALLEL_REPAIR_PAIRS", 0)
        two = module._lp_repair(problem, lp, "test", POOL)
    assert POOL.redone == redone
    assert (two.units.tolist(), two.unit_waves.tolist(), two.jobs.tolist()) == (
        one.units.tolist(),
        one.unit_waves.tolist(),
        one.jobs.tolist(),
    )
    better = max((down, up), key=lambda s: module._rank(problem, s))
    assert module._rank(problem, one) >= module._rank(problem, better)
