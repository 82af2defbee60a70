"""`SlurmClient` over slurmrestd (OpenAPI v0.0.38, Slurm 22.05) with JWT authentication.

The token travels only in the `X-SLURM-USER-TOKEN` header: it is never logged, never put in an
error message and never exported to the environment of submitted jobs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from backends.base import AuthFailed, BackendError, BackendTimeout, InvalidRequest, Throttled
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

API = "v0.0.38"
TokenSource = Callable[[], Awaitable[str]]


class ScontrolToken:
    """JWTs from `scontrol token`, renewed a minute before they expire (needs auth/jwt in slurmctld)."""

    def __init__(self, *, lifespan_seconds: int = 3600, slurm_conf: str | None = None) -> None:
        self._lifespan = lifespan_seconds
        self._conf = slurm_conf
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            if time.monotonic() < self._expires - 60:
                return self._token
            env = {k: v for k, v in os.environ.items() if k != "SLURM_JWT"}
            if self._conf:
                env["SLURM_CONF"] = self._conf
            proc = await asyncio.create_subprocess_exec(
                "scontrol",
                "token",
                f"lifespan={self._lifespan}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            out, err = await proc.communicate()
            token = next(
                (
                    line.split("=", 1)[1]
                    for line in out.decode().splitlines()
                    if line.startswith("SLURM_JWT=")
                ),
                "",
            )
            if proc.returncode != 0 or not token:
                reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no token printed"]
                raise AuthFailed(BACKEND, f"scontrol token failed: {reason[0]}")
            self._token, self._expires = token, time.monotonic() + self._lifespan
            return token


def _errors(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # 9003 "Nothing found with query" from slurmdbd means an empty result, not a failure
    return [e for e in doc.get("errors") or () if isinstance(e, Mapping) and e.get("error_number") != 9003]


def _describe(errors: list[Mapping[str, Any]]) -> str:
    return "; ".join(str(e.get("description") or e.get("error") or e) for e in errors)


class RestClient:
    """Talks to slurmrestd at `url` as `user` (tokens from `token`, default `scontrol token`)."""

    name = "rest"

    def __init__(
        self,
        url: str,
        *,
        user: str = "root",
        token: TokenSource | None = None,
        timeout_seconds: float = 30.0,
        attempts: int = 3,
        job_env: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_seconds)
        self._user = user
        self._token = token or ScontrolToken()
        self._attempts = attempts
        # slurmrestd jobs start with exactly this environment (like sbatch --export=NONE)
        self._job_env = dict(job_env or {"PATH": "/usr/local/bin:/usr/bin:/bin"})

    async def _request(self, method: str, path: str, **kwargs: Any) -> Mapping[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type((BackendTimeout, Throttled)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._request_once(method, path, **kwargs)
        raise AssertionError("unreachable")

    async def _request_once(self, method: str, path: str, **kwargs: Any) -> Mapping[str, Any]:
        headers = {"X-SLURM-USER-NAME": self._user, "X-SLURM-USER-TOKEN": await self._token()}
        try:
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as err:
            raise BackendTimeout(BACKEND, f"slurmrestd {method} {path}: {type(err).__name__}") from None
        if response.status_code in (401, 403):
            raise AuthFailed(
                BACKEND, f"slurmrestd {method} {path}: HTTP {response.status_code} (token rejected)"
            )
        if response.status_code == 429:
            raise Throttled(BACKEND, f"slurmrestd {method} {path}: HTTP 429")
        if response.status_code == 404 and path.startswith("/slurmdb/"):
            raise AccountingUnavailable(BACKEND, f"slurmrestd has no {path} (started without slurmdbd?)")
        if response.status_code >= 500 and not response.content:
            raise BackendTimeout(BACKEND, f"slurmrestd {method} {path}: HTTP {response.status_code}")
        try:
            doc: Mapping[str, Any] = response.json()
        except ValueError:
            raise BackendError(
                BACKEND, f"slurmrestd {method} {path}: HTTP {response.status_code}, body is not JSON"
            ) from None
        return doc

    async def submit(self, spec: JobSpec) -> str:
        job: dict[str, Any] = {
            "name": spec.name,
            "partition": spec.partition,
            "time_limit": spec.time_limit_minutes,
            "standard_output": spec.output,
            "current_working_directory": spec.workdir,
            "environment": self._job_env,
            "requeue": spec.requeue,
        }
        if spec.comment:
            job["comment"] = spec.comment
        if spec.account:
            job["account"] = spec.account
        if spec.qos:
            job["qos"] = spec.qos
        if spec.nodes is not None:
            job.update(nodes=spec.nodes, exclusive="exclusive")
        else:
            job.update(nodes=1, tasks=1, cpus_per_task=spec.cores)
        if spec.memory_mb is not None:
            job["memory_per_node"] = spec.memory_mb
        if spec.gpus:
            job["gres"] = f"gpu:{spec.gpus}"
        if spec.features:
            job["constraints"] = spec.features
        if spec.hold:
            job["hold"] = True
        if spec.time_min_minutes is not None:
            job["time_minimum"] = spec.time_min_minutes
        if spec.deadline is not None:
            job["deadline"] = slurm_time(spec.deadline, local=True)
        # no retry on submit: the caller's token lookup decides whether a lost answer submitted
        doc = await self._request_once(
            "POST", f"/slurm/{API}/job/submit", json={"script": spec.script, "job": job}
        )
        job_id = doc.get("job_id")
        # a held job is accepted with a "held state" note in errors
        errors = [e for e in _errors(doc) if "held state" not in str(e.get("error", ""))]
        if not job_id or errors:
            raise InvalidRequest(
                BACKEND, f"slurmrestd submit {spec.name}: {_describe(errors) or 'no job id'}"
            )
        log.info("slurm.submitted", client=self.name, job_id=job_id, name=spec.name, partition=spec.partition)
        return str(job_id)

    async def jobs(self) -> list[SlurmJob]:
        doc = await self._request("GET", f"/slurm/{API}/jobs")
        if _errors(doc):
            raise BackendError(BACKEND, f"slurmrestd jobs: {_describe(_errors(doc))}")
        return [job_from_openapi(j) for j in doc.get("jobs") or ()]

    async def job(self, job_id: str) -> SlurmJob | None:
        doc = await self._request("GET", f"/slurm/{API}/job/{job_id}")
        jobs = doc.get("jobs") or ()
        return job_from_openapi(jobs[0]) if jobs else None

    async def cancel(self, job_id: str) -> None:
        doc = await self._request("DELETE", f"/slurm/{API}/job/{job_id}")
        errors = _errors(doc)
        benign = ("invalid job id", "already completing or completed")
        if errors and not all(any(b in _describe([e]).lower() for b in benign) for e in errors):
            raise BackendError(BACKEND, f"slurmrestd cancel {job_id}: {_describe(errors)}")
        log.info("slurm.cancelled", client=self.name, job_id=job_id)

    async def nodes(self) -> list[SlurmNode]:
        doc = await self._request("GET", f"/slurm/{API}/nodes")
        return [node_from_openapi(n) for n in doc.get("nodes") or ()]

    async def accounting(
        self, *, since: datetime, accounts: Collection[str] | None = None
    ) -> list[AccountingRecord]:
        # relative to the server's clock: immune to the server's time zone (parse_time "now-N")
        ago = max(0, int((datetime.now(UTC) - since.astimezone(UTC)).total_seconds()) + 1)
        params: dict[str, str] = {"start_time": f"now-{ago}"}
        if accounts:
            params["account"] = ",".join(sorted(accounts))
        doc = await self._request("GET", f"/slurmdb/{API}/jobs", params=params)
        errors = _errors(doc)
        if errors:
            raise AccountingUnavailable(BACKEND, f"slurmrestd accounting: {_describe(errors)}")
        records = [accounting_from_openapi(j) for j in doc.get("jobs") or ()]
        # filter here as well: not every slurmrestd honours every query parameter
        return [
            r
            for r in records
            if (not accounts or r.account in accounts)
            and (r.end_time is None or r.end_time >= since.astimezone(UTC))
        ]

    async def close(self) -> None:
        await self._http.aclose()
