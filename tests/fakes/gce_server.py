"""A fake Compute Engine REST API (instances + zone operations) for google-cloud-compute in tests.

It implements exactly what `backends.gce` uses, with the real API's JSON shapes: Operation objects
that stay PENDING for `operation_polls` GETs before DONE, `requestId` dedupe (a repeated requestId
returns the original operation), the label filter `labels.KEY = "VALUE"`, aggregated list with
`items` keyed by "zones/<zone>" and `nextPageToken` pagination, GCE's validation of names, labels,
spot and GPU scheduling, and injected faults (HTTP errors before a call, or a DONE operation that
carries an error such as ZONE_RESOURCE_POOL_EXHAUSTED).

It also answers Cloud Monitoring's `projects.timeSeries.list` for the one metric the backend reads
(`compute.googleapis.com/instance/network/sent_bytes_count`): the filter (metric, resource type, a
`metadata.user_labels` match), the interval, ALIGN_SUM per period, REDUCE_SUM grouped by
`resource.label.instance_id`, and pagination. Tests add the points with `send_bytes`.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.auth import jwt as google_jwt

from tests.fakes.json_http_server import JsonHttpServer, Reply, Request

_PREFIX = r"/compute/v1/projects/(?P<project>[^/]+)"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_FILTER_RE = re.compile(r'^\s*labels\.([a-z0-9_-]+)\s*=\s*"?([^"]*)"?\s*$')
SENT_BYTES = "compute.googleapis.com/instance/network/sent_bytes_count"
_TS_CLAUSE_RE = re.compile(
    r'^\s*(metric\.type|resource\.type|metadata\.user_labels\."([^"]+)")\s*=\s*"([^"]*)"\s*$'
)
_ARM_FAMILIES = {"t2a", "c4a", "n4a"}
_BUILTIN_GPU_FAMILIES = {"a2", "a3", "a4", "g2", "g4"}

_HTTP_REASON = {400: "invalid", 401: "required", 403: "forbidden", 404: "notFound", 409: "alreadyExists"}


def error_body(code: int, message: str, reason: str, domain: str = "global") -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }


@dataclass
class HttpFault:
    route: str  # route name: insert, get, delete, list, aggregated_list, operation_get
    status: int
    reason: str
    message: str
    times: int = 1


@dataclass
class OperationFault:
    code: str  # e.g. ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED
    message: str
    http_status: int = 503
    times: int = 1


@dataclass
class _Operation:
    body: dict[str, Any]
    polls_left: int
    on_done: Any  # callable run once when the operation turns DONE
    done: bool = False


@dataclass
class FakeGce:
    """State and faults of the fake; `server.calls` counts requests per route."""

    operation_polls: int = 0  # GETs of an operation before it reports DONE
    required_token: str | None = None  # if set, "Authorization: Bearer <token>" or 401
    oauth_token: str | None = None  # if set, POST /token (a service account's token_uri) grants it
    # Service accounts by e-mail → public key PEM: their self-signed JWTs are accepted as bearer tokens.
    service_account_keys: dict[str, str] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)  # every Authorization header seen
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (zone, name) → body
    request_ids: dict[str, str] = field(default_factory=dict)  # requestId → operation name
    operations: dict[str, _Operation] = field(default_factory=dict)
    http_faults: list[HttpFault] = field(default_factory=list)
    operation_faults: list[OperationFault] = field(default_factory=list)
    # Cloud Monitoring points of sent_bytes_count: (instance id, labels, end time, bytes, loadbalanced)
    sent_points: list[tuple[str, dict[str, str], datetime, int, bool]] = field(default_factory=list)
    server: JsonHttpServer = field(default_factory=JsonHttpServer)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(4_000_000_000_000_000_001))

    def __post_init__(self) -> None:
        s = self.server
        s.route("POST", _PREFIX + r"/zones/(?P<zone>[^/]+)/instances", "insert", self._insert)
        s.route("GET", _PREFIX + r"/zones/(?P<zone>[^/]+)/instances", "list", self._list)
        s.route("GET", _PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "get", self._get)
        s.route(
            "DELETE", _PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "delete", self._delete
        )
        s.route("GET", _PREFIX + r"/aggregated/instances", "aggregated_list", self._aggregated)
        s.route(
            "GET", _PREFIX + r"/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+)", "operation_get", self._op_get
        )
        s.route("POST", r"/token", "token", self._token)
        s.route("GET", r"/v3/projects/(?P<project>[^/]+)/timeSeries", "time_series_list", self._time_series)

    # -- test controls -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeGce:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def fail(self, route: str, status: int, reason: str, message: str = "", times: int = 1) -> None:
        with self.server.lock:
            self.http_faults.append(HttpFault(route, status, reason, message or reason, times))

    def fail_operation(self, code: str, message: str = "", http_status: int = 503, times: int = 1) -> None:
        with self.server.lock:
            self.operation_faults.append(OperationFault(code, message or code, http_status, times))

    def set_status(self, zone: str, name: str, status: str) -> None:
        with self.server.lock:
            self.instances[(zone, name)]["status"] = status

    def add_foreign_instance(self, zone: str, name: str, labels: dict[str, str]) -> None:
        """An instance created outside the broker (no metadata tags)."""
        with self.server.lock:
            self.instances[(zone, name)] = self._instance_body(
                "p",
                zone,
                {"name": name, "labels": labels, "machineType": f"zones/{zone}/machineTypes/e2-small"},
            )
            self.instances[(zone, name)]["status"] = "RUNNING"

    def send_bytes(
        self, zone: str, name: str, count: int, at: datetime, *, loadbalanced: bool = False
    ) -> None:
        """A sent_bytes_count point (the bytes of one 60 s sample ending at `at`) for an instance."""
        with self.server.lock:
            instance = self.instances[(zone, name)]
            labels = dict(instance.get("labels") or {})
            self.sent_points.append((str(instance["id"]), labels, at, count, loadbalanced))

    # -- helpers -------------------------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def _fault_for(self, route: str) -> Reply | None:
        for fault in self.http_faults:
            if fault.route == route and fault.times > 0:
                fault.times -= 1
                return fault.status, error_body(fault.status, fault.message, fault.reason)
        return None

    def _authorized(self, header: str | None) -> bool:
        if header is None or not header.startswith("Bearer "):
            return False
        token = header.removeprefix("Bearer ")
        if token == self.required_token:
            return True
        try:
            claims = google_jwt.decode(token, certs=self.service_account_keys, verify=False)
            email = claims.get("iss", "")
            key = self.service_account_keys.get(email)
            return key is not None and bool(google_jwt.decode(token, certs=key, verify=True))
        except ValueError:
            return False

    def _check(self, request: Request, route: str) -> Reply | None:
        header = request.headers.get("authorization")
        if header is not None:
            self.authorizations.append(header)
        if (self.required_token is not None or self.service_account_keys) and not self._authorized(header):
            return 401, error_body(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 access token.",
                "required",
            )
        return self._fault_for(route)

    def _new_operation(
        self,
        project: str,
        zone: str,
        kind: str,
        target: str,
        on_done: Any,
        error: OperationFault | None = None,
    ) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        name = f"operation-{uuid.uuid4().hex[:20]}"
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": self._next_id(),
            "name": name,
            "zone": f"{self.url}/compute/v1/projects/{project}/zones/{zone}",
            "operationType": kind,
            "targetLink": f"{self.url}/compute/v1/projects/{project}/zones/{zone}/instances/{target}",
            "targetId": self._next_id(),
            "status": "PENDING",
            "progress": 0,
            "insertTime": now,
            "selfLink": f"{self.url}/compute/v1/projects/{project}/zones/{zone}/operations/{name}",
        }
        if error is not None:
            body["_pending_error"] = error
        op = _Operation(body=body, polls_left=self.operation_polls, on_done=on_done)
        self.operations[name] = op
        if op.polls_left <= 0:
            self._finish(op)
        return self._public(op)

    def _finish(self, op: _Operation) -> None:
        op.done = True
        op.body["status"] = "DONE"
        op.body["progress"] = 100
        op.body["endTime"] = datetime.now(UTC).isoformat()
        error: OperationFault | None = op.body.pop("_pending_error", None)
        if error is not None:
            op.body["error"] = {"errors": [{"code": error.code, "message": error.message}]}
            op.body["httpErrorStatusCode"] = error.http_status
            op.body["httpErrorMessage"] = {503: "SERVICE UNAVAILABLE", 403: "FORBIDDEN"}.get(
                error.http_status, "ERROR"
            )
        op.on_done(error)

    @staticmethod
    def _public(op: _Operation) -> dict[str, Any]:
        return {k: v for k, v in op.body.items() if not k.startswith("_")}

    def _instance_body(self, project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        instance = dict(body)
        instance.update(
            {
                "kind": "compute#instance",
                "id": self._next_id(),
                "status": "PROVISIONING",
                "zone": f"{self.url}/compute/v1/projects/{project}/zones/{zone}",
                "selfLink": f"{self.url}/compute/v1/projects/{project}/zones/{zone}/instances/{body['name']}",
                "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000-00:00"),
                "machineType": f"{self.url}/compute/v1/projects/{project}/{body['machineType']}",
            }
        )
        return instance

    @staticmethod
    def _invalid(message: str) -> Reply:
        return 400, error_body(400, f"Invalid value for field 'resource': {message}", "invalid")

    def _validate_insert(self, zone: str, body: dict[str, Any], request_id: str | None) -> Reply | None:
        if request_id is not None:
            try:
                if uuid.UUID(request_id).int == 0:
                    raise ValueError
            except ValueError:
                return self._invalid(f"requestId {request_id!r} must be a non-zero UUID")
        name = body.get("name", "")
        if not _NAME_RE.match(name):
            return self._invalid(f"name {name!r} must match {_NAME_RE.pattern}")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
                return self._invalid(f"label {key!r}={value!r} is not a valid label")
        machine = body.get("machineType", "")
        match = re.match(r"^zones/([^/]+)/machineTypes/([a-z0-9-]+)$", machine)
        if not match or match.group(1) != zone:
            return self._invalid(f"machineType {machine!r} is not a machine type of zone {zone}")
        family = match.group(2).split("-")[0]
        scheduling = body.get("scheduling") or {}
        maintenance = scheduling.get("onHostMaintenance", "MIGRATE")
        if scheduling.get("provisioningModel") == "SPOT" and (
            maintenance != "TERMINATE" or scheduling.get("automaticRestart", True)
        ):
            return self._invalid("Spot VMs need onHostMaintenance=TERMINATE and automaticRestart=false")
        accelerators = body.get("guestAccelerators") or []
        if accelerators and family != "n1":
            return self._invalid(f"guestAccelerators are not supported on {family} machine types")
        if (accelerators or family in _BUILTIN_GPU_FAMILIES) and maintenance != "TERMINATE":
            return self._invalid("Instances with GPUs must set onHostMaintenance=TERMINATE")
        for disk in body.get("disks") or []:
            image = (disk.get("initializeParams") or {}).get("sourceImage", "")
            if disk.get("boot") and (("arm64" in image) != (family in _ARM_FAMILIES)):
                return self._invalid(
                    f"image {image} architecture does not match machine type family {family}"
                )
        return None

    # -- handlers ------------------------------------------------------------------------

    def _insert(self, request: Request, m: re.Match[str]) -> Reply:
        project, zone = m["project"], m["zone"]
        request_id = request.params.get("requestId")
        if request_id is not None and request_id in self.request_ids:
            return 200, self._public(self.operations[self.request_ids[request_id]])
        if (problem := self._check(request, "insert")) is not None:
            return problem
        body = request.body or {}
        if (problem := self._validate_insert(zone, body, request_id)) is not None:
            return problem
        name = body["name"]
        if (zone, name) in self.instances:
            return 409, error_body(
                409,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                "alreadyExists",
            )
        error = None
        for fault in self.operation_faults:
            if fault.times > 0:
                fault.times -= 1
                error = fault
                break
        self.instances[(zone, name)] = self._instance_body(project, zone, body)

        def done(err: OperationFault | None) -> None:
            if err is not None:
                self.instances.pop((zone, name), None)
            elif (zone, name) in self.instances:
                self.instances[(zone, name)]["status"] = "RUNNING"

        op = self._new_operation(project, zone, "insert", name, done, error)
        if request_id is not None:
            self.request_ids[request_id] = op["name"]
        return 200, op

    def _token(self, request: Request, m: re.Match[str]) -> Reply:
        # A service account's JWT-bearer grant; the body is form-encoded, so it is not checked here.
        if self.oauth_token is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        return 200, {"access_token": self.oauth_token, "expires_in": 3600, "token_type": "Bearer"}

    def _get(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "get")) is not None:
            return problem
        instance = self.instances.get((m["zone"], m["name"]))
        if instance is None:
            return 404, error_body(
                404,
                f"The resource 'projects/{m['project']}/zones/{m['zone']}/instances/{m['name']}' was not found",
                "notFound",
            )
        return 200, instance

    def _delete(self, request: Request, m: re.Match[str]) -> Reply:
        project, zone, name = m["project"], m["zone"], m["name"]
        request_id = request.params.get("requestId")
        if request_id is not None and request_id in self.request_ids:
            return 200, self._public(self.operations[self.request_ids[request_id]])
        if (problem := self._check(request, "delete")) is not None:
            return problem
        if (zone, name) not in self.instances:
            return 404, error_body(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "notFound",
            )
        self.instances[(zone, name)]["status"] = "STOPPING"
        op = self._new_operation(
            project, zone, "delete", name, lambda _err: self.instances.pop((zone, name), None)
        )
        if request_id is not None:
            self.request_ids[request_id] = op["name"]
        return 200, op

    def _op_get(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "operation_get")) is not None:
            return problem
        op = self.operations.get(m["op"])
        if op is None:
            return 404, error_body(404, f"operation {m['op']} was not found", "notFound")
        if not op.done:
            op.polls_left -= 1
            if op.polls_left <= 0:
                self._finish(op)
            else:
                op.body["status"] = "RUNNING"
                op.body["progress"] = 50
        return 200, self._public(op)

    def _filtered(self, request: Request, zone: str | None) -> list[tuple[str, dict[str, Any]]] | Reply:
        expression = request.params.get("filter", "")
        key = value = None
        if expression:
            match = _FILTER_RE.match(expression)
            if not match:
                return 400, error_body(400, f"Invalid list filter expression '{expression}'", "invalid")
            key, value = match.group(1), match.group(2)
        rows = []
        for (z, _name), inst in sorted(self.instances.items()):
            if zone is not None and z != zone:
                continue
            if key is not None and (inst.get("labels") or {}).get(key) != value:
                continue
            rows.append((z, inst))
        return rows

    @staticmethod
    def _page(request: Request, count: int) -> tuple[int, int]:
        size = min(int(request.params.get("maxResults", "500")), 500)
        start = int(request.params.get("pageToken") or 0)
        return start, start + size

    def _list(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "list")) is not None:
            return problem
        rows = self._filtered(request, m["zone"])
        if not isinstance(rows, list):
            return rows
        start, end = self._page(request, len(rows))
        reply: dict[str, Any] = {
            "kind": "compute#instanceList",
            "items": [inst for _z, inst in rows[start:end]],
        }
        if end < len(rows):
            reply["nextPageToken"] = str(end)
        return 200, reply

    def _aggregated(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "aggregated_list")) is not None:
            return problem
        rows = self._filtered(request, None)
        if not isinstance(rows, list):
            return rows
        start, end = self._page(request, len(rows))
        items: dict[str, Any] = {}
        for zone, inst in rows[start:end]:
            items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
        if not items:
            items["zones/us-central1-a"] = {
                "warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope"}
            }
        reply: dict[str, Any] = {"kind": "compute#instanceAggregatedList", "items": items}
        if end < len(rows):
            reply["nextPageToken"] = str(end)
        return 200, reply

    def _time_series(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "time_series_list")) is not None:
            return problem
        p = request.params

        def bad(message: str) -> Reply:
            return 400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}

        wanted: dict[str, str] = {}
        user_labels: dict[str, str] = {}
        for clause in p.get("filter", "").split(" AND "):
            match = _TS_CLAUSE_RE.match(clause)
            if match is None:
                return bad(f"Could not parse filter clause {clause!r}")
            if match.group(2) is not None:
                user_labels[match.group(2)] = match.group(3)
            else:
                wanted[match.group(1)] = match.group(3)
        if wanted.get("metric.type") != SENT_BYTES or wanted.get("resource.type") != "gce_instance":
            return bad("this fake knows only sent_bytes_count of gce_instance")
        try:
            start = datetime.fromisoformat(p["interval.startTime"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(p["interval.endTime"].replace("Z", "+00:00"))
            period = int(p["aggregation.alignmentPeriod"].removesuffix("s"))
        except (KeyError, ValueError):
            return bad("interval.startTime, interval.endTime and aggregation.alignmentPeriod are required")
        if end > datetime.now(UTC):
            return bad("The end time of the interval must not be in the future")
        if period < 60 or p.get("aggregation.perSeriesAligner") != "ALIGN_SUM":
            return bad("this fake aligns with ALIGN_SUM over periods of at least 60 s")
        grouped = (
            p.get("aggregation.crossSeriesReducer") == "REDUCE_SUM"
            and p.get("aggregation.groupByFields") == "resource.label.instance_id"
        )
        # Series key: the instance (grouped), or instance and the metric's loadbalanced label.
        buckets: dict[tuple[str, bool | None], dict[int, int]] = {}
        for instance_id, labels, at, count, balanced in self.sent_points:
            if not start < at <= end or any(labels.get(k) != v for k, v in user_labels.items()):
                continue
            key = (instance_id, None if grouped else balanced)
            slot = int((end - at).total_seconds()) // period  # periods end at `end`, as the API aligns
            buckets.setdefault(key, {})
            buckets[key][slot] = buckets[key].get(slot, 0) + count
        series = []
        for (instance_id, balanced), slots in sorted(buckets.items(), key=lambda kv: str(kv[0])):
            points = [
                {
                    "interval": {
                        "startTime": (end - timedelta(seconds=period * (n + 1))).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                        "endTime": (end - timedelta(seconds=period * n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    },
                    "value": {"int64Value": str(total)},
                }
                for n, total in sorted(slots.items())
            ]
            metric: dict[str, Any] = {"type": SENT_BYTES}
            if balanced is not None:
                metric["labels"] = {"loadbalanced": str(balanced).lower()}
            series.append(
                {
                    "metric": metric,
                    "resource": {
                        "type": "gce_instance",
                        "labels": {"project_id": m["project"], "instance_id": instance_id},
                    },
                    "metricKind": "DELTA",
                    "valueType": "INT64",
                    "points": points,
                }
            )
        size = int(p.get("pageSize", "100000"))
        first = int(p.get("pageToken") or 0)
        reply: dict[str, Any] = {"timeSeries": series[first : first + size], "unit": "By"}
        if first + size < len(series):
            reply["nextPageToken"] = str(first + size)
        return 200, reply
