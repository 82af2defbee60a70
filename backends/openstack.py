"""OpenStack backend through apache-libcloud's OpenStack driver (Keystone v3 password auth, Nova, Glance).

Idempotency: Nova has no client token. Each server gets a deterministic name derived from the
broker's resource id and token, and metadata `provisioner-token` (a SHA-256 of the token).
Before creating, the backend asks Nova for servers with that exact name (`GET /servers/detail?name=`)
and returns the one carrying the same token instead of creating another. Within one process,
provisions with the same token are serialised by a lock. The remaining race window is a create
whose request reached Nova but whose reply was lost, retried before Nova recorded the first
(Nova records a server before it answers 202, so this needs a client-side timeout mid-request):
right after a create the backend lists the name again and, if two servers carry the token, keeps
the oldest and deletes the others; anything that still slips through carries our tags, so the
reconciler's `list_resources` sees both units for one resource id and releases the extra one.

OpenStack has no price API: only flavours priced in the config become offerings.
`provider_id` is the Nova server id.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import requests
import structlog
from libcloud import pricing as libcloud_pricing
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver, OpenStackNetwork
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from backends.base import (
    TAG_BROKER,
    TAG_OFFERING,
    TAG_RESOURCE,
    AuthFailed,
    BackendError,
    BackendResource,
    BackendTimeout,
    CapacityUnavailable,
    InvalidRequest,
    ProviderState,
    ProvisionRequest,
    QuotaExceeded,
    Throttled,
)
from backends.openstack_config import FlavorPricing, OpenStackConfig
from provisioner.domain import Arch, Market, Offering
from provisioner.logs import register_secret

log = structlog.get_logger(__name__)

T = TypeVar("T")

TOKEN_METADATA_KEY = "provisioner-token"
NO_VALID_HOST = "No valid host was found"

_STATE_MAP = {
    NodeState.PENDING: ProviderState.PENDING,
    NodeState.STARTING: ProviderState.PENDING,
    NodeState.REBOOTING: ProviderState.PENDING,
    NodeState.RECONFIGURING: ProviderState.PENDING,
    NodeState.RUNNING: ProviderState.RUNNING,
    NodeState.STOPPING: ProviderState.STOPPING,
    # Shut off or suspended: does no work but holds quota: release it.
    NodeState.STOPPED: ProviderState.STOPPING,
    NodeState.SUSPENDED: ProviderState.STOPPING,
    NodeState.PAUSED: ProviderState.STOPPING,
    NodeState.TERMINATED: ProviderState.TERMINATED,
    NodeState.ERROR: ProviderState.FAILED,
    NodeState.UNKNOWN: ProviderState.UNKNOWN,
}


def server_name_for(prefix: str, resource_id: str, token: str) -> str:
    """A deterministic server name: same intent, same name."""
    middle = re.sub(r"[^a-z0-9-]", "-", resource_id.lower()).strip("-")[:40].strip("-")
    digest = token_hash(token)[:10]
    return f"{prefix}-{middle}-{digest}" if middle else f"{prefix}-{digest}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _http_message(exc: BaseHTTPError) -> str:
    return str(exc.message)[:300]


def map_libcloud_error(
    backend: str, action: str, exc: Exception, offering_id: str | None = None
) -> BackendError:
    """Translate libcloud / transport exceptions into the broker's typed errors."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, InvalidCredsError):
        # libcloud's text can hold the raw reply body: keep it out.
        return AuthFailed(backend, f"{action}: credentials rejected (HTTP 401)", offering_id=offering_id)
    if isinstance(exc, socket.timeout | TimeoutError | requests.exceptions.Timeout):
        return BackendTimeout(backend, f"{action}: timed out", offering_id=offering_id)
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return BackendTimeout(backend, f"{action}: connection failed", offering_id=offering_id)
    if isinstance(exc, BaseHTTPError):
        code = int(exc.code)
        text = _http_message(exc)
        detail = f"{action}: HTTP {code}: {text}"
        quota = "quota exceeded" in text.lower()
        if code == 401:
            return AuthFailed(backend, f"{action}: credentials rejected (HTTP 401)", offering_id=offering_id)
        if code in (403, 413) and quota:
            return QuotaExceeded(backend, detail, offering_id=offering_id)
        if code in (413, 429):
            return Throttled(backend, detail, offering_id=offering_id)
        if code == 403:
            return AuthFailed(backend, detail, offering_id=offering_id)
        if code in (400, 404, 409):
            return InvalidRequest(backend, detail, offering_id=offering_id)
        if code in (502, 503):
            return Throttled(backend, detail, offering_id=offering_id)  # transient: retried
        if code == 504:
            return BackendTimeout(backend, detail, offering_id=offering_id)
        return BackendError(backend, detail, offering_id=offering_id)
    if isinstance(exc, LibcloudError):
        return BackendError(backend, f"{action}: {type(exc).__name__}: {str(exc.value)[:200]}")
    return BackendError(backend, f"{action}: unexpected {type(exc).__name__}", offering_id=offering_id)


def _not_found(exc: BackendError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, BaseHTTPError) and int(cause.code) == 404


class OpenStackBackend:
    """Backend over one OpenStack project via libcloud."""

    def __init__(self, config: OpenStackConfig, broker_id: str) -> None:
        register_secret(config.password.get_secret_value())
        register_secret(config.user_data)
        self.config = config
        self.name = config.name
        self.broker_id = broker_id
        # libcloud has no OpenStack prices and, finding none cached, re-reads its ~2 MB price file once
        # per flavour on every list_sizes (a quarter second each). Prices come from our config instead.
        if "openstack" not in libcloud_pricing.PRICING_DATA["compute"]:
            libcloud_pricing.set_pricing("compute", "openstack", {})
        driver_cls = get_driver(Provider.OPENSTACK)
        extra: dict[str, Any] = {}
        if config.compute_url:
            extra["ex_force_base_url"] = config.compute_url
        if config.image_url:
            extra["ex_force_image_url"] = config.image_url
        driver = driver_cls(
            config.username,
            config.password.get_secret_value(),
            api_version="2.1",
            ex_force_auth_url=config.auth_url,
            ex_force_auth_version="3.x_password",
            ex_tenant_name=config.project_name,
            ex_domain_name=config.user_domain_name,
            ex_tenant_domain_id=config.project_domain_id,
            ex_force_service_region=config.region,
            timeout=config.request_timeout_seconds,
            **extra,
        )
        # api_version 2.x selects the driver that speaks Glance v2 and paginates servers/detail.
        self._driver = cast(OpenStack_2_NodeDriver, driver)
        self._locks: dict[str, asyncio.Lock] = {}
        self._sizes: dict[str, NodeSize] | None = None
        self._images: dict[str, NodeImage] | None = None

    # -- calls -------------------------------------------------------------------------------

    async def _call(
        self, action: str, fn: Callable[[], T], offering_id: str | None = None, *, retry: bool = True
    ) -> T:
        """Run one blocking libcloud call in a thread, retrying throttling and timeouts with backoff."""

        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                raise map_libcloud_error(self.name, action, exc, offering_id) from exc

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts if retry else 1),
            wait=wait_exponential(
                multiplier=self.config.retry_base_seconds, max=self.config.retry_max_seconds
            ),
            retry=retry_if_exception(lambda e: isinstance(e, BackendError) and e.retryable),
            reraise=True,
        )
        async for attempt_state in retrying:
            with attempt_state:
                return await asyncio.to_thread(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _servers_named(self, name: str) -> list[Node]:
        # Nova's `name` filter is a regular expression; anchor it to match exactly.
        reply = self._driver.connection.request(
            "/servers/detail", params={"name": f"^{re.escape(name)}$"}
        ).object
        # _to_node is libcloud's own parser for a server body; no public call filters by name.
        return [self._driver._to_node(server) for server in reply.get("servers", [])]

    # -- Backend protocol --------------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        lock = self._locks.setdefault(request.idempotency_token, asyncio.Lock())
        async with lock:
            return await self._provision(request)

    async def _provision(self, request: ProvisionRequest) -> BackendResource:
        offering = request.offering
        pricing = self._pricing_for(offering)
        name = server_name_for(self.config.name_prefix, request.resource_id, request.idempotency_token)
        wanted = token_hash(request.idempotency_token)

        existing = await self._call("find", lambda: self._servers_named(name), offering.id)
        ours = [n for n in existing if (n.extra.get("metadata") or {}).get(TOKEN_METADATA_KEY) == wanted]
        if existing and not ours:
            raise InvalidRequest(
                self.name, f"server name {name} is taken by another request", offering_id=offering.id
            )
        if ours:
            log.info("openstack.adopt", name=name, servers=len(ours))
            return await self._settle(await self._keep_oldest(ours), offering.id)

        size = await self._size(offering.instance_type, offering.id)
        image = await self._image(pricing.arch, offering.id)
        metadata = {**request.all_tags(), TOKEN_METADATA_KEY: wanted}
        kwargs: dict[str, Any] = {"ex_metadata": metadata}
        if self.config.key_name:
            kwargs["ex_keyname"] = self.config.key_name
        if self.config.user_data:
            kwargs["ex_userdata"] = self.config.user_data
        if self.config.availability_zone or offering.zone:
            kwargs["ex_availability_zone"] = offering.zone or self.config.availability_zone
        if self.config.network_ids:
            kwargs["networks"] = [OpenStackNetwork(n, n, None, self._driver) for n in self.config.network_ids]
        log.info("openstack.create", name=name, flavor=size.name, offering=offering.id)
        created = await self._create_once(
            name,
            wanted,
            lambda: self._driver.create_node(name=name, size=size, image=image, **kwargs),
            offering.id,
        )
        keep = await self._dedupe(name, wanted, created, offering.id)
        return await self._settle(keep, offering.id)

    async def _create_once(
        self, name: str, wanted: str, create: Callable[[], Node], offering_id: str
    ) -> Node:
        """Create, retrying throttling/timeouts only after checking a lost reply did not create it."""
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                return await self._call("create", create, offering_id, retry=False)
            except (Throttled, BackendTimeout):
                found = await self._call("find", lambda: self._servers_named(name), offering_id)
                ours = [n for n in found if (n.extra.get("metadata") or {}).get(TOKEN_METADATA_KEY) == wanted]
                if ours:
                    return self._oldest(ours)
                if attempt == self.config.max_attempts:
                    raise
                delay = min(
                    self.config.retry_base_seconds * 2 ** (attempt - 1), self.config.retry_max_seconds
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _oldest(nodes: list[Node]) -> Node:
        return min(nodes, key=lambda n: (n.created_at or datetime.max.replace(tzinfo=UTC), n.id))

    async def _dedupe(self, name: str, wanted: str, created: Node, offering_id: str) -> Node:
        """Close the race window after a create: look again, keep one server for this token."""
        twins = await self._call("find", lambda: self._servers_named(name), offering_id)
        ours = [n for n in twins if (n.extra.get("metadata") or {}).get(TOKEN_METADATA_KEY) == wanted]
        return await self._keep_oldest(ours) if ours else created

    async def _keep_oldest(self, ours: list[Node]) -> Node:
        """Several servers carry one token (a race): keep the oldest, delete the others."""
        keep = self._oldest(ours)
        for extra in ours:
            if extra.id != keep.id:
                log.warning("openstack.duplicate_deleted", server=extra.id, kept=keep.id)
                await self.release(str(extra.id))
        return keep

    async def _settle(self, node: Node, offering_id: str) -> BackendResource:
        """Wait (bounded) until the server is ACTIVE or ERROR; a scheduling failure is CapacityUnavailable."""
        deadline = time.monotonic() + self.config.build_wait_seconds
        while node.state in (NodeState.PENDING, NodeState.STARTING) and time.monotonic() < deadline:
            await asyncio.sleep(self.config.poll_interval_seconds)
            fresh = await self._call(
                "get", functools.partial(self._driver.ex_get_node_details, node.id), offering_id
            )
            if fresh is None:
                raise BackendError(
                    self.name, f"server {node.id} vanished while building", offering_id=offering_id
                )
            node = fresh
        if node.state == NodeState.ERROR:
            fault = node.extra.get("fault") or {}
            message = str(fault.get("message", "no fault recorded"))[:300]
            log.warning("openstack.build_failed", server=node.id, fault=message)
            await self.release(str(node.id))  # an ERROR server still holds quota
            if NO_VALID_HOST.lower() in message.lower():
                raise CapacityUnavailable(self.name, f"server {node.id}: {message}", offering_id=offering_id)
            if "quota" in message.lower():
                raise QuotaExceeded(self.name, f"server {node.id}: {message}", offering_id=offering_id)
            raise BackendError(
                self.name, f"server {node.id} failed to build: {message}", offering_id=offering_id
            )
        return self._to_resource(node)

    async def list_resources(self) -> list[BackendResource]:
        # libcloud follows Nova's `servers_links` (limit/marker) pages; Nova cannot filter on metadata,
        # so ours are picked out here.
        nodes = await self._call("list", self._driver.list_nodes)
        return [
            self._to_resource(n)
            for n in nodes
            if (n.extra.get("metadata") or {}).get(TAG_BROKER) == self.broker_id
        ]

    async def release(self, provider_id: str) -> None:
        log.info("openstack.delete", server=provider_id)
        node = Node(provider_id, provider_id, NodeState.UNKNOWN, [], [], self._driver)
        try:
            await self._call("delete", lambda: self._driver.destroy_node(node))
        except InvalidRequest as exc:
            if _not_found(exc):
                return  # already gone
            raise

    async def offerings(self) -> list[Offering]:
        sizes = await self._sizes_by_name()
        result = []
        for flavor, pricing in sorted(self.config.flavors.items()):
            size = sizes.get(flavor)
            if size is None or (size.extra or {}).get("disabled"):
                continue
            result.append(
                Offering(
                    id=f"{self.name}:{self.config.region}:{flavor}:{Market.ON_DEMAND}",
                    backend=self.name,
                    provider="openstack",
                    region=self.config.region,
                    zone=self.config.availability_zone,
                    instance_type=flavor,
                    family=f"openstack:{self.name}",
                    market=Market.ON_DEMAND,
                    cores=int(size.extra.get("vcpus") or getattr(size, "vcpus", 0) or 0),
                    memory_gb=round(size.ram / 1024, 3),
                    arch=pricing.arch,
                    price_per_hour=pricing.price_per_hour,
                    hs23_per_core=pricing.hs23_per_core,
                    gpu_model=pricing.gpu_model,
                    gpu_count=pricing.gpu_count,
                    interruption_rate_per_hour=pricing.interruption_rate_per_hour,
                    startup_seconds=self.config.startup_seconds,
                    benchmark_assumption="hs23_per_core from the backend config",
                )
            )
        return result

    async def close(self) -> None:
        self._sizes = None
        self._images = None

    # -- helpers -----------------------------------------------------------------------------

    def _pricing_for(self, offering: Offering) -> FlavorPricing:
        pricing = self.config.flavors.get(offering.instance_type)
        if offering.provider != "openstack" or pricing is None:
            raise InvalidRequest(
                self.name,
                f"offering {offering.id}: flavour {offering.instance_type!r} is not configured",
                offering_id=offering.id,
            )
        if pricing.arch != offering.arch:
            raise InvalidRequest(
                self.name,
                f"offering {offering.id}: arch {offering.arch} but flavour is configured {pricing.arch}",
                offering_id=offering.id,
            )
        return pricing

    async def _sizes_by_name(self) -> dict[str, NodeSize]:
        if self._sizes is None:
            sizes = await self._call("list flavours", self._driver.list_sizes)
            self._sizes = {s.name: s for s in sizes}
        return self._sizes

    async def _size(self, flavor: str, offering_id: str) -> NodeSize:
        size = (await self._sizes_by_name()).get(flavor)
        if size is None:
            raise InvalidRequest(self.name, f"flavour {flavor!r} does not exist", offering_id=offering_id)
        return size

    async def _image(self, arch: Arch, offering_id: str) -> NodeImage:
        wanted = self.config.images.get(arch)
        if wanted is None:
            raise InvalidRequest(
                self.name, f"images: no image configured for arch {arch}", offering_id=offering_id
            )
        if self._images is None:
            images = await self._call("list images", self._driver.list_images)
            self._images = {i.id: i for i in images} | {i.name: i for i in images}
        image = self._images.get(wanted)
        if image is None:
            raise InvalidRequest(self.name, f"image {wanted!r} for {arch} not found", offering_id=offering_id)
        return image

    def _to_resource(self, node: Node) -> BackendResource:
        metadata = {str(k): str(v) for k, v in (node.extra.get("metadata") or {}).items()}
        tags = {k: v for k, v in metadata.items() if k != TOKEN_METADATA_KEY}
        state = _STATE_MAP.get(node.state, ProviderState.UNKNOWN)
        if node.extra.get("task_state") == "deleting":
            state = ProviderState.STOPPING
        fault = node.extra.get("fault") or {}
        created = node.created_at
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return BackendResource(
            provider_id=str(node.id),
            state=state,
            resource_id=tags.get(TAG_RESOURCE),
            offering_id=tags.get(TAG_OFFERING),
            launched_at=created,
            tags=tags,
            detail=str(fault.get("message", ""))[:300],
        )
