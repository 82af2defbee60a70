"""The operator's accounting path end to end, as the operator runs it: `provisioner accounting import`
of usage files and `provisioner accounting publish --queue` as subprocesses, then every queued message
loaded by `apel_loader` (the APEL server's parser) and checked against a model written here from the
records, independently of `accounting.apel` and `accounting.summaries`.

All dates are fixed in 2026-10/11. The commands take no clock option: `import` refuses end times more
than two days after the wall clock and `publish` refuses months starting after it, so these records
and months stay valid on any date from December 2026 on (the test was written on 2026-11-30)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from accounting.dirq_queue import OutgoingQueue
from tests.accounting.apel_loader import load_message
from tests.cli_process import isolated_env, run_cli

SITE = "UKI-E2E"
FQAN = "/atlas/Role=production/Capability=NULL"
DN = "/DC=ch/DC=cern/CN=atlas prod"
# The loader's clock (its "month in the future" and "EndTime in the future" checks): after both months.
LOADER_NOW = datetime(2026, 12, 15)


@dataclass(frozen=True)
class Job:
    n: int
    end: datetime
    wall: int
    cpu: int
    cores: int
    hs23: float
    host: str = "ce01.example.org"
    key: str = ""  # default: SITE:job:n
    local_job_id: str = ""  # default: 5000 + n

    def record(self, **over: Any) -> dict[str, Any]:
        start = self.end - timedelta(seconds=self.wall)
        values: dict[str, Any] = {
            "record_key": self.key or f"{SITE}:job:{self.n}",
            "kind": "job",
            "experiment": "atlas",
            "site": SITE,
            "submit_host": self.host,
            "backend": "slurm",
            "start_time": start.isoformat().replace("+00:00", "Z"),
            "end_time": self.end.isoformat().replace("+00:00", "Z"),
            "wall_seconds": self.wall,
            "cpu_seconds": self.cpu,
            "cores": self.cores,
            "nodes": 1,
            "hs23_per_core": self.hs23,
            "local_job_id": self.local_job_id or str(5000 + self.n),
            "fqan": FQAN,
            "global_user_name": DN,
            "infrastructure": "APEL-ce01-slurm",
            "status": "completed",
        }
        return values | over


def _t(day: int, hour: int, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


# ServiceLevel: 12.5004 and 12.4996 are both 12.500 on the server (one summary); 16.3004 → 16.300 and
# 16.3006 → 16.301 (two summaries), so grouping on the unrounded value would give different messages.
J1 = Job(1, _t(5, 12), 7200, 50000, 8, 12.5004)
J2 = Job(2, _t(6, 12), 3600, 20000, 8, 12.4996)
J3 = Job(3, _t(7, 12), 1800, 6000, 4, 16.3004)
J4 = Job(4, _t(8, 12), 900, 3000, 4, 16.3006)
J5 = Job(5, _t(9, 12), 5000, 30000, 8, 12.5, host="ce02.example.org")
# The same batch job (site + local_job_id 5005) under a second key, from another source: sent once.
J5_AGAIN = Job(5, _t(9, 12), 5000, 30000, 8, 12.5, host="ce03.example.org", key=f"{SITE}:sacct:5005")
N1 = Job(11, _t(10, 12, 11), 7200, 40000, 8, 12.5004)
N2 = Job(12, _t(20, 8, 11), 3000, 9000, 4, 16.3006, host="ce02.example.org")
N3 = Job(13, _t(1, 2, 11), 14400, 100000, 8, 12.4996)  # started on 31 October: a November job (by end)
# Added by the second import: one to an existing October summary, one in a new one.
A1 = Job(21, _t(25, 9), 2400, 15000, 8, 12.4996)
A2 = Job(22, _t(28, 9), 600, 1100, 2, 20.0, host="ce02.example.org")

GOOD_OCTOBER = [J1, J2, J3, J4, J5]
GOOD_NOVEMBER = [N1, N2, N3]


def _level(hs23: float) -> float:
    """ServiceLevel as the server stores it: DECIMAL(10,3), half away from zero."""
    return float(Decimal(repr(hs23)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["accounting", *args], isolated_env(tmp_path / "state"), cwd=tmp_path)


def _flat(text: str) -> str:
    return " ".join(text.split())  # whatever the console wrapped


@dataclass(frozen=True)
class Published:
    err: str
    changed: dict[str, str]  # kind → the table's "changed" column (content differs from the last publish)
    texts: dict[str, list[str]]  # header type → message texts, in queue order


def _publish(tmp_path: Path, month: str, queue: Path) -> Published:
    """One `accounting publish` into its own queue directory, so each run's messages are told apart."""
    done = _cli(tmp_path, "publish", "--month", month, "--queue", str(queue))
    assert done.returncode == 0, done.stderr
    changed = dict(re.findall(r"│ (\w+) +│ \d+ +│ \d+ +│ (yes|no) +│", done.stdout))
    assert set(changed) == {"summary", "sync", "cloud"}, done.stdout
    texts: dict[str, list[str]] = {}
    for _, text in OutgoingQueue(queue).messages():
        texts.setdefault(text.split(":")[0], []).append(text)
    assert set(texts) == {"APEL-summary-job-message", "APEL-sync-message"}, sorted(texts)
    return Published(_flat(done.stderr), changed, texts)


def _loaded(texts: list[str]) -> list[dict[str, Any]]:
    return [r for text in texts for r in load_message(text, LOADER_NOW)[1]]


Key = tuple[str, float, int]  # (SubmitHost, ServiceLevel, Processors): the only varying summary keys


def _expected(jobs: list[Job]) -> dict[Key, tuple[int, int, int]]:
    """Summary key → (NumberOfJobs, WallDuration, CpuDuration), from the records."""
    out: dict[Key, tuple[int, int, int]] = {}
    for j in jobs:
        n, wall, cpu = out.get((j.host, _level(j.hs23), j.cores), (0, 0, 0))
        out[(j.host, _level(j.hs23), j.cores)] = (n + 1, wall + j.wall, cpu + j.cpu)
    return out


def _summaries(texts: dict[str, list[str]]) -> dict[Key, tuple[int, int, int]]:
    """The loaded summaries: key → (NumberOfJobs, WallDuration, CpuDuration)."""
    loaded = _loaded(texts["APEL-summary-job-message"])
    key = ("SubmitHost", "ServiceLevel", "Processors")
    figures = ("NumberOfJobs", "WallDuration", "CpuDuration")
    return {tuple(r[k] for k in key): tuple(r[f] for f in figures) for r in loaded}


def _syncs(texts: dict[str, list[str]]) -> dict[str, int]:
    return {r["SubmitHost"]: r["NumberOfJobs"] for r in _loaded(texts["APEL-sync-message"])}


def _check_month(texts: dict[str, list[str]], year: int, month: int, jobs: list[Job]) -> None:
    summaries = _loaded(texts["APEL-summary-job-message"])
    syncs = _loaded(texts["APEL-sync-message"])
    for r in summaries:
        assert (r["Site"], r["Year"], r["Month"]) == (SITE, year, month)
        assert (r["VO"], r["VOGroup"], r["VORole"]) == ("atlas", "/atlas", "Role=production")
        assert r["GlobalUserName"] == DN
        assert (r["ServiceLevelType"], r["NodeCount"]) == ("HEPscore23", 1)
        assert r["ServiceLevel"] == round(r["ServiceLevel"], 3)  # what the DECIMAL(10,3) column keeps
    got = _summaries(texts)
    assert len(got) == len(summaries)  # one message record per server key: none replaces another
    assert got == _expected(jobs)
    assert sum(r["NumberOfJobs"] for r in summaries) == len(jobs)
    # sync records: jobs per (site, submit host), equal to the summaries'
    sync_jobs = {(r["Site"], r["SubmitHost"]): r["NumberOfJobs"] for r in syncs}
    assert all((r["Year"], r["Month"]) == (year, month) for r in syncs)
    summary_jobs: Counter[tuple[str, str]] = Counter()
    for r in summaries:
        summary_jobs[(r["Site"], r["SubmitHost"])] += r["NumberOfJobs"]
    assert sync_jobs == dict(summary_jobs) == dict(Counter((SITE, j.host) for j in jobs))


def test_import_and_publish_as_the_operator_runs_them(tmp_path: Path) -> None:
    first = [
        J1.record(),  # line 1
        J2.record(),  # line 2
        J3.record(),  # line 3
        J5.record(),  # line 4
        Job(99, _t(9, 13), 600, 0, 0, 12.5).record(),  # line 5: cores 0, refused
        N1.record(),  # line 6
        J1.record(wall_seconds=7000, cpu_seconds=45000),  # line 7: J1's key again, other figures: refused
        J4.record(),  # line 8
        J5_AGAIN.record(infrastructure="slurm"),  # line 9: J5 under a second key
        N2.record(),  # line 10
        N3.record(),  # line 11
    ]
    done = _cli(tmp_path, "import", str(_write(tmp_path / "first.jsonl", first)))
    assert done.returncode == 1, done.stderr
    err = _flat(done.stderr)
    assert "Traceback" not in err
    assert f"not imported line 5 {SITE}:job:99: cores: cores must be ≥ 1, got 0" in err
    assert f"not imported line 7 {SITE}:job:1" in err and "a conflicting record under the key" in err
    assert f"line 1: {SITE}:job:1 [" in err and f"line 7: {SITE}:job:1 [" in err
    assert err.count("not imported") == 2
    assert "imported 9 usage records of 11" in _flat(done.stdout)

    queues = tmp_path / "queues"
    october = _publish(tmp_path, "2026-10", queues / "1-2026-10")
    november = _publish(tmp_path, "2026-11", queues / "1-2026-11")
    # the job stored twice is reported with both sources, and counted once (its first copy, via ce02)
    assert (
        f"duplicate the same job under two record keys (job id 5005): {SITE}:job:5 "
        "[from APEL-ce01-slurm via ce02.example.org"
    ) in october.err
    assert f"{SITE}:sacct:5005 [from slurm via ce03.example.org" in october.err
    assert "duplicate" not in november.err
    _check_month(october.texts, 2026, 10, GOOD_OCTOBER)
    _check_month(november.texts, 2026, 11, GOOD_NOVEMBER)
    # 12.5004 and 12.4996 are one summary of J1 + J2 at 12.5; 16.3004 and 16.3006 two
    assert sorted(level for _, level, _ in _summaries(october.texts)) == [12.5, 12.5, 16.3, 16.301]
    assert _summaries(october.texts)[("ce01.example.org", 12.5, 8)] == (2, 7200 + 3600, 50000 + 20000)

    done = _cli(tmp_path, "import", str(_write(tmp_path / "second.jsonl", [A1.record(), A2.record()])))
    assert done.returncode == 0, done.stderr
    assert "imported 2 usage records of 2" in _flat(done.stdout)
    october_again = _publish(tmp_path, "2026-10", queues / "2-2026-10")
    november_again = _publish(tmp_path, "2026-11", queues / "2-2026-11")
    _check_month(october_again.texts, 2026, 10, [*GOOD_OCTOBER, A1, A2])
    # October changed by exactly the added jobs: A1 joined an existing summary, A2 made a new one
    before, after = _summaries(october.texts), _summaries(october_again.texts)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {
        ("ce01.example.org", 12.5, 8): (3, 7200 + 3600 + A1.wall, 50000 + 20000 + A1.cpu),
        ("ce02.example.org", 20.0, 2): (1, A2.wall, A2.cpu),
    }
    assert set(before) <= set(after)
    assert _syncs(october_again.texts) == {
        host: n + (host == A1.host) + (host == A2.host) for host, n in _syncs(october.texts).items()
    }
    assert october_again.changed == {"summary": "yes", "sync": "yes", "cloud": "no"}
    # November byte for byte as before: publishing again changes only what belongs to that month
    assert november_again.texts == november.texts
    assert november_again.changed == {"summary": "no", "sync": "no", "cloud": "no"}
