"""What a quota error covers: the region, market, family or instance types an account quota limits.

A provider's quota error names one quota (EC2 `VcpuLimitExceeded` for a vCPU bucket of a market,
`MaxSpotInstanceCountExceeded` for every spot request of a region, GCE `Quota 'N2_CPUS' exceeded ...
in region X`). Every offering that quota covers will be refused too, so the engine blocks them all at
once (with an exponential cool-off) and the demand goes to an offering outside the scope in the same
cycle, instead of trying the next 33 spot types one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from provisioner.domain import Market, Offering


@dataclass(frozen=True, slots=True)
class QuotaScope:
    backend: str
    quota: str  # the provider's name for it: "L-34B43A08", "MaxSpotInstanceCount", "CPUS", "N2_CPUS"...
    region: str | None = None  # None: every region of the backend (a global quota)
    market: Market | None = None  # None: on-demand and spot alike
    instance_types: frozenset[str] | None = None  # None: every type in the region and market
    families: frozenset[str] | None = None  # None: every family
    gpu_model: str | None = None  # a GPU quota: only offerings with this GPU
    limit: float | None = None  # the limit the provider quoted, where it did

    @property
    def key(self) -> str:
        parts = [
            self.backend,
            self.region or "*",
            str(self.market) if self.market else "*",
            self.quota,
        ]
        return "quota:" + ":".join(parts)

    def covers(self, o: Offering) -> bool:
        if o.backend != self.backend:
            return False
        if self.region is not None and o.region != self.region:
            return False
        if self.market is not None and o.market != self.market:
            return False
        if self.instance_types is not None and o.instance_type not in self.instance_types:
            return False
        if self.families is not None and o.family not in self.families:
            return False
        return not (self.gpu_model is not None and (o.gpu_model or "").upper() != self.gpu_model.upper())

    def describe(self) -> str:
        where = [self.region or "every region", str(self.market) if self.market else "every market"]
        if self.families is not None:
            where.append("families " + ",".join(sorted(self.families)))
        if self.instance_types is not None:
            where.append(f"{len(self.instance_types)} instance types")
        if self.gpu_model:
            where.append(f"GPU {self.gpu_model}")
        limit = f" (limit {self.limit:g})" if self.limit is not None else ""
        return f"quota {self.quota}{limit} on {self.backend}: {', '.join(where)}"


def offering_scope(backend: str, o: Offering, quota: str = "unknown") -> QuotaScope:
    """The narrowest guess when the error says nothing: this offering's family, market and region."""
    return QuotaScope(backend, quota, region=o.region, market=o.market, families=frozenset({o.family}))


def covered(scope: QuotaScope, offerings: Iterable[Offering]) -> list[Offering]:
    return [o for o in offerings if scope.covers(o)]


_LIMIT_RE = re.compile(r"limit (?:of )?(\d+(?:\.\d+)?)", re.I)


def quoted_limit(message: str) -> float | None:
    m = _LIMIT_RE.search(message)
    return float(m.group(1)) if m else None


_GCE_QUOTA_RE = re.compile(
    r"Quota '([A-Z0-9_]+)' exceeded\.?(?:\s*Limit:\s*([\d.]+))?(?:\s*in region ([a-z0-9-]+))?"
)
_GCE_GLOBAL = frozenset(
    {"NETWORKS", "FIREWALLS", "IMAGES", "SNAPSHOTS", "CPUS_ALL_REGIONS", "GPUS_ALL_REGIONS"}
)


def gce_scope(backend: str, message: str, o: Offering) -> QuotaScope:
    """From GCE's "Quota 'N2_CPUS' exceeded. Limit: 24.0 in region us-central1." (or the offering alone)."""
    m = _GCE_QUOTA_RE.search(message)
    if m is None:
        return offering_scope(backend, o)
    name, limit, region = m.group(1), m.group(2), m.group(3)
    lim = float(limit) if limit else None
    region_of = None if name in _GCE_GLOBAL else (region or o.region)
    spot = name.startswith("PREEMPTIBLE_")
    base = name.removeprefix("PREEMPTIBLE_")
    market = Market.SPOT if spot else None
    if base.endswith("_GPUS") and base.startswith(("NVIDIA_", "GPUS")):
        gpu = base.removeprefix("NVIDIA_").removesuffix("_GPUS")
        gpu_model = None if gpu in ("", "GPUS") else gpu.replace("_", "")
        return QuotaScope(backend, name, region_of, market, gpu_model=gpu_model or o.gpu_model, limit=lim)
    if base.endswith("_CPUS") and base not in ("CPUS_ALL_REGIONS",):
        family = base.removesuffix("_CPUS").lower()
        return QuotaScope(backend, name, region_of, market, families=frozenset({f"gce:{family}"}), limit=lim)
    return QuotaScope(backend, name, region_of, market, limit=lim)
