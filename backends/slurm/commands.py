"""`SlurmClient` over the Slurm commands: squeue/sinfo/sacct `--json` to read, sbatch/scancel to act."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from backends.base import AuthFailed, BackendError, BackendTimeout, InvalidRequest, QuotaExceeded
from backends.slurm.client import (
    BACKEND,
    AccountingRecord,
    AccountingUnavailable,
    JobSpec,
    SlurmJob,
    SlurmNode,
    slurm_time,
)
from backends.slurm.openapi import accounting_from_openapi, job_from_openapi, node_from_openapi

log = structlog.get_logger(__name__)

# Environment variables that must not reach sbatch: a JWT would be copied into the job's environment.
_SCRUBBED = ("SLURM_JWT", "SLURMRESTD_JWT")


def classify(command: str, stderr: str) -> BackendError:
    """A typed error from a failed Slurm command's stderr."""
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "failed without a message"
    lower = stderr.lower()
    message = f"{command}: {text}"
    if "accounting storage is disabled" in lower or ("slurmdbd" in lower and "connect" in lower):
        return AccountingUnavailable(BACKEND, message)
    if "timed out" in lower or "unable to contact slurm controller" in lower or "connection refused" in lower:
        return BackendTimeout(BACKEND, message)
    if "authentication" in lower or "invalid user" in lower or "access/permission denied" in lower:
        return AuthFailed(BACKEND, message)
    if ("qos" in lower and ("limit" in lower or "policy" in lower)) or "assocmaxsubmitjob" in lower:
        return QuotaExceeded(BACKEND, message)
    if "invalid" in lower or "unrecognized" in lower or "requested node configuration" in lower:
        return InvalidRequest(BACKEND, message)
    return BackendError(BACKEND, message)


class CommandsClient:
    """Runs the Slurm commands of this host (`SLURM_CONF` selects the cluster)."""

    name = "commands"

    def __init__(
        self,
        *,
        slurm_conf: str | None = None,
        bin_dir: str = "/usr/bin",
        timeout_seconds: float = 30.0,
        attempts: int = 3,
    ) -> None:
        self._env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        if slurm_conf:
            self._env["SLURM_CONF"] = slurm_conf
        self._bin = bin_dir
        self._timeout = timeout_seconds
        self._attempts = attempts

    async def _run_once(self, args: Sequence[str], stdin: str | None, env: Mapping[str, str]) -> str:
        proc = await asyncio.create_subprocess_exec(
            f"{self._bin}/{args[0]}",
            *args[1:],
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self._timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendTimeout(BACKEND, f"{args[0]}: no answer within {self._timeout:.0f}s") from None
        if proc.returncode != 0:
            raise classify(args[0], err.decode(errors="replace"))
        return out.decode()

    async def run(
        self,
        args: Sequence[str],
        stdin: str | None = None,
        *,
        retry: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run one command; controller timeouts are retried (never for sbatch: see `submit`)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts if retry else 1),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type(BackendTimeout),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._run_once(args, stdin, {**self._env, **(env or {})})
        raise AssertionError("unreachable")

    async def _json(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> Mapping[str, Any]:
        doc = json.loads(await self.run(args, env=env))
        # 9003 "Nothing found with query" is sacct's way of saying: an empty list
        errors = [
            e for e in doc.get("errors") or () if not (isinstance(e, dict) and e.get("error_number") == 9003)
        ]
        if errors:
            raise BackendError(BACKEND, f"{args[0]}: {errors[0]}")
        return dict(doc)

    async def submit(self, spec: JobSpec) -> str:
        args = [
            "sbatch",
            "--parsable",
            "--export=NONE",
            f"--job-name={spec.name}",
            f"--partition={spec.partition}",
            f"--time={spec.time_limit_minutes}",
            f"--output={spec.output}",
            f"--chdir={spec.workdir}",
            "--requeue" if spec.requeue else "--no-requeue",
        ]
        if spec.comment:
            args.append(f"--comment={spec.comment}")
        if spec.account:
            args.append(f"--account={spec.account}")
        if spec.qos:
            args.append(f"--qos={spec.qos}")
        if spec.nodes is not None:
            args += [f"--nodes={spec.nodes}", "--exclusive"]
        else:
            args += ["--nodes=1", "--ntasks=1", f"--cpus-per-task={spec.cores}"]
        if spec.memory_mb is not None:
            args.append(f"--mem={spec.memory_mb}M")
        if spec.gpus:
            args.append(f"--gres=gpu:{spec.gpus}")
        if spec.features:
            args.append(f"--constraint={spec.features}")
        if spec.hold:
            args.append("--hold")
        if spec.time_min_minutes is not None:
            args.append(f"--time-min={spec.time_min_minutes}")
        if spec.deadline is not None:
            args.append(f"--deadline={slurm_time(spec.deadline)}")
        # no retry: a timed-out sbatch may have submitted; the caller's token lookup decides
        # (sbatch reads times in the host's zone: pinned to UTC like sacct)
        out = await self.run(args, stdin=spec.script, retry=False, env={"TZ": "UTC"})
        job_id = out.strip().split(";")[0]
        log.info("slurm.submitted", client=self.name, job_id=job_id, name=spec.name, partition=spec.partition)
        return job_id

    async def jobs(self) -> list[SlurmJob]:
        doc = await self._json(["squeue", "--all", "--json"])
        return [job_from_openapi(j) for j in doc.get("jobs") or ()]

    async def job(self, job_id: str) -> SlurmJob | None:
        for job in await self.jobs():
            if job.job_id == job_id:
                return job
        return None

    async def cancel(self, job_id: str) -> None:
        try:
            await self.run(["scancel", job_id])
        except BackendError as err:
            text = str(err).lower()
            if "invalid job id" in text or "already completing or completed" in text:
                return
            raise
        log.info("slurm.cancelled", client=self.name, job_id=job_id)

    async def nodes(self) -> list[SlurmNode]:
        doc = await self._json(["sinfo", "--json"])
        # sinfo --json lists a node once per partition on some versions: keep the first
        seen: dict[str, SlurmNode] = {}
        for n in doc.get("nodes") or ():
            node = node_from_openapi(n)
            seen.setdefault(node.name, node)
        return list(seen.values())

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        start = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        # sacct reads times in the local zone of the host: pin it to UTC
        args = ["sacct", "--json", "--allusers", f"--starttime={start}", "--endtime=now"]
        if accounts:
            args.append(f"--accounts={','.join(sorted(accounts))}")
        doc = await self._json(args, env={"TZ": "UTC"})
        return [accounting_from_openapi(j) for j in doc.get("jobs") or ()]

    async def hostnames(self, hostlist: str) -> list[str]:
        """Expand a hostlist expression (`cloud[1-3]`) exactly as Slurm does."""
        out = await self.run(["scontrol", "show", "hostnames", hostlist])
        return out.split()

    async def set_node_down(self, node: str, reason: str) -> None:
        """Mark a node DOWN with `reason` (shown by `scontrol show node`, `sinfo -R`); Slurm requeues
        the jobs that waited for it. Slurm keeps reasons short: longer ones are cut."""
        text = " ".join(reason.split())[:240] or "provisioner"
        await self.run(["scontrol", "update", f"nodename={node}", "state=DOWN", f"reason={text}"])
        log.info("slurm.node_down", node=node, reason=text)

    async def close(self) -> None:
        return None
