"""Google Compute Engine backend: VMs (x86, ARM, GPU; standard or spot) through google-cloud-compute.

Idempotency: every insert carries a GCE `requestId`, a UUID derived from the broker's token
(uuid5), so a retried insert returns the original operation instead of a second VM. The instance
name is also derived from the resource id and token, so a retry after GCE forgot the requestId
(it keeps them for at least an hour) gets `alreadyExists` and adopts the VM it finds.

Labels: GCE labels allow only lowercase letters, digits, `_` and `-`, at most 63 characters, and
keys must start with a letter. The broker's tag *keys* are label-safe already; *values* are
lowercased, every other character becomes `-`, and they are cut to 63 characters (`label_value`).
That is lossy, so the exact tags are also kept as JSON in the instance metadata item
`provisioner-tags`, which is what `list_resources` reads back. Labels are only used to filter.

`provider_id` of a GCE resource is "<zone>/<instance name>": instances are zonal, and release
needs both.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
import structlog
from google.api_core import exceptions as gexc
from google.auth import exceptions as gauth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import compute_v1
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
from backends.egress_counters import EgressCounters, lifetime_window
from backends.gce_config import GceConfig
from backends.gce_monitoring import DEFAULT_ENDPOINT, MONITORING_SCOPE, fetch_sent_bytes, sent_bytes_query
from backends.quota import gce_scope
from provisioner.domain import Arch, Market, Offering
from provisioner.logs import register_secret

log = structlog.get_logger(__name__)

T = TypeVar("T")

# uuid5 namespace for requestIds; fixed so the same token always gives the same requestId.
_REQUEST_ID_NAMESPACE = uuid.UUID("6f0a6b0e-5d1c-4d8e-9a77-1f3c2b7e0a41")
TAGS_METADATA_KEY = "provisioner-tags"
TOKEN_METADATA_KEY = "provisioner-token"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"

ARM_FAMILIES = frozenset({"t2a", "c4a", "n4a"})
# Families whose GPUs come with the machine type; only n1 takes attached accelerators.
BUILTIN_GPU_FAMILIES = frozenset({"a2", "a3", "a4", "a4x", "g2", "g4"})
ATTACHED_GPU_FAMILIES = frozenset({"n1"})
N1_ACCELERATORS = {
    "t4": "nvidia-tesla-t4",
    "v100": "nvidia-tesla-v100",
    "p100": "nvidia-tesla-p100",
    "p4": "nvidia-tesla-p4",
}

_STATUS_MAP = {
    "PROVISIONING": ProviderState.PENDING,
    "STAGING": ProviderState.PENDING,
    "RUNNING": ProviderState.RUNNING,
    "STOPPING": ProviderState.STOPPING,
    "SUSPENDING": ProviderState.STOPPING,
    # A suspended or stopped VM does no work but still exists (and costs disk): release it.
    "SUSPENDED": ProviderState.STOPPING,
    "TERMINATED": ProviderState.TERMINATED,
    "STOPPED": ProviderState.TERMINATED,
    "REPAIRING": ProviderState.UNKNOWN,
}

# Operation error codes (Operation.error.errors[].code) by the typed error they mean.
_CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RESOURCE_POOL_EXHAUSTED",
        "RESOURCE_AVAILABILITY",
        "STOCKOUT",
    }
)
_QUOTA_CODES = frozenset({"QUOTA_EXCEEDED"})
_THROTTLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
_QUOTA_REASONS = frozenset({"quotaExceeded", "QUOTA_EXCEEDED"})
_CAPACITY_REASONS = frozenset({"resourceExhausted", *_CAPACITY_CODES})
_NOT_FOUND_CODES = frozenset({"RESOURCE_NOT_FOUND", "notFound"})
_EXISTS_CODES = frozenset({"RESOURCE_ALREADY_EXISTS", "alreadyExists"})


def label_value(value: str) -> str:
    """A GCE label value for `value`: lowercase, [a-z0-9_-] only, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def label_key(key: str) -> str:
    """A GCE label key for `key`: as `label_value`, and starting with a letter."""
    cleaned = label_value(key)
    if not cleaned or not cleaned[0].isalpha():
        cleaned = ("t" + cleaned)[:63]
    return cleaned


def request_id_for(token: str) -> str:
    """The GCE requestId (a UUID, as GCE requires) for an idempotency token."""
    return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, token))


def instance_name_for(prefix: str, resource_id: str, token: str) -> str:
    """A valid, deterministic instance name: same intent, same name."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:10]
    middle = re.sub(r"[^a-z0-9-]", "-", resource_id.lower()).strip("-")[:40].strip("-")
    return f"{prefix}-{middle}-{digest}" if middle else f"{prefix}-{digest}"


def machine_family(machine_type: str) -> str:
    return machine_type.split("-", 1)[0].lower()


def _error_reasons(exc: gexc.GoogleAPICallError) -> set[str]:
    reasons: set[str] = set()
    for err in exc.errors or ():
        if isinstance(err, dict) and err.get("reason"):
            reasons.add(str(err["reason"]))
    if exc.reason:
        reasons.add(exc.reason)
    return reasons


def _api_message(exc: gexc.GoogleAPICallError) -> str:
    # exc.message is the server's text only (str(exc) would add the URL); never request headers.
    return str(exc.message)[:300]


def map_api_error(backend: str, action: str, exc: Exception, offering_id: str | None = None) -> BackendError:
    """Translate a google-api-core / transport exception into the broker's typed errors."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, requests.exceptions.Timeout | gexc.DeadlineExceeded):
        return BackendTimeout(backend, f"{action}: timed out", offering_id=offering_id)
    if isinstance(exc, gauth_exceptions.RefreshError | gauth_exceptions.DefaultCredentialsError):
        # The library's text may quote the token endpoint's reply: keep it out of the message.
        return AuthFailed(
            backend, f"{action}: credentials rejected or not refreshable", offering_id=offering_id
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return BackendTimeout(backend, f"{action}: connection failed", offering_id=offering_id)
    if not isinstance(exc, gexc.GoogleAPICallError):
        return BackendError(backend, f"{action}: unexpected {type(exc).__name__}", offering_id=offering_id)
    reasons = _error_reasons(exc)
    detail = f"{action}: HTTP {exc.code} {','.join(sorted(reasons)) or '-'}: {_api_message(exc)}"
    if isinstance(exc, gexc.TooManyRequests) or reasons & _THROTTLE_REASONS:
        return Throttled(backend, detail, offering_id=offering_id)
    if reasons & _QUOTA_REASONS:
        return QuotaExceeded(backend, detail, offering_id=offering_id)
    if reasons & _CAPACITY_REASONS:
        return CapacityUnavailable(backend, detail, offering_id=offering_id)
    if isinstance(exc, gexc.Unauthorized | gexc.Forbidden):
        return AuthFailed(backend, detail, offering_id=offering_id)
    if isinstance(exc, gexc.ServiceUnavailable | gexc.InternalServerError | gexc.BadGateway):
        # Transient on Google's side: retried like throttling.
        return Throttled(backend, detail, offering_id=offering_id)
    if isinstance(exc, gexc.GatewayTimeout):
        return BackendTimeout(backend, detail, offering_id=offering_id)
    if isinstance(exc, gexc.BadRequest | gexc.NotFound):
        return InvalidRequest(backend, detail, offering_id=offering_id)
    return BackendError(backend, detail, offering_id=offering_id)


def map_operation_error(
    backend: str, action: str, op: compute_v1.Operation, offering_id: str | None = None
) -> BackendError:
    """Translate a DONE operation's error (codes such as ZONE_RESOURCE_POOL_EXHAUSTED) into a typed error."""
    errors = list(op.error.errors)
    codes = {e.code for e in errors}
    text = "; ".join(f"{e.code}: {e.message[:200]}" for e in errors) or op.http_error_message
    detail = f"{action}: operation {op.name} failed: {text}"
    if codes & _CAPACITY_CODES:
        return CapacityUnavailable(backend, detail, offering_id=offering_id)
    if codes & _QUOTA_CODES:
        return QuotaExceeded(backend, detail, offering_id=offering_id)
    if codes & {"RATE_LIMIT_EXCEEDED"}:
        return Throttled(backend, detail, offering_id=offering_id)
    if op.http_error_status_code in (401, 403):
        return AuthFailed(backend, detail, offering_id=offering_id)
    if op.http_error_status_code in (400, 404) or codes & {"INVALID_FIELD_VALUE", *_NOT_FOUND_CODES}:
        return InvalidRequest(backend, detail, offering_id=offering_id)
    return BackendError(backend, detail, offering_id=offering_id)


def _operation_codes(op: compute_v1.Operation) -> set[str]:
    return {e.code for e in op.error.errors}


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _is_spot(instance: compute_v1.Instance) -> bool:
    scheduling = instance.scheduling
    return scheduling.provisioning_model == "SPOT" or bool(scheduling.preemptible)


def _metadata(instance: compute_v1.Instance) -> dict[str, str]:
    return {item.key: item.value for item in instance.metadata.items}


class GceBackend:
    """Backend over one GCE project; `catalog` holds the offerings (prices come from the catalog)."""

    def __init__(
        self,
        config: GceConfig,
        broker_id: str,
        *,
        catalog: Sequence[Offering] = (),
        credentials: Credentials | None = None,
    ) -> None:
        register_secret(config.startup_script)  # pilot tokens live in the startup script
        self.config = config
        self.name = config.name
        self.broker_id = broker_id
        self._catalog = list(catalog)
        creds = credentials or self._load_credentials()
        options: dict[str, Any] = {}
        if config.api_endpoint:
            options["api_endpoint"] = config.api_endpoint
        self._instances = compute_v1.InstancesClient(
            transport="rest", credentials=creds, client_options=options or None
        )
        self._operations = compute_v1.ZoneOperationsClient(
            transport="rest", credentials=creds, client_options=options or None
        )
        # Instances this process asked to delete: a spot VM going away otherwise was preempted.
        self._released: set[str] = set()
        self._monitoring = AuthorizedSession(creds) if config.egress_metrics else None
        self._egress = EgressCounters(config.egress_refresh_seconds)  # per project: bytes out since creation

    def _scopes(self) -> list[str]:
        return [COMPUTE_SCOPE, MONITORING_SCOPE] if self.config.egress_metrics else [COMPUTE_SCOPE]

    def _load_credentials(self) -> Credentials:
        if self.config.anonymous:
            return AnonymousCredentials()
        try:
            if self.config.credentials_file is not None:
                from google.oauth2 import service_account

                creds: Credentials = service_account.Credentials.from_service_account_file(
                    str(self.config.credentials_file), scopes=self._scopes()
                )
                return creds
            import google.auth

            adc, _project = google.auth.default(scopes=self._scopes())
            return adc
        except (OSError, ValueError, gauth_exceptions.DefaultCredentialsError) as exc:
            # Name the source, never the content of a key file.
            source = "Application Default Credentials"
            if self.config.credentials_file is not None:
                source = f"credentials_file {self.config.credentials_file}"
            raise AuthFailed(self.name, f"{source}: cannot load ({type(exc).__name__})") from None

    # -- calls -------------------------------------------------------------------------------

    async def _call(self, action: str, fn: Callable[[], T], offering_id: str | None = None) -> T:
        """Run one blocking client call in a thread, retrying throttling and timeouts with backoff."""

        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                raise map_api_error(self.name, action, exc, offering_id) from exc

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_exponential(
                multiplier=self.config.retry_base_seconds, max=self.config.retry_max_seconds
            ),
            retry=retry_if_exception(lambda e: isinstance(e, BackendError) and e.retryable),
            reraise=True,
        )
        async for attempt_state in retrying:
            with attempt_state:
                if attempt_state.retry_state.attempt_number > 1:
                    log.info("gce.retry", action=action, attempt=attempt_state.retry_state.attempt_number)
                return await asyncio.to_thread(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _await_operation(
        self, zone: str, op: compute_v1.Operation, action: str, offering_id: str | None
    ) -> compute_v1.Operation:
        """Poll the zone operation until DONE; a DONE operation may still carry an error."""
        deadline = time.monotonic() + self.config.operation_timeout_seconds
        timeout = self.config.request_timeout_seconds
        while op.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise BackendTimeout(
                    self.name,
                    f"{action}: operation {op.name} not done after "
                    f"{self.config.operation_timeout_seconds:.0f}s",
                    offering_id=offering_id,
                )
            await asyncio.sleep(self.config.poll_interval_seconds)
            name = op.name
            op = await self._call(
                f"{action} (poll)",
                functools.partial(
                    self._operations.get,
                    project=self.config.project,
                    zone=zone,
                    operation=name,
                    retry=None,
                    timeout=timeout,
                ),
                offering_id,
            )
        return op

    # -- Backend protocol --------------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        try:
            return await self._provision(request)
        except QuotaExceeded as exc:
            # GCE names the quota and region ("Quota 'N2_CPUS' exceeded. Limit: 24.0 in region ..."):
            # say what else it covers, so the engine blocks all of it at once.
            if exc.scope is not None:
                raise
            offering = request.offering
            raise QuotaExceeded(
                self.name,
                str(exc).removeprefix(f"{self.name}: "),
                offering_id=offering.id,
                scope=gce_scope(self.name, str(exc), offering),
            ) from None

    async def _provision(self, request: ProvisionRequest) -> BackendResource:
        offering = request.offering
        zone = self._zone_for(offering)
        instance = self.build_instance(request, zone)
        request_id = request_id_for(request.idempotency_token)
        timeout = self.config.request_timeout_seconds
        insert = compute_v1.InsertInstanceRequest(
            project=self.config.project, zone=zone, instance_resource=instance, request_id=request_id
        )
        log.info(
            "gce.insert",
            instance=instance.name,
            zone=zone,
            offering=offering.id,
            resource=request.resource_id,
        )
        try:
            op = await self._call(
                "insert",
                lambda: self._instances.insert_unary(request=insert, retry=None, timeout=timeout),
                offering.id,
            )
        except BackendError as exc:
            if not self._is_conflict(exc):
                raise
            return await self._adopt(zone, instance.name, request.idempotency_token, offering.id)
        op = await self._await_operation(zone, op, "insert", offering.id)
        if op.error.errors:
            if _operation_codes(op) & _EXISTS_CODES:
                return await self._adopt(zone, instance.name, request.idempotency_token, offering.id)
            raise map_operation_error(self.name, "insert", op, offering.id)
        created = await self._get(zone, instance.name, offering.id)
        if created is None:
            raise BackendError(
                self.name, f"insert: {zone}/{instance.name} done but not found", offering_id=offering.id
            )
        return self._to_resource(zone, created)

    @staticmethod
    def _is_conflict(exc: BackendError) -> bool:
        cause = exc.__cause__
        return isinstance(cause, gexc.Conflict)

    async def _adopt(self, zone: str, name: str, token: str, offering_id: str) -> BackendResource:
        """The name exists: it is ours if it carries the same token, else the request is invalid."""
        found = await self._get(zone, name, offering_id)
        if found is None:
            raise BackendError(self.name, f"insert: {zone}/{name} reported existing but not found")
        if _metadata(found).get(TOKEN_METADATA_KEY) != hashlib.sha256(token.encode()).hexdigest():
            raise InvalidRequest(
                self.name,
                f"insert: instance name {zone}/{name} is taken by another request",
                offering_id=offering_id,
            )
        return self._to_resource(zone, found)

    async def _get(self, zone: str, name: str, offering_id: str | None = None) -> compute_v1.Instance | None:
        timeout = self.config.request_timeout_seconds
        try:
            return await self._call(
                "get",
                lambda: self._instances.get(
                    project=self.config.project, zone=zone, instance=name, retry=None, timeout=timeout
                ),
                offering_id,
            )
        except InvalidRequest as exc:
            if isinstance(exc.__cause__, gexc.NotFound):
                return None
            raise

    async def list_resources(self) -> list[BackendResource]:
        broker_label = label_value(self.broker_id)
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.config.project,
            filter=f'labels.{TAG_BROKER} = "{broker_label}"',
            max_results=self.config.page_size,
        )
        timeout = self.config.request_timeout_seconds

        def fetch_all() -> list[tuple[str, compute_v1.Instance]]:
            found: list[tuple[str, compute_v1.Instance]] = []
            pager = self._instances.aggregated_list(request=request, retry=None, timeout=timeout)
            for scope, scoped in pager:
                zone = scope.rsplit("/", 1)[-1]
                found.extend((zone, inst) for inst in scoped.instances)
            return found

        # One retry unit for the whole paged walk: a throttled page restarts the listing.
        pairs = await self._call("list", fetch_all)
        ours = [(zone, inst) for zone, inst in pairs if self._tags_of(inst).get(TAG_BROKER) == self.broker_id]
        # (a label matched after sanitising may be another broker's VM: the exact tags decide)
        sent = await self._egress_counters([inst for _zone, inst in ours]) if self._monitoring else {}
        resources = []
        for zone, inst in ours:
            resource = self._to_resource(zone, inst)
            counter = sent.get(str(inst.id))
            resources.append(resource if counter is None else replace(resource, egress_bytes=counter))
        return resources

    async def _egress_counters(self, instances: Sequence[compute_v1.Instance]) -> dict[str, int]:
        """GCE instance id → bytes it has sent since creation (Cloud Monitoring sent_bytes_count summed
        over its life, `backends.gce_monitoring`), read at most every `egress_refresh_seconds`; in
        between, and when Cloud Monitoring fails or refuses, the last values stand. VMs with no data
        yet are left out: no measurement, not a made-up 0."""
        scope = self.config.project
        if self._monitoring is None or not self._egress.due(scope):
            return self._egress.last(scope)
        created = {
            str(inst.id): t
            for inst in instances
            if inst.status not in ("PROVISIONING", "STAGING")
            and (t := _parse_time(inst.creation_timestamp)) is not None
        }
        if not created:
            return self._egress.record(scope, {}, ())
        now = datetime.now(UTC)
        # The API wants the interval's end no later than now; data is visible up to 4 minutes late anyway.
        window = replace(lifetime_window(min(created.values()), now), end=now)
        params = sent_bytes_query(label_value(self.broker_id), window)
        session = self._monitoring
        endpoint = self.config.monitoring_endpoint or DEFAULT_ENDPOINT
        try:
            measured = await self._call(
                "monitoring timeSeries.list",
                functools.partial(
                    fetch_sent_bytes,
                    session,
                    endpoint,
                    self.config.project,
                    params,
                    self.config.request_timeout_seconds,
                ),
            )
        except BackendError as exc:
            # On by default: a service account without monitoring.timeSeries.list must not stop the
            # listing (the Compute call before this one proves the credentials themselves work).
            log.warning("gce.egress_metrics_unavailable", project=scope, error=str(exc))
            return self._egress.last(scope)
        return self._egress.record(scope, {i: n for i, n in measured.items() if i in created}, created)

    async def release(self, provider_id: str) -> None:
        zone, name = self._split_provider_id(provider_id)
        # One requestId per release call, shared by its retries; a later call is a new delete.
        request_id = str(uuid.uuid4())
        timeout = self.config.request_timeout_seconds
        delete = compute_v1.DeleteInstanceRequest(
            project=self.config.project, zone=zone, instance=name, request_id=request_id
        )
        self._released.add(provider_id)
        log.info("gce.delete", instance=name, zone=zone)
        try:
            op = await self._call(
                "delete", lambda: self._instances.delete_unary(request=delete, retry=None, timeout=timeout)
            )
        except InvalidRequest as exc:
            if isinstance(exc.__cause__, gexc.NotFound):
                return  # already gone
            raise
        op = await self._await_operation(zone, op, "delete", None)
        if op.error.errors and not _operation_codes(op) <= _NOT_FOUND_CODES:
            raise map_operation_error(self.name, "delete", op)

    async def offerings(self) -> list[Offering]:
        zones = set(self.config.zones)
        return [
            o
            for o in self._catalog
            if o.backend == self.name
            and (o.zone in zones or (o.zone is None and self._region_served(o.region)))
        ]

    async def close(self) -> None:
        for client in (self._instances, self._operations):
            client.transport.close()
        if self._monitoring is not None:
            self._monitoring.close()

    # -- building and reading instances ------------------------------------------------------

    def _region_served(self, region: str) -> bool:
        return any(z.rsplit("-", 1)[0] == region for z in self.config.zones)

    def _zone_for(self, offering: Offering) -> str:
        if offering.provider != "gce":
            raise InvalidRequest(
                self.name, f"offering {offering.id}: provider {offering.provider!r} is not gce"
            )
        if offering.zone:
            if offering.zone not in self.config.zones:
                raise InvalidRequest(
                    self.name,
                    f"offering {offering.id}: zone {offering.zone} is not configured",
                    offering_id=offering.id,
                )
            return offering.zone
        for zone in self.config.zones:
            if zone.rsplit("-", 1)[0] == offering.region:
                return zone
        raise InvalidRequest(
            self.name,
            f"offering {offering.id}: no configured zone in region {offering.region}",
            offering_id=offering.id,
        )

    @staticmethod
    def _split_provider_id(provider_id: str) -> tuple[str, str]:
        zone, sep, name = provider_id.partition("/")
        if not sep or not zone or not name:
            raise InvalidRequest("gce", f"provider_id {provider_id!r}: expected '<zone>/<instance name>'")
        return zone, name

    def build_instance(self, request: ProvisionRequest, zone: str) -> compute_v1.Instance:
        """The Instance body for a request: image by arch, spot scheduling, GPUs, labels, metadata."""
        offering = request.offering
        family = machine_family(offering.instance_type)
        family_arch = Arch.ARM64 if family in ARM_FAMILIES else Arch.X86_64
        if offering.arch != family_arch:
            raise InvalidRequest(
                self.name,
                f"offering {offering.id}: arch {offering.arch} but {offering.instance_type} is {family_arch}",
                offering_id=offering.id,
            )
        image = self.config.images.get(offering.arch)
        if image is None:
            raise InvalidRequest(self.name, f"images: no image configured for arch {offering.arch}")

        accelerators: list[compute_v1.AcceleratorConfig] = []
        if offering.gpu_count > 0 and family in ATTACHED_GPU_FAMILIES:
            model = (offering.gpu_model or "").lower().removeprefix("nvidia-").removeprefix("tesla-")
            accel = N1_ACCELERATORS.get(model)
            if accel is None:
                raise InvalidRequest(
                    self.name,
                    f"offering {offering.id}: GPU model {offering.gpu_model!r} cannot attach to n1",
                    offering_id=offering.id,
                )
            accelerators.append(
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/{accel}",
                    accelerator_count=offering.gpu_count,
                )
            )
        elif offering.gpu_count > 0 and family not in BUILTIN_GPU_FAMILIES:
            raise InvalidRequest(
                self.name, f"offering {offering.id}: family {family} has no GPUs", offering_id=offering.id
            )
        has_gpu = offering.gpu_count > 0 or family in BUILTIN_GPU_FAMILIES

        scheduling = compute_v1.Scheduling()
        if offering.market == Market.SPOT:
            scheduling.provisioning_model = "SPOT"
            scheduling.instance_termination_action = "DELETE"
            scheduling.automatic_restart = False
            scheduling.on_host_maintenance = "TERMINATE"
        else:
            scheduling.provisioning_model = "STANDARD"
            scheduling.automatic_restart = True
            # GPU VMs cannot live-migrate.
            scheduling.on_host_maintenance = "TERMINATE" if has_gpu else "MIGRATE"

        tags = request.all_tags()
        labels = {label_key(k): label_value(v) for k, v in tags.items()}
        metadata_items = [
            compute_v1.Items(key=TAGS_METADATA_KEY, value=json.dumps(tags, sort_keys=True)),
            compute_v1.Items(
                key=TOKEN_METADATA_KEY, value=hashlib.sha256(request.idempotency_token.encode()).hexdigest()
            ),
        ]
        if self.config.startup_script:
            metadata_items.append(compute_v1.Items(key="startup-script", value=self.config.startup_script))

        disk_type = self.config.boot_disk_type_by_family.get(family, self.config.boot_disk_type)
        nic = compute_v1.NetworkInterface(network=self.config.network)
        if self.config.subnetwork:
            nic.subnetwork = self.config.subnetwork
        instance = compute_v1.Instance(
            name=instance_name_for(self.config.name_prefix, request.resource_id, request.idempotency_token),
            machine_type=f"zones/{zone}/machineTypes/{offering.instance_type}",
            labels=labels,
            metadata=compute_v1.Metadata(items=metadata_items),
            scheduling=scheduling,
            guest_accelerators=accelerators,
            network_interfaces=[nic],
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=image,
                        disk_size_gb=self.config.boot_disk_gb,
                        disk_type=f"zones/{zone}/diskTypes/{disk_type}",
                    ),
                )
            ],
        )
        if self.config.vm_service_account:
            instance.service_accounts = [
                compute_v1.ServiceAccount(
                    email=self.config.vm_service_account,
                    scopes=["https://www.googleapis.com/auth/cloud-platform"],
                )
            ]
        return instance

    @staticmethod
    def _tags_of(instance: compute_v1.Instance) -> dict[str, str]:
        raw = _metadata(instance).get(TAGS_METADATA_KEY)
        if raw:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    return {str(k): str(v) for k, v in parsed.items()}
            except ValueError:
                pass
        return dict(instance.labels)  # not created by this code: labels are the best we have

    def _to_resource(self, zone: str, instance: compute_v1.Instance) -> BackendResource:
        provider_id = f"{zone}/{instance.name}"
        tags = self._tags_of(instance)
        state = _STATUS_MAP.get(instance.status, ProviderState.UNKNOWN)
        preempted = (
            _is_spot(instance)
            and state in (ProviderState.STOPPING, ProviderState.TERMINATED)
            and provider_id not in self._released
        )
        return BackendResource(
            provider_id=provider_id,
            state=state,
            resource_id=tags.get(TAG_RESOURCE),
            offering_id=tags.get(TAG_OFFERING),
            launched_at=_parse_time(instance.creation_timestamp),
            tags=tags,
            interruption_notice=preempted,
            detail="preempted" if preempted else instance.status_message,
        )
