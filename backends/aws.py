"""Amazon EC2 backend: on-demand and spot VMs (x86, Graviton, GPU) through boto3, behind `Backend`.

boto3 is synchronous, so every call runs in a worker thread (`asyncio.to_thread`) on one client
per region, created lazily. botocore's own retries are off; throttling and time-outs are retried
here with tenacity (bounded, exponential back-off with jitter), so there is one retry policy.

Idempotency: `run_instances` carries `ClientToken=request.idempotency_token`, so EC2 returns the
original instance on a retry. The token is also written as a tag (`provisioner-token`), and
`provision` first looks the token up by that tag: moto 5.2 ignores ClientToken (checked: two calls
made two instances) and EC2 forgets tokens after a while, and the look-up covers both.

`provider_id` is "<region>/<instance id>": instance ids are regional and release needs both.

Interruptions: EC2 announces spot interruptions and rebalance recommendations in instance
metadata and EventBridge; from the API the broker sees the spot request's status code
(`marked-for-termination`, `marked-for-stop`, `instance-terminated-by-price`, ...) and scheduled
instance events (`instance-retirement`, `instance-stop`). Both are read with one filtered,
paginated call per region and joined to the listing, never one call per instance.

What moto 5.2 supports (checked against moto_server): run_instances with tags, spot via
InstanceMarketOptions (the instance reports lifecycle "spot" but no spot request is created, so
describe_spot_instance_requests is empty), describe_instances pagination (by reservation, not by
instance), describe_spot_price_history (a flat 0.00001 USD), describe_instance_status (events are
never scheduled, the event.code filter is ignored). Not supported: ClientToken idempotency, the
`client-token` filter (HTTP 500), Service Quotas for EC2 (`list_service_quotas` is not implemented:
HTTP 500), so `quota_vcpus()` returns nothing there. It accepts unknown instance types and AMI ids,
hence the catalog check before any call.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import boto3
import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from backends.aws_config import AwsConfig, AwsRegionConfig, LaunchTemplateRef
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
    MalformedAnswer,
    ProviderState,
    ProvisionRequest,
    QuotaExceeded,
    SpotPrice,
    Throttled,
)
from backends.egress_counters import EgressCounters, lifetime_window
from backends.quota import QuotaScope, quoted_limit
from provisioner.domain import Market, Offering
from provisioner.logs import register_secret

log = structlog.get_logger(__name__)

T = TypeVar("T")

TAG_TOKEN = "provisioner-token"  # the idempotency token, so a retry finds the instance it made

MAX_TERMINATE_BATCH = 1000  # EC2 accepts up to 1,000 ids per TerminateInstances
_CLIENT_TOKEN_MAX = 64  # EC2: ClientToken is at most 64 ASCII characters

# EC2 error codes, grouped by what the broker should do about them.
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
    }
)
# 5xx answers: transient on EC2's side, retried like a time-out.
SERVER_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "500", "503"}
)
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",  # type not offered in this zone: the offering cannot be served, try another
    }
)
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "MaxSpotFleetRequestCountExceeded",
        "ResourceLimitExceeded",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "Blocked",
    }
)
INVALID_CODES = frozenset(
    {
        "InvalidParameterValue",
        "InvalidParameter",
        "InvalidParameterCombination",
        "MissingParameter",
        "IdempotentParameterMismatch",
        "UnknownParameter",
        "ValidationError",
    }
)
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})

_STATE_MAP: Mapping[str, ProviderState] = {
    "pending": ProviderState.PENDING,
    "running": ProviderState.RUNNING,
    "shutting-down": ProviderState.STOPPING,
    "stopping": ProviderState.STOPPING,
    "stopped": ProviderState.STOPPING,  # a stopped VM does no work; the reconciler releases it
    "terminated": ProviderState.TERMINATED,
}

# Spot request status codes that mean the provider takes (or took) the instance back.
SPOT_NOTICE_CODES = (
    "marked-for-termination",
    "marked-for-stop",
    "marked-for-hibernation",
    "instance-terminated-by-price",
    "instance-terminated-no-capacity",
    "instance-terminated-capacity-oversubscribed",
    "instance-terminated-launch-group-constraint",
    "instance-stopped-by-price",
    "instance-stopped-no-capacity",
    "instance-stopped-capacity-oversubscribed",
)
# Scheduled instance events that end the instance's life; reboots are reported in `detail` only.
ENDING_EVENT_CODES = frozenset({"instance-retirement", "instance-stop"})
WATCHED_EVENT_CODES = (*sorted(ENDING_EVENT_CODES), "system-reboot", "instance-reboot", "system-maintenance")

SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
_SPOT_TYPES_PER_CALL = 100
QUOTA_REFRESH_S = 900.0  # account quotas are re-read this often
SPOT_PRICE_REFRESH_S = 60.0  # spot prices are re-read this often
# NetworkOut of a stopped instance is still read this long: its last datapoints arrive late.
EGRESS_TAIL = timedelta(minutes=30)

# Service Quotas codes for running vCPUs (AWS docs, "On-Demand Instance quotas" / "Spot Instance quotas").
QUOTA_CODE_NAMES: Mapping[str, str] = {
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-417A185B": "Running On-Demand P instances",
    "L-34B43A08": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-7212CCBC": "All P Spot Instance Requests",
}
_QUOTA_BY_BUCKET: Mapping[tuple[str, Market], str] = {
    ("standard", Market.ON_DEMAND): "L-1216C47A",
    ("g", Market.ON_DEMAND): "L-DB2E81BA",
    ("p", Market.ON_DEMAND): "L-417A185B",
    ("standard", Market.SPOT): "L-34B43A08",
    ("g", Market.SPOT): "L-3819A6DF",
    ("p", Market.SPOT): "L-7212CCBC",
}
_SEPARATE_FAMILIES = frozenset({"inf", "trn", "dl", "hpc", "mac", "u", "x", "f", "vt", "gr"})

# Anything that looks like an AWS key id, secret key or session token is cut from provider text.
_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{12,}\b")
_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40,}(?![A-Za-z0-9/+=])")
_INSTANCE_ID_RE = re.compile(r"\bi-[0-9a-f]{8,17}\b")


def quota_code_for(instance_type: str, market: Market) -> str | None:
    """The Service Quotas code whose vCPU limit covers this instance type, where the table knows it."""
    match = re.match(r"[a-z]+", instance_type)
    if not match:
        return None
    letters = match.group(0)
    if letters in _SEPARATE_FAMILIES:
        bucket = "g" if letters in {"vt", "gr"} else None
    elif letters == "g":
        bucket = "g"
    elif letters == "p":
        bucket = "p"
    elif letters[0] in "acdhimrtz":
        bucket = "standard"
    else:
        bucket = None
    return _QUOTA_BY_BUCKET.get((bucket, market)) if bucket else None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials (known values and anything key-shaped) from text bound for errors or logs."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _KEY_ID_RE.sub("<redacted-key-id>", text)
    return _SECRET_RE.sub("<redacted>", text)


def split_provider_id(provider_id: str) -> tuple[str | None, str]:
    """ "<region>/<instance id>" → (region, id); a bare instance id → (None, id)."""
    region, sep, instance_id = provider_id.rpartition("/")
    if not sep:
        return None, provider_id
    return region, instance_id


def map_client_error(
    backend: str,
    operation: str,
    exc: Exception,
    *,
    offering_id: str | None = None,
    secrets: Iterable[str] = (),
) -> BackendError:
    """A botocore failure as the typed backend error the engine acts on; the text is redacted."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = redact(str(error.get("Message", "")), secrets)[:400]
        text = f"{operation}: {code}: {message}" if message else f"{operation}: {code}"
        cls: type[BackendError]
        if code in AUTH_CODES:
            cls = AuthFailed
        elif code in THROTTLE_CODES:
            cls = Throttled
        elif code in SERVER_CODES:
            cls = BackendTimeout
        elif code in CAPACITY_CODES:
            cls = CapacityUnavailable
        elif code in QUOTA_CODES:
            cls = QuotaExceeded
        elif code in INVALID_CODES or code.startswith("Invalid"):
            cls = InvalidRequest
        else:
            cls = BackendError
        return cls(backend, text, offering_id=offering_id)
    if isinstance(
        exc, ReadTimeoutError | ConnectTimeoutError | EndpointConnectionError | ConnectionClosedError
    ):
        return BackendTimeout(backend, f"{operation}: {type(exc).__name__}", offering_id=offering_id)
    if isinstance(exc, ResponseParserError):
        return MalformedAnswer(backend, f"{operation}: unreadable answer", offering_id=offering_id)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return AuthFailed(backend, f"{operation}: {type(exc).__name__}", offering_id=offering_id)
    return BackendError(backend, f"{operation}: {type(exc).__name__}", offering_id=offering_id)


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


_STOPPED_AT = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) GMT\)")


def stop_time(instance: Mapping[str, Any]) -> datetime | None:
    """When EC2 stopped or terminated the instance, from `StateTransitionReason` ("User initiated
    (2026-11-30 08:00:00 GMT)"); None while it runs or when EC2 gives no time (spot reclaims)."""
    if instance.get("State", {}).get("Name") not in ("shutting-down", "terminated", "stopping", "stopped"):
        return None
    found = _STOPPED_AT.search(str(instance.get("StateTransitionReason") or ""))
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def _tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in instance.get("Tags", [])}


class AwsBackend:
    """EC2 in the regions of `config`, serving the catalog's AWS offerings for those regions."""

    def __init__(self, config: AwsConfig, catalog: Sequence[Offering] = ()) -> None:
        self.config = config
        self.name = config.name
        self._catalog = [
            o for o in catalog if o.provider == "aws" and o.backend == config.name and config.region(o.region)
        ]
        self._known_types: dict[str, set[str]] = {}
        for o in self._catalog:
            self._known_types.setdefault(o.region, set()).add(o.instance_type)
        self._lock = threading.Lock()
        self._session: boto3.Session | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._secrets: tuple[str, ...] = ()
        register_secret(config.user_data)  # pilot tokens live in user data
        self._quotas: dict[str, int] = {}
        self._spot_cache: dict[str, dict[tuple[str, str], Decimal]] = {}
        self._spot_read_at: float | None = None
        self._quotas_read_at: float | None = None
        self._egress = EgressCounters(config.egress_refresh_s)  # per region: NetworkOut since launch
        self.api_calls: Counter[str] = Counter()  # API requests sent, by operation (each retry counts)

    # ---- clients and calls -------------------------------------------------------------------

    def _new_session(self) -> boto3.Session:
        core = botocore.session.Session()
        if self.config.credentials_file is not None:
            core.set_config_variable("credentials_file", str(self.config.credentials_file))
        session = boto3.Session(botocore_session=core, profile_name=self.config.profile)
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            # Kept only to scrub provider text; never logged or stored.
            self._secrets = tuple(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s)
            for secret in self._secrets:
                register_secret(secret)  # botocore logs the key id at DEBUG; no log line may carry it
        return session

    def client(self, region: str, service: str = "ec2") -> Any:
        """The boto3 client for one region (created on first use; thread-safe)."""
        key = (service, region)
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                return found
            if self._session is None:
                self._session = self._new_session()
            cfg = Config(
                region_name=region,
                connect_timeout=self.config.connect_timeout_s,
                read_timeout=self.config.read_timeout_s,
                retries={"total_max_attempts": 1, "mode": "standard"},
                user_agent_extra="provisioner-broker",
                max_pool_connections=20,
            )
            # `service` is "ec2" or "service-quotas"; the stubs want a literal per service, hence Any.
            session: Any = self._session
            made = session.client(service, endpoint_url=self.config.endpoint_url, config=cfg)
            made.meta.events.register("before-call", self._count_call)
            self._clients[key] = made
            return made

    def _count_call(self, **kwargs: Any) -> None:
        model = kwargs.get("model")
        self.api_calls[getattr(model, "name", "unknown")] += 1

    async def _call(self, operation: str, fn: Callable[[], T], *, offering_id: str | None = None) -> T:
        """Run `fn` in a thread; map its failure; retry throttling and time-outs with back-off."""

        def attempt() -> T:
            try:
                return fn()
            except (ClientError, BotoCoreError, ResponseParserError) as exc:
                mapped = map_client_error(
                    self.name, operation, exc, offering_id=offering_id, secrets=self._secrets
                )
                log.warning(
                    "aws.api_error", operation=operation, error_type=type(mapped).__name__, error=str(mapped)
                )
                # `from None`: botocore's own text may quote credentials (signature mismatch).
                raise mapped from None

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, Throttled | BackendTimeout)),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=self.config.backoff_initial_s,
                jitter=self.config.backoff_initial_s,
                max=self.config.backoff_max_s,
            ),
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                return await asyncio.to_thread(attempt)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _paginate(self, region: str, operation: str, key: str, **params: Any) -> Callable[[], list[Any]]:
        """A thread body collecting `key` from every page of `operation`."""

        def run() -> list[Any]:
            paginator = self.client(region).get_paginator(operation)
            items: list[Any] = []
            for page in paginator.paginate(**params):
                items.extend(page.get(key, []))
            return items

        return run

    # ---- provision ---------------------------------------------------------------------------

    def _region_config(self, offering: Offering) -> AwsRegionConfig:
        region = self.config.region(offering.region)
        if region is None:
            raise InvalidRequest(
                self.name,
                f"offering {offering.id}: region {offering.region} is not configured",
                offering_id=offering.id,
            )
        return region

    def _validate(self, request: ProvisionRequest) -> AwsRegionConfig:
        offering = request.offering
        oid = offering.id
        if offering.provider != "aws" or offering.backend != self.name:
            raise InvalidRequest(
                self.name, f"offering {oid}: belongs to backend {offering.backend!r}", offering_id=oid
            )
        if offering.market not in (Market.ON_DEMAND, Market.SPOT):
            raise InvalidRequest(
                self.name, f"offering {oid}: market {offering.market} is not EC2", offering_id=oid
            )
        if request.broker_id != self.config.broker_id:
            raise InvalidRequest(
                self.name,
                f"request {request.resource_id}: broker id {request.broker_id!r}"
                " differs from the configured one",
                offering_id=oid,
            )
        token = request.idempotency_token
        if not token or len(token) > _CLIENT_TOKEN_MAX or not token.isascii():
            raise InvalidRequest(
                self.name,
                f"request {request.resource_id}: idempotency token must be 1-64 ASCII chars",
                offering_id=oid,
            )
        region = self._region_config(offering)
        if offering.instance_type not in self._known_types.get(offering.region, set()):
            # moto (and a typo) would happily launch an unknown type: the catalog is the authority.
            raise InvalidRequest(
                self.name,
                f"offering {oid}: instance type {offering.instance_type}"
                f" is not in the catalog for {offering.region}",
                offering_id=oid,
            )
        return region

    def _launch_source(self, region: AwsRegionConfig, offering: Offering) -> dict[str, Any]:
        key = f"gpu_{offering.arch.value}" if offering.gpu_count > 0 else offering.arch.value
        image: str | None = getattr(region.images, key)
        template: LaunchTemplateRef | None = getattr(region.launch_templates, key)
        params: dict[str, Any] = {}
        if template is not None:
            ref: dict[str, str] = {"Version": template.version}
            if template.id:
                ref["LaunchTemplateId"] = template.id
            else:
                ref["LaunchTemplateName"] = str(template.name)
            params["LaunchTemplate"] = ref
        if image is not None:
            params["ImageId"] = image
        if not params:
            raise InvalidRequest(
                self.name,
                f"offering {offering.id}: no image for {key}: set regions[{region.region}].images.{key}"
                f" or launch_templates.{key}",
                offering_id=offering.id,
            )
        return params

    def run_instances_params(self, request: ProvisionRequest) -> dict[str, Any]:
        """The RunInstances parameters for one request (validated; no call made)."""
        region = self._validate(request)
        offering = request.offering
        tags = request.all_tags()
        tags[TAG_TOKEN] = request.idempotency_token
        tags.setdefault("Name", f"{request.broker_id}/{request.resource_id}")
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params: dict[str, Any] = {
            **self._launch_source(region, offering),
            "InstanceType": offering.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": request.idempotency_token,
            # A pilot that shuts itself down must not linger as a stopped VM with paid-for disks.
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if offering.zone:
            subnet = region.subnet_ids.get(offering.zone)
            if subnet:
                params["SubnetId"] = subnet
            else:
                params["Placement"] = {"AvailabilityZone": offering.zone}
        elif len(region.subnet_ids) == 1:
            params["SubnetId"] = next(iter(region.subnet_ids.values()))
        if region.security_group_ids:
            params["SecurityGroupIds"] = list(region.security_group_ids)
        if self.config.key_name:
            params["KeyName"] = self.config.key_name
        if self.config.user_data:
            params["UserData"] = self.config.user_data
        if offering.market is Market.SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                # No MaxPrice: EC2 caps at the on-demand price, which is what AWS recommends.
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    async def provision(self, request: ProvisionRequest) -> BackendResource:
        """Launch one instance for the request; a repeat with the same token returns the same one."""
        params = self.run_instances_params(request)
        offering = request.offering
        region = offering.region
        existing = await self._find_by_token(region, request.idempotency_token, offering.id)
        if existing is not None:
            log.info("aws.provision.found", resource=request.resource_id, provider_id=existing.provider_id)
            return existing
        # Clients are made inside the worker thread: the first one loads models and credentials.
        try:
            response = await self._call(
                "RunInstances", lambda: self.client(region).run_instances(**params), offering_id=offering.id
            )
        except QuotaExceeded as exc:
            raise QuotaExceeded(
                self.name,
                str(exc).removeprefix(f"{self.name}: "),
                offering_id=offering.id,
                scope=self.quota_scope(str(exc), offering),
            ) from None
        instances = response.get("Instances", []) if isinstance(response, Mapping) else []
        if not instances:
            # The call may have made an instance all the same: the intent is kept and the retry
            # (same token) finds it by its tag.
            raise MalformedAnswer(
                self.name, f"RunInstances: no instance returned for {offering.id}", offering_id=offering.id
            )
        resource = self._read(region, instances[0], "RunInstances", offering.id)
        log.info(
            "aws.provision",
            resource=request.resource_id,
            provider_id=resource.provider_id,
            offering=offering.id,
            market=offering.market.value,
        )
        return resource

    async def _find_by_token(self, region: str, token: str, offering_id: str) -> BackendResource | None:
        filters = [
            {"Name": f"tag:{TAG_BROKER}", "Values": [self.config.broker_id]},
            {"Name": f"tag:{TAG_TOKEN}", "Values": [token]},
        ]
        response = await self._call(
            "DescribeInstances",
            lambda: self.client(region).describe_instances(Filters=filters),
            offering_id=offering_id,
        )
        found = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        if not found:
            return None
        # A live one wins over an old terminated one with the same token.
        found.sort(key=lambda i: i.get("State", {}).get("Name") == "terminated")
        return self._read(region, found[0], "DescribeInstances", offering_id)

    def _read(
        self, region: str, instance: Any, operation: str, offering_id: str | None = None
    ) -> BackendResource:
        """One instance of an answer, or MalformedAnswer when the answer lacks what every instance has."""
        try:
            return self._to_resource(region, instance)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedAnswer(
                self.name, f"{operation}: unreadable instance ({type(exc).__name__})", offering_id=offering_id
            ) from None

    def _to_resource(self, region: str, instance: Mapping[str, Any]) -> BackendResource:
        tags = _tags_of(instance)
        state_name = str(instance.get("State", {}).get("Name", ""))
        detail = f"ec2:{state_name}"
        if instance.get("InstanceLifecycle") == "spot":
            detail += " spot"
        return BackendResource(
            provider_id=f"{region}/{instance['InstanceId']}",
            state=_STATE_MAP.get(state_name, ProviderState.UNKNOWN),
            resource_id=tags.get(TAG_RESOURCE),
            offering_id=tags.get(TAG_OFFERING),
            launched_at=_utc(instance.get("LaunchTime")),
            tags=tags,
            detail=detail,
            zone=str(instance.get("Placement", {}).get("AvailabilityZone") or "") or None,
            stopped_at=stop_time(instance),
        )

    # ---- list --------------------------------------------------------------------------------

    async def list_resources(self) -> list[BackendResource]:
        """Every instance carrying our broker tag, in every configured region, with interruption notices."""
        per_region = await asyncio.gather(*(self._list_region(r.region) for r in self.config.regions))
        return [res for region in per_region for res in region]

    async def _list_region(self, region: str) -> list[BackendResource]:
        filters = [{"Name": f"tag:{TAG_BROKER}", "Values": [self.config.broker_id]}]
        instances = await self._call(
            "DescribeInstances",
            self._paginate(
                region,
                "describe_instances",
                "Reservations",
                Filters=filters,
                PaginationConfig={"PageSize": self.config.page_size},
            ),
        )
        flat = [i for r in instances for i in r.get("Instances", [])]
        notices: dict[str, str] = {}
        live_spot = [
            i["InstanceId"]
            for i in flat
            if i.get("InstanceLifecycle") == "spot" and i.get("State", {}).get("Name") != "terminated"
        ]
        if live_spot:
            notices.update(await self._spot_notices(region))
        if self.config.watch_scheduled_events and any(
            i.get("State", {}).get("Name") in ("pending", "running") for i in flat
        ):
            events = await self._scheduled_events(region)
            for iid, text in events.items():
                notices[iid] = f"{notices[iid]}; {text}" if iid in notices else text
        egress: dict[str, int] = {}
        if self.config.egress_metrics:
            egress = await self._egress_counters(region, flat)
        cpu: dict[str, bool] = {}
        if self.config.cpu_busy_percent is not None:
            running = [str(i["InstanceId"]) for i in flat if i.get("State", {}).get("Name") == "running"]
            if running:
                cpu = await self._cpu_busy(region, running)
        out: list[BackendResource] = []
        for instance in flat:
            # One unreadable instance fails the whole listing: a partial listing would make the
            # reconciler believe the missing units gone.
            resource = self._read(region, instance, "DescribeInstances")
            busy = cpu.get(str(instance["InstanceId"]))
            if busy is not None:
                resource = replace(resource, busy=busy)
            sent = egress.get(str(instance["InstanceId"]))
            if sent is not None:
                resource = replace(resource, egress_bytes=sent)
            note = notices.get(instance["InstanceId"])
            if note is not None:
                ending = note.startswith("spot:") or any(c in note for c in ENDING_EVENT_CODES)
                resource = replace(resource, interruption_notice=ending, detail=f"{resource.detail} {note}")
            out.append(resource)
        return out

    async def _cpu_busy(self, region: str, instance_ids: Sequence[str]) -> dict[str, bool]:
        """instance id → busy, from CloudWatch CPUUtilization (provider metrics as the busy signal).

        An instance with no datapoint in the window is left out: no signal, never taken for idle.
        A CloudWatch failure gives no signal for the region this cycle (logged), never an error.
        """
        threshold = float(self.config.cpu_busy_percent or 0)
        now = datetime.now(UTC)
        start = now - timedelta(minutes=self.config.cpu_window_minutes)
        end = now + timedelta(minutes=1)  # past now: a datapoint of this very second is counted too
        values = await self._ec2_metric(
            region,
            "CPUUtilization",
            "Average",
            300,
            instance_ids,
            start,
            end,
            failure="aws.cpu_metrics_unavailable",
        )
        return {iid: max(v) >= threshold for iid, v in (values or {}).items() if v}

    async def _ec2_metric(
        self,
        region: str,
        metric: str,
        stat: str,
        period: int,
        instance_ids: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        failure: str,
    ) -> dict[str, list[float]] | None:
        """instance id → the values (one per period with data) of an AWS/EC2 metric per InstanceId in
        [start, end), by GetMetricData: one call per 500 instances (its limit), every page followed.

        None when CloudWatch fails (logged as `failure`): the caller has no signal this cycle, never an
        error; only rejected credentials are raised.
        """
        out: dict[str, list[float]] = {}
        for first in range(0, len(instance_ids), 500):  # GetMetricData: at most 500 queries per call
            chunk = list(instance_ids[first : first + 500])
            queries = [
                {
                    "Id": f"c{n}",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/EC2",
                            "MetricName": metric,
                            "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                        },
                        "Period": period,
                        "Stat": stat,
                    },
                    "ReturnData": True,
                }
                for n, iid in enumerate(chunk)
            ]

            def fetch(q: list[dict[str, Any]] = queries) -> list[Any]:
                cw = self.client(region, "cloudwatch")
                results: list[Any] = []
                for page in cw.get_paginator("get_metric_data").paginate(
                    MetricDataQueries=q, StartTime=start, EndTime=end
                ):
                    results.extend(page.get("MetricDataResults", []))
                return results

            try:
                results = await self._call("GetMetricData", fetch)
            except AuthFailed:
                raise
            except BackendError as exc:
                log.warning(failure, region=region, error=str(exc))
                return None
            for r in results:
                rid = str(r.get("Id", ""))
                if rid.startswith("c") and rid[1:].isdigit() and int(rid[1:]) < len(chunk):
                    # A query's values may come over several pages: all of them count.
                    out.setdefault(chunk[int(rid[1:])], []).extend(float(v) for v in r.get("Values", []))
        return out

    def _egress_wanted(self, instance: Mapping[str, Any], now: datetime) -> bool:
        """Whether to read an instance's NetworkOut: it has run, and it runs or stopped lately (its last
        datapoints reach CloudWatch minutes after it stops)."""
        state = str(instance.get("State", {}).get("Name", ""))
        if state == "pending" or _utc(instance.get("LaunchTime")) is None:
            return False
        stopped = stop_time(instance)
        return stopped is None or now - stopped <= EGRESS_TAIL

    async def _egress_counters(self, region: str, instances: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """instance id → bytes it has sent out since launch: CloudWatch NetworkOut (Sum) over its life,
        the counter `BackendResource.egress_bytes` wants (`backends.egress_counters`: read at most every
        `egress_refresh_s` per region, never lower, the last values standing when CloudWatch fails).

        Summed from launch each time rather than accumulated here, so a restarted broker reads the
        same counter. Instances with no datapoint yet are left out: no measurement, not a made-up 0.
        """
        if not self._egress.due(region):
            return self._egress.last(region)
        now = datetime.now(UTC)
        launched = {
            str(i["InstanceId"]): t
            for i in instances
            if self._egress_wanted(i, now) and (t := _utc(i.get("LaunchTime"))) is not None
        }
        if not launched:
            return self._egress.record(region, {}, ())
        window = lifetime_window(min(launched.values()), now)
        try:
            values = await self._ec2_metric(
                region,
                "NetworkOut",
                "Sum",
                window.period_s,
                sorted(launched),
                window.start,
                window.end,
                failure="aws.egress_metrics_unavailable",
            )
        except AuthFailed as exc:
            # On by default: a role without cloudwatch:GetMetricData must not stop the listing (the
            # EC2 calls before this one prove the credentials themselves work).
            log.warning("aws.egress_metrics_denied", region=region, error=str(exc))
            return self._egress.last(region)
        if values is None:
            return self._egress.last(region)
        return self._egress.record(region, {i: int(sum(v)) for i, v in values.items() if v}, launched)

    async def _spot_notices(self, region: str) -> dict[str, str]:
        """instance id → "spot:<status code>" for spot requests the provider is taking back."""
        requests = await self._call(
            "DescribeSpotInstanceRequests",
            self._paginate(
                region,
                "describe_spot_instance_requests",
                "SpotInstanceRequests",
                Filters=[{"Name": "status-code", "Values": list(SPOT_NOTICE_CODES)}],
                PaginationConfig={"PageSize": self.config.page_size},
            ),
        )
        out: dict[str, str] = {}
        for req in requests:
            code = str(req.get("Status", {}).get("Code", ""))
            iid = req.get("InstanceId")
            if iid and code in SPOT_NOTICE_CODES:
                out[str(iid)] = f"spot:{code}"
        return out

    async def _scheduled_events(self, region: str) -> dict[str, str]:
        """instance id → "event:<code>,..." for scheduled events not yet completed or cancelled."""
        statuses = await self._call(
            "DescribeInstanceStatus",
            self._paginate(
                region,
                "describe_instance_status",
                "InstanceStatuses",
                Filters=[{"Name": "event.code", "Values": list(WATCHED_EVENT_CODES)}],
                PaginationConfig={"PageSize": self.config.page_size},
            ),
        )
        out: dict[str, str] = {}
        for status in statuses:
            codes = [
                str(e.get("Code"))
                for e in status.get("Events", [])
                if not str(e.get("Description", "")).startswith(("[Completed]", "[Canceled]"))
            ]
            if codes:
                out[str(status["InstanceId"])] = "event:" + ",".join(sorted(set(codes)))
        return out

    # ---- release -----------------------------------------------------------------------------

    async def release(self, provider_id: str) -> None:
        """Terminate one instance; unknown or already terminated ids are not an error."""
        await self.release_many([provider_id])

    async def release_many(self, provider_ids: Sequence[str]) -> None:
        """Terminate many instances, up to 1,000 per call, per region; unknown ids are skipped."""
        by_region: dict[str, list[str]] = {}
        for pid in provider_ids:
            region, iid = split_provider_id(pid)
            if region is not None and self.config.region(region) is None:
                raise InvalidRequest(self.name, f"provider_id {pid!r}: region {region} is not configured")
            # A bare id may live in any configured region; NotFound elsewhere is harmless.
            for name in [region] if region else [r.region for r in self.config.regions]:
                by_region.setdefault(name, []).append(iid)
        for region, ids in by_region.items():
            unique = list(dict.fromkeys(ids))
            for start in range(0, len(unique), MAX_TERMINATE_BATCH):
                await self._terminate(region, unique[start : start + MAX_TERMINATE_BATCH])
        log.info("aws.release", count=len(provider_ids))

    async def _terminate(self, region: str, ids: list[str]) -> None:
        remaining = list(ids)
        while remaining:
            batch = list(remaining)
            try:
                await self._call("TerminateInstances", functools.partial(self._terminate_call, region, batch))
                return
            except InvalidRequest as exc:
                if "InvalidInstanceID.NotFound" not in str(exc):
                    raise
                # EC2 rejects the whole batch naming the unknown ids: drop those and go again.
                missing = set(_INSTANCE_ID_RE.findall(str(exc))) & set(batch)
                if not missing:
                    missing = await self._terminate_one_by_one(region, batch)
                    return
                remaining = [i for i in batch if i not in missing]

    def _terminate_call(self, region: str, ids: list[str]) -> Any:
        return self.client(region).terminate_instances(InstanceIds=ids)

    async def _terminate_one_by_one(self, region: str, ids: list[str]) -> set[str]:
        missing: set[str] = set()
        for iid in ids:
            try:
                await self._call("TerminateInstances", functools.partial(self._terminate_call, region, [iid]))
            except InvalidRequest as exc:
                if "InvalidInstanceID.NotFound" not in str(exc):
                    raise
                missing.add(iid)
        return missing

    # ---- offerings and quotas ----------------------------------------------------------------

    async def offerings(self) -> list[Offering]:
        """The catalog's offerings for our regions, spot prices replaced by the current spot price.

        Offerings the account's vCPU quotas rule out (a quota smaller than one instance, e.g. a spot
        quota of 0) are left out: no plan should count on them.
        """
        by_region = await self._spot_prices_cached()
        # Region-wide offerings take the dearest zone's price: one pass, not one scan per offering.
        dearest: dict[tuple[str, str], Decimal] = {}
        for region, zonal in by_region.items():
            for (itype, _zone), p in zonal.items():
                key = (region, itype)
                if key not in dearest or p > dearest[key]:
                    dearest[key] = p
        quotas = await self._account_quotas()
        out: list[Offering] = []
        for o in self._catalog:
            code = quota_code_for(o.instance_type, o.market)
            allowed = quotas.get(f"{o.region}:{code}") if code else None
            if allowed is not None and allowed < o.cores:
                continue
            if o.market is Market.SPOT:
                price = (
                    by_region.get(o.region, {}).get((o.instance_type, o.zone))
                    if o.zone
                    else dearest.get((o.region, o.instance_type))
                )
                if price is not None:
                    o = replace(o, price_per_hour=price)
            out.append(o)
        return out

    async def _spot_prices_cached(self) -> dict[str, dict[tuple[str, str], Decimal]]:
        """Spot prices per region, read at most once per SPOT_PRICE_REFRESH_S (EC2 changes them every few
        minutes at most; reading hundreds of types every cycle only costs API calls)."""
        now = time.monotonic()
        if self._spot_read_at is None or now - self._spot_read_at >= SPOT_PRICE_REFRESH_S:
            regions = sorted({o.region for o in self._catalog})
            prices = await asyncio.gather(*(self._spot_prices(r) for r in regions))
            self._spot_cache = dict(zip(regions, prices, strict=True))
            self._spot_read_at = now
        return self._spot_cache

    async def _spot_prices(self, region: str) -> dict[tuple[str, str], Decimal]:
        """(instance type, zone) → current spot price, from one paginated history query per 100 types."""
        types = sorted(
            {o.instance_type for o in self._catalog if o.region == region and o.market is Market.SPOT}
        )
        latest: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
        now = datetime.now(UTC)
        for start in range(0, len(types), _SPOT_TYPES_PER_CALL):
            chunk = types[start : start + _SPOT_TYPES_PER_CALL]
            try:
                history = await self._call(
                    "DescribeSpotPriceHistory",
                    self._paginate(
                        region,
                        "describe_spot_price_history",
                        "SpotPriceHistory",
                        InstanceTypes=chunk,
                        ProductDescriptions=list(SPOT_PRODUCTS),
                        StartTime=now,
                        PaginationConfig={"PageSize": self.config.page_size},
                    ),
                )
            except AuthFailed:
                raise
            except BackendError as exc:
                log.warning("aws.spot_prices_unavailable", region=region, error=str(exc))
                continue
            for row in history:
                try:
                    price = Decimal(str(row["SpotPrice"]))
                except (KeyError, InvalidOperation):
                    continue
                when = _utc(row.get("Timestamp")) or now
                key = (str(row.get("InstanceType")), str(row.get("AvailabilityZone")))
                if key not in latest or when > latest[key][0]:
                    latest[key] = (when, price)
        return {k: v[1] for k, v in latest.items()}

    async def spot_price_history(
        self, region: str, instance_types: Sequence[str], start: datetime, end: datetime
    ) -> list[SpotPrice]:
        """Every spot price change of these types in [start, end), with the price in force at `start`
        (EC2 returns the last change before the window too): what billing needs to charge each
        interval at the price in force in the zone used."""
        out: list[SpotPrice] = []
        types = sorted(set(instance_types))
        for first in range(0, len(types), _SPOT_TYPES_PER_CALL):
            history = await self._call(
                "DescribeSpotPriceHistory",
                self._paginate(
                    region,
                    "describe_spot_price_history",
                    "SpotPriceHistory",
                    InstanceTypes=types[first : first + _SPOT_TYPES_PER_CALL],
                    ProductDescriptions=list(SPOT_PRODUCTS),
                    StartTime=start,
                    EndTime=end,
                    PaginationConfig={"PageSize": self.config.page_size},
                ),
            )
            for row in history:
                when = _utc(row.get("Timestamp"))
                try:
                    price = Decimal(str(row["SpotPrice"]))
                except (KeyError, InvalidOperation):
                    continue
                if when is None or not row.get("AvailabilityZone") or not row.get("InstanceType"):
                    continue
                out.append(SpotPrice(str(row["InstanceType"]), str(row["AvailabilityZone"]), when, price))
        return sorted(out, key=lambda p: (p.instance_type, p.zone, p.at))

    def quota_scope(self, error: str, offering: Offering) -> QuotaScope:
        """What an EC2 quota error covers, from its code and message and the vCPU quota buckets.

        `VcpuLimitExceeded`/`InstanceLimitExceeded`: the vCPU bucket of the instance type (Standard,
        G/VT, P...) in this market and region; `MaxSpotInstanceCountExceeded` and
        `MaxSpotFleetRequestCountExceeded`: every spot request in the region.
        """
        code = next((c for c in sorted(QUOTA_CODES) if c in error), "unknown")
        limit = quoted_limit(error.split(code, 1)[-1])
        region, market = offering.region, offering.market
        if code in ("MaxSpotInstanceCountExceeded", "MaxSpotFleetRequestCountExceeded"):
            return QuotaScope(self.name, code, region=region, market=Market.SPOT, limit=limit)
        if code in ("VcpuLimitExceeded", "InstanceLimitExceeded"):
            bucket = quota_code_for(offering.instance_type, market)
            if bucket is not None:
                types = frozenset(
                    o.instance_type
                    for o in self._catalog
                    if o.region == region and quota_code_for(o.instance_type, market) == bucket
                ) | {offering.instance_type}
                return QuotaScope(
                    self.name, bucket, region=region, market=market, instance_types=types, limit=limit
                )
        return QuotaScope(
            self.name, code, region=region, market=market, families=frozenset({offering.family}), limit=limit
        )

    async def _account_quotas(self) -> dict[str, int]:
        """`quota_vcpus`, read at most once per `quota_refresh_s` (quotas change rarely; the API is slow)."""
        now = time.monotonic()
        if self._quotas_read_at is None or now - self._quotas_read_at >= QUOTA_REFRESH_S:
            self._quotas = await self.quota_vcpus()
            self._quotas_read_at = now
        return self._quotas

    async def quota_vcpus(self) -> dict[str, int]:
        """vCPUs allowed by Service Quotas, keyed "<region>:<quota code>"; regions that cannot tell: left out.

        See `QUOTA_CODE_NAMES` for the codes and `quota_code_for` for which one covers an instance type.
        """
        out: dict[str, int] = {}
        for region in (r.region for r in self.config.regions):
            try:
                quotas = await self._call(
                    "ListServiceQuotas",
                    self._paginate_quotas(region),
                )
            except AuthFailed:
                raise
            except BackendError as exc:
                # moto 5.2 does not implement EC2 quotas; real accounts may lack servicequotas:List*.
                log.warning("aws.quotas_unavailable", region=region, error=str(exc))
                continue
            for q in quotas:
                code = str(q.get("QuotaCode", ""))
                if code in QUOTA_CODE_NAMES and q.get("Value") is not None:
                    out[f"{region}:{code}"] = int(q["Value"])
        return out

    def _paginate_quotas(self, region: str) -> Callable[[], list[Any]]:
        def run() -> list[Any]:
            sq = self.client(region, "service-quotas")
            items: list[Any] = []
            for page in sq.get_paginator("list_service_quotas").paginate(ServiceCode="ec2"):
                items.extend(page.get("Quotas", []))
            return items

        return run

    async def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for c in clients:
            c.close()
