"""Benchmark: many more chaos trials than CI runs — `provisioner run` under seeded SIGKILLs, replica
kills, lock loss and EC2 faults, judged from moto's view (see tests/chaos/harness.py for the rules).

Runs `--lanes` lanes one after the other, alternating SQLite (one broker, kills restart it) and
PostgreSQL (two replicas, kills and lock loss), each with `--trials` trials and its own seed.

    python benchmarks/chaos.py [--lanes 6] [--trials 20] [--seed 100]
Writes benchmarks/results/chaos.json and .md; exits 1 if any lane broke an invariant.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.aws.conftest import KEY_ID, SECRET  # noqa: E402
from tests.aws.moto_indexed import AMIS, start_moto  # noqa: E402
from tests.chaos.harness import Lane  # noqa: E402
from tests.conftest import PG_ADMIN_URL, PG_HOST, PG_PORT  # noqa: E402
from tests.services import free_port, port_open  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=6)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--settle", type=float, default=1.5)
    args = parser.parse_args()

    port = free_port()
    moto_proc = start_moto(port)
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.2)
    moto = f"http://127.0.0.1:{port}"
    pg = port_open(PG_HOST, PG_PORT)
    lanes: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for n in range(args.lanes):
            seed = args.seed + n
            shared = pg and n % 2 == 1
            with tempfile.TemporaryDirectory(prefix="chaos-") as tmp_name:
                tmp = Path(tmp_name)
                creds = tmp / "credentials"
                creds.write_text(
                    f"[broker]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
                )
                url = _database(seed) if shared else None
                lane = Lane(
                    seed=seed,
                    tmp=tmp,
                    moto=moto,
                    amis=dict(AMIS),
                    credentials=creds,
                    key_id=KEY_ID,
                    secret=SECRET,
                    database_url=url,
                    replicas=2 if shared else 1,
                )
                started = time.monotonic()
                try:
                    lane.request("steady", 16)
                    for _ in range(args.trials):
                        lane.trial(settle=args.settle)
                    tally = lane.finish(converge_timeout=90)
                finally:
                    lane.stop_all()
                    if url:
                        _drop(url)
                lanes.append(
                    {
                        "seed": seed,
                        "database": "postgresql" if shared else "sqlite",
                        "replicas": 2 if shared else 1,
                        "trials": tally.trials,
                        "kills": tally.kills,
                        "lock_losses": tally.lock_losses,
                        "faults": dict(tally.faults),
                        "cancelled": tally.cancelled,
                        "instances": tally.instances,
                        "spend_usd": str(tally.spend),
                        "violations": tally.violations,
                        "seconds": round(time.monotonic() - started, 1),
                    }
                )
                print(json.dumps(lanes[-1]), flush=True)
    finally:
        moto_proc.kill()
    total = {
        "trials": sum(x["trials"] for x in lanes),
        "kills": sum(x["kills"] for x in lanes),
        "lock_losses": sum(x["lock_losses"] for x in lanes),
        "violations": sum(len(x["violations"]) for x in lanes),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps({"total": total, "lanes": lanes}, indent=2) + "\n")
    lines = [
        "# Chaos benchmark",
        "",
        f"`python benchmarks/chaos.py --lanes {args.lanes} --trials {args.trials} --seed {args.seed}`",
        "",
        f"{total['trials']} trials ({total['kills']} SIGKILLs, {total['lock_losses']} lock losses) in "
        f"{total['seconds']} s: {total['violations']} invariant violations "
        "(leaked, doubled, cancelled demand left running, heartbeat-carrying VM drained, spend over budget).",
        "",
        "| seed | database | trials | kills | lock losses | faults | instances | spend (USD) | violations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in lanes:
        lines.append(
            f"| {x['seed']} | {x['database']} | {x['trials']} | {x['kills']} | {x['lock_losses']} | "
            f"{x['faults']} | {x['instances']} | {float(x['spend_usd']):.4f} | {len(x['violations'])} |"
        )
    (RESULTS / "chaos.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(total))
    return 1 if total["violations"] else 0


def _database(seed: int) -> str:
    import psycopg

    name = f"chaos_bench_{seed}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
