"""Slurm power saving through the broker: one recorded, tagged resource per resumed node, released on suspend."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from backends.base import TAG_GROUP, ProvisionRequest
from backends.simulated import SimulatedBackend
from backends.slurm.burst import (
    NODE_GROUP_PREFIX,
    TAG_SLURM_NODE,
    Placement,
    node_demand,
    resume,
)
from backends.slurm.client import JobState, SlurmJob, SlurmNode
from provisioner.broker import EXAMPLE_POLICY, Broker, build_broker
from provisioner.clock import SimulatedClock
from provisioner.domain import SLURM_NODE_GROUP_PREFIX, Arch, DemandGroup, Market, ResourceState
from provisioner.settings import Settings
from provisioner.slurm_power import (
    CLOUD_MARKETS,
    PowerSettings,
    SlurmPower,
    policy_admission,
    simulated_state_dir,
)
from provisioner.sources.slurm import ExperimentMap

NODE = SlurmNode(
    name="cloud9", state="idle", flags=frozenset({"CLOUD", "POWERED_DOWN"}), cpus=4, alloc_cpus=0,
    memory_mb=2000, features=frozenset({"cloud", "x86_64"}), partitions=("cloud",),
)  # fmt: skip


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock()


@pytest.fixture
def broker(tmp_path: Path, clock: SimulatedClock) -> Broker:
    # the example policy, naming also "cloud": the partition charged for the test's nodes
    policy = tmp_path / "policy.toml"
    policy.write_text(EXAMPLE_POLICY.read_text().replace("\n[end]", "\n[experiments.cloud]\n\n[end]"))
    settings = Settings(state_dir=tmp_path / "state", broker_id="broker-slurm-test", policy_file=policy)
    return build_broker(settings, clock=clock, simulated_state_dir=simulated_state_dir(settings))


@pytest.fixture
def power(broker: Broker, tmp_path: Path) -> SlurmPower:
    return SlurmPower.from_broker(broker, PowerSettings(lock_file=tmp_path / "state" / "slurm-power.lock"))


def demand() -> DemandGroup:
    return node_demand(NODE)


def sim(broker: Broker, backend: str) -> SimulatedBackend:
    b = broker.backends[backend]
    assert isinstance(b, SimulatedBackend)
    return b


def live_units(broker: Broker) -> list[tuple[str, dict[str, str]]]:
    return [(u.provider_id, u.tags) for name in broker.backends for u in sim(broker, name).live_units()]


def test_both_sides_agree_on_the_node_group_prefix() -> None:
    assert NODE_GROUP_PREFIX == SLURM_NODE_GROUP_PREFIX
    assert demand().id == "slurm-node:cloud9"


async def test_resume_twice_gives_the_node_one_tagged_resource_on_the_cheapest_cloud_offering(
    broker: Broker, power: SlurmPower
) -> None:
    # the planner's choice under the policy, as for any demand: the best $/HS23-hour that fits
    cloud = [o for o in broker.offerings.values() if o.market in CLOUD_MARKETS]
    best = policy_admission(broker)(demand(), cloud).offering
    first = await power.place(NODE, demand())
    second = await power.place(NODE, demand())
    assert first.placement is Placement.CREATED and second.placement is Placement.ALREADY_LIVE
    assert first.resource_id == second.resource_id is not None
    rows = power.resources("cloud9")
    assert [r.id for r in rows] == [first.resource_id]
    row = rows[0]
    assert row.group_id == "slurm-node:cloud9" and row.experiment == "cloud"  # the node's partition
    assert row.state == ResourceState.PROVISIONING and row.busy  # Slurm holds it
    assert best is not None and row.offering_id == best.id
    assert best.cores >= 4 and best.arch is Arch.X86_64
    # one unit at the provider, tagged with the node, our broker and the group
    units = live_units(broker)
    assert len(units) == 1
    tags = units[0][1]
    assert tags[TAG_SLURM_NODE] == "cloud9" and tags[TAG_GROUP] == "slurm-node:cloud9"
    # the intent came first: its event precedes the provisioning one
    kinds = [e.payload["to"] for e in broker.store.events(kind="resource.state", subject=row.id)]
    assert kinds[:2] == ["requested", "provisioning"]


async def test_suspend_releases_the_node_and_twice_is_harmless(broker: Broker, power: SlurmPower) -> None:
    placed = await power.place(NODE, demand())
    assert await power.release("cloud9") == [placed.resource_id]
    assert await power.release("cloud9") == []
    assert await power.release("cloud3") == []  # never resumed
    row = broker.store.get(placed.resource_id or "")
    assert row is not None and row.state == ResourceState.RELEASED and row.released_at is not None
    assert live_units(broker) == []
    # resuming again later gives a fresh resource
    again = await power.place(NODE, demand())
    assert again.placement is Placement.CREATED and again.resource_id != placed.resource_id
    assert len(live_units(broker)) == 1


async def test_a_refused_offering_sends_the_node_to_the_next_cheapest(
    broker: Broker, power: SlurmPower
) -> None:
    cloud = [o for o in broker.offerings.values() if o.market in CLOUD_MARKETS]
    best = policy_admission(broker)(demand(), cloud).offering
    assert best is not None
    sim(broker, best.backend).faults.capacity.add(best.id)
    placed = await power.place(NODE, demand())
    assert placed.placement is Placement.CREATED and placed.offering_id != best.id
    failed = [r for r in power.resources("cloud9", [ResourceState.FAILED])]
    assert [r.offering_id for r in failed] == [best.id]
    assert len(power.resources("cloud9")) == 1


async def test_a_node_nothing_fits_records_no_resource(broker: Broker, power: SlurmPower) -> None:
    huge = SlurmNode(
        name="cloud8", state="idle", flags=frozenset({"CLOUD"}), cpus=100000, alloc_cpus=0, memory_mb=1000,
    )  # fmt: skip
    placed = await power.place(huge, node_demand(huge))
    assert placed.placement is Placement.NO_OFFERING and not placed.up
    assert broker.store.resources() == []


async def test_a_node_charged_to_an_experiment_the_policy_does_not_name_gets_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    power = SlurmPower.from_broker(broker, PowerSettings(experiment="nobody"))
    placed = await power.place(NODE, dataclasses.replace(demand(), experiment="nobody"))
    assert placed.placement is Placement.NO_OFFERING and not placed.up
    assert "'nobody' is not in the policy" in placed.reason
    assert broker.store.resources() == [] and live_units(broker) == []


async def test_markets_and_backends_restrict_the_choice(broker: Broker, tmp_path: Path) -> None:
    power = SlurmPower.from_broker(
        broker, PowerSettings(markets=frozenset({Market.ON_DEMAND}), backends=frozenset({"aws"}))
    )
    placed = await power.place(NODE, demand())
    offering = broker.offerings[placed.offering_id or ""]
    assert offering.backend == "aws" and offering.market is Market.ON_DEMAND


async def test_an_intent_left_by_a_crash_is_retried_with_its_token_not_doubled(
    broker: Broker, power: SlurmPower
) -> None:
    cloud = [o for o in broker.offerings.values() if o.market in CLOUD_MARKETS]
    offering = policy_admission(broker)(demand(), cloud).offering
    assert offering is not None
    # a resume killed after the provider call, before recording it
    row = await broker.store.record_intent(offering, group_id="slurm-node:cloud9", experiment="cloud")
    made = await sim(broker, offering.backend).provision(
        ProvisionRequest(row.id, offering, row.idempotency_token, broker.store.broker_id, row.group_id)
    )
    placed = await power.place(NODE, demand())
    assert placed.resource_id == row.id and placed.placement is Placement.CREATED
    assert [pid for pid, _ in live_units(broker)] == [made.provider_id]
    stored = broker.store.get(row.id)
    assert stored is not None and stored.provider_id == made.provider_id


async def test_concurrent_resumes_of_one_node_make_one_resource(broker: Broker, power: SlurmPower) -> None:
    results = await asyncio.gather(*(power.place(NODE, demand()) for _ in range(3)))
    assert sorted(r.placement for r in results) == sorted(
        [Placement.CREATED, Placement.ALREADY_LIVE, Placement.ALREADY_LIVE]
    )
    assert len({r.resource_id for r in results}) == 1 and len(live_units(broker)) == 1


async def test_engine_cycles_leave_a_node_slurm_holds_alone_until_suspend(
    broker: Broker, power: SlurmPower, clock: SimulatedClock
) -> None:
    placed = await power.place(NODE, demand())
    rid = placed.resource_id or ""
    for _ in range(4):  # well past boot, the idle drain (10 min) and the planner's horizon
        clock.advance(20 * 60)
        report = await broker.engine.run_cycle()
        assert rid not in report.drained and rid not in report.reconcile.released
    row = broker.store.get(rid)
    assert row is not None and row.state == ResourceState.RUNNING and row.busy
    await power.release("cloud9")
    clock.advance(60)
    await broker.engine.run_cycle()
    row = broker.store.get(rid)
    assert row is not None and row.state == ResourceState.RELEASED
    assert live_units(broker) == []


async def test_the_reconciler_still_finds_a_node_resource_lost(
    broker: Broker, power: SlurmPower, clock: SimulatedClock
) -> None:
    placed = await power.place(NODE, demand())
    row = broker.store.get(placed.resource_id or "")
    assert row is not None and row.provider_id is not None
    clock.advance(5 * 60)
    await broker.engine.run_cycle()
    # the provider terminates it behind our back
    await sim(broker, row.backend).release(row.provider_id)
    clock.advance(timedelta(minutes=1).total_seconds())
    await broker.engine.run_cycle()
    after = broker.store.get(row.id)
    assert after is not None and after.state == ResourceState.LOST
    # Slurm asks for the node again: a new resource, not the lost one
    again = await power.place(NODE, demand())
    assert again.placement is Placement.CREATED and again.resource_id != row.id


async def test_sweep_releases_resources_of_nodes_slurm_powered_down_without_a_suspend(
    broker: Broker, power: SlurmPower, clock: SimulatedClock
) -> None:
    placed = await power.place(NODE, demand())
    powering_up = dataclasses.replace(NODE, flags=frozenset({"CLOUD", "POWERED_DOWN", "POWERING_UP"}))
    assert await power.sweep([NODE]) == []  # too young: a resume may be under way
    clock.advance(3 * 60)
    assert await power.sweep([powering_up]) == []  # being resumed
    assert await power.sweep([dataclasses.replace(NODE, flags=frozenset({"CLOUD"}))]) == []  # up
    assert await power.sweep([NODE]) == [placed.resource_id]
    assert live_units(broker) == [] and await power.sweep([NODE]) == []


def _broker_with_policy(tmp_path: Path, clock: SimulatedClock, experiment_toml: str) -> Broker:
    policy = tmp_path / "policy.toml"
    policy.write_text("version = 1\n" + experiment_toml + "\n[end]\n")
    settings = Settings(state_dir=tmp_path / "pstate", broker_id="broker-slurm-policy", policy_file=policy)
    return build_broker(settings, clock=clock, simulated_state_dir=simulated_state_dir(settings))


ZERO_CAPS = """
[experiments.atl]
backends = ["aws"]
markets = ["on_demand"]
spend_rate_cap_per_hour = "0"
[experiments.atl.budgets]
monthly = "0"
"""


async def test_resume_the_policy_refuses_creates_nothing_and_says_why(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    broker = _broker_with_policy(tmp_path, clock, ZERO_CAPS)
    power = SlurmPower.from_broker(broker)
    placed = await power.place(NODE, node_demand(NODE, experiment="atl"))
    assert placed.placement is Placement.REFUSED and not placed.up
    assert "atl" in placed.reason and ("budget" in placed.reason or "spend" in placed.reason), placed.reason
    assert broker.store.resources() == []
    assert live_units(broker) == []


async def test_resume_uses_only_the_backends_and_markets_the_experiment_may_use_and_charges_it(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    broker = _broker_with_policy(
        tmp_path, clock, '[experiments.atl]\nbackends = ["aws"]\nmarkets = ["on_demand"]\n'
    )
    placed = await SlurmPower.from_broker(broker).place(NODE, node_demand(NODE, experiment="atl"))
    assert placed.placement is Placement.CREATED
    row = broker.store.get(placed.resource_id or "")
    assert row is not None and row.experiment == "atl"  # not the partition's name
    offering = broker.offerings[row.offering_id]
    assert (offering.backend, offering.market) == ("aws", Market.ON_DEMAND)


class NodeQueue:
    """What `resume` asks of Slurm: the node's shape and the job it is resumed for."""

    name = "fake"

    def __init__(self, jobs: list[SlurmJob]) -> None:
        self._jobs = jobs
        self.down: list[tuple[str, str]] = []

    async def nodes(self) -> list[SlurmNode]:
        return [NODE]

    async def jobs(self) -> list[SlurmJob]:
        return self._jobs

    async def set_node_down(self, node: str, reason: str) -> None:
        self.down.append((node, reason))


async def test_resume_charges_the_mapped_account_of_the_job_and_a_refusal_sets_the_node_down_with_the_reason(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    broker = _broker_with_policy(tmp_path, clock, ZERO_CAPS)
    power = SlurmPower.from_broker(broker)
    job = SlurmJob(
        job_id="7",
        name="user",
        state=JobState.CONFIGURING,
        partition="cloud",
        account="m4321",
        node_list="cloud[8-9]",
    )
    slurm = NodeQueue([job])
    [intent] = await resume(
        ["cloud9"],
        slurm,  # type: ignore[arg-type]
        power.place,
        charge_to=ExperimentMap({"m4321": "atl"}, {}).experiment,
        mark_down=slurm.set_node_down,
    )
    assert intent.demand.experiment == "atl" and intent.placement is Placement.REFUSED
    assert slurm.down == [("cloud9", f"provisioner: refused: {intent.reason}")]
