"""A fake Keystone v3 + Nova (v2.1) + Glance (v2) for libcloud's OpenStack driver in tests.

Implements exactly what `backends.openstack` uses, with the real APIs' JSON shapes: the token call
with a service catalog and `X-Subject-Token`, `servers/detail` with Nova's `name` regex filter and
`limit`/`marker` pages announced by `servers_links` (as Nova does when a page is full), create /
get / delete of servers, flavours and images. Servers stay BUILD for `build_polls` GETs; a queued
scheduling fault turns the next server to ERROR with Nova's "No valid host was found" fault.
HTTP faults use Nova's error bodies (`{"overLimit": {"code": 413, "message": ...}}`).
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.json_http_server import JsonHttpServer, Reply, Request

NOVA = "/compute/v2.1"
GLANCE = "/image"
PROJECT_ID = "0f3b6c1e2d4a4b5c8d9e7f6a5b4c3d2e"
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


def nova_error(status: int, message: str) -> dict[str, Any]:
    key = {
        400: "badRequest",
        403: "forbidden",
        404: "itemNotFound",
        409: "conflictingRequest",
        413: "overLimit",
        429: "overLimit",
    }.get(status, "computeFault")
    return {key: {"code": status, "message": message}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    route: str
    status: int
    message: str
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeNova:
    """State and faults of the fake; `server.calls` counts requests per route."""

    username: str = "broker"
    password: str = "s3cret-PASSWORD-value"
    project: str = "hep"
    max_limit: int = 1000  # Nova's osapi_max_limit: the largest page it returns
    build_polls: int = 0  # GETs of a server before it leaves BUILD
    flavors: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → body, in creation order
    tokens: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)
    schedule_faults: list[str] = field(default_factory=list)  # fault messages for the next servers
    server: JsonHttpServer = field(default_factory=JsonHttpServer)
    _polls_left: dict[str, int] = field(default_factory=dict)
    _pending_fault: dict[str, str] = field(default_factory=dict)
    _clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lost_replies: int = 0

    def __post_init__(self) -> None:
        s = self.server
        s.route("POST", r"/v3/auth/tokens", "auth", self._auth)
        s.route("GET", NOVA + r"/servers/detail", "servers_detail", self._list)
        s.route("POST", NOVA + r"/servers", "create", self._create)
        s.route("GET", NOVA + r"/servers/(?P<id>[^/]+)", "get", self._get)
        s.route("DELETE", NOVA + r"/servers/(?P<id>[^/]+)", "delete", self._delete)
        s.route("GET", NOVA + r"/flavors/detail", "flavors", self._flavors)
        s.route("GET", GLANCE + r"/v2/images", "images", self._images)
        if not self.flavors:
            self.flavors = [
                self.flavor("1", "m1.large", vcpus=4, ram_mb=8192),
                self.flavor("2", "a1.large", vcpus=8, ram_mb=16384),
                self.flavor("3", "g1.a100", vcpus=16, ram_mb=65536),
                self.flavor("4", "m1.retired", vcpus=2, ram_mb=4096, disabled=True),
            ]
        if not self.images:
            self.images = [
                {
                    "id": "img-x86",
                    "name": "alma9",
                    "status": "active",
                    "created_at": _now(),
                    "updated_at": _now(),
                },
                {
                    "id": "img-arm",
                    "name": "alma9-aarch64",
                    "status": "active",
                    "created_at": _now(),
                    "updated_at": _now(),
                },
            ]

    @staticmethod
    def flavor(fid: str, name: str, vcpus: int, ram_mb: int, disabled: bool = False) -> dict[str, Any]:
        return {
            "id": fid,
            "name": name,
            "vcpus": vcpus,
            "ram": ram_mb,
            "disk": 20,
            "swap": "",
            "OS-FLV-EXT-DATA:ephemeral": 0,
            "OS-FLV-DISABLED:disabled": disabled,
            "os-flavor-access:is_public": True,
            "links": [],
        }

    # -- test controls -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeNova:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def fail(
        self, route: str, status: int, message: str, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        with self.server.lock:
            self.faults.append(Fault(route, status, message, times, headers or {}))

    def fail_scheduling(self, message: str = NO_VALID_HOST) -> None:
        with self.server.lock:
            self.schedule_faults.append(message)

    def lose_create_replies(self, times: int = 1) -> None:
        """The next creates succeed in Nova but the client gets a 503, as when a reply is lost."""
        with self.server.lock:
            self._lost_replies += times

    def add_twin(self, server_id: str) -> str:
        """Another server with the same name and metadata, created later (a racing broker process)."""
        with self.server.lock:
            original = self.servers[server_id]
            sid = str(uuid.uuid4())
            created = self._created()
            self.servers[sid] = {
                **original,
                "id": sid,
                "created": created,
                "updated": created,
                "links": [{"rel": "self", "href": f"{self.url}{NOVA}/servers/{sid}"}],
            }
            return sid

    def set_status(self, server_id: str, status: str) -> None:
        with self.server.lock:
            self.servers[server_id]["status"] = status

    # -- helpers -------------------------------------------------------------------------

    def _check(self, request: Request, route: str) -> Reply | None:
        if request.headers.get("x-auth-token") not in self.tokens:
            return 401, {
                "error": {
                    "code": 401,
                    "title": "Unauthorized",
                    "message": "The request you have made requires authentication.",
                }
            }
        for fault in self.faults:
            if fault.route == route and fault.times > 0:
                fault.times -= 1
                return fault.status, nova_error(fault.status, fault.message), fault.headers
        return None

    def _created(self) -> str:
        # Creation times one second apart so "oldest" is well defined.
        return datetime.fromtimestamp(1_700_000_000 + next(self._clock), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _view(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if not k.startswith("_")}

    # -- handlers ------------------------------------------------------------------------

    def _auth(self, request: Request, m: re.Match[str]) -> Reply:
        ident = ((request.body or {}).get("auth") or {}).get("identity") or {}
        user = (ident.get("password") or {}).get("user") or {}
        scope = ((request.body or {}).get("auth") or {}).get("scope") or {}
        if user.get("name") != self.username or user.get("password") != self.password:
            return 401, {
                "error": {
                    "code": 401,
                    "title": "Unauthorized",
                    "message": "The request you have made requires authentication.",
                }
            }
        if (scope.get("project") or {}).get("name") != self.project:
            return 401, {"error": {"code": 401, "title": "Unauthorized", "message": "No project scope."}}
        token = f"gAAAA{uuid.uuid4().hex}"
        self.tokens.add(token)

        def endpoint(kind: str, name: str, path: str) -> dict[str, Any]:
            return {
                "type": kind,
                "name": name,
                "id": uuid.uuid4().hex,
                "endpoints": [
                    {
                        "interface": "public",
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": f"{self.url}{path}",
                        "id": uuid.uuid4().hex,
                    }
                ],
            }

        body = {
            "token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": _now(),
                "user": {"id": "u1", "name": self.username, "domain": {"id": "default", "name": "Default"}},
                "project": {
                    "id": PROJECT_ID,
                    "name": self.project,
                    "domain": {"id": "default", "name": "Default"},
                },
                "roles": [{"id": "r1", "name": "member"}],
                "catalog": [
                    endpoint("compute", "nova", NOVA),
                    endpoint("image", "glance", GLANCE),
                    endpoint("network", "neutron", "/network"),
                    endpoint("volumev3", "cinderv3", "/volume/v3"),
                ],
            }
        }
        return 201, body, {"X-Subject-Token": token}

    def _list(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "servers_detail")) is not None:
            return problem
        rows = list(self.servers.values())
        if "name" in request.params:
            pattern = re.compile(request.params["name"])
            rows = [s for s in rows if pattern.search(s["name"])]
        if marker := request.params.get("marker"):
            ids = [s["id"] for s in rows]
            if marker not in ids:
                return 400, nova_error(400, f"marker [{marker}] not found")
            rows = rows[ids.index(marker) + 1 :]
        limit = min(int(request.params.get("limit", self.max_limit)), self.max_limit)
        page = rows[:limit]
        reply: dict[str, Any] = {"servers": [self._view(s) for s in page]}
        if len(page) == limit and page:
            extra = f"&name={request.params['name']}" if "name" in request.params else ""
            reply["servers_links"] = [
                {
                    "rel": "next",
                    "href": f"{self.url}{NOVA}/servers/detail?limit={limit}&marker={page[-1]['id']}{extra}",
                }
            ]
        return 200, reply

    def _create(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "create")) is not None:
            return problem
        spec = (request.body or {}).get("server") or {}
        if not spec.get("name"):
            return 400, nova_error(400, "Invalid input for field/attribute name.")
        if spec.get("flavorRef") not in {f["id"] for f in self.flavors}:
            return 400, nova_error(400, "Invalid flavorRef provided.")
        if spec.get("imageRef") not in {i["id"] for i in self.images}:
            return 400, nova_error(400, f"Image {spec.get('imageRef')} could not be found.")
        metadata = spec.get("metadata") or {}
        for key, value in metadata.items():
            if not isinstance(value, str) or len(key) > 255 or len(value) > 255:
                return 400, nova_error(400, f"Invalid input for field/attribute metadata: {key}")
        sid = str(uuid.uuid4())
        # Creation times one second apart so "oldest" is well defined.
        created = datetime.fromtimestamp(1_700_000_000 + next(self._clock), UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        self.servers[sid] = {
            "id": sid,
            "name": spec["name"],
            "status": "BUILD",
            "addresses": {},
            "hostId": "",
            "tenant_id": PROJECT_ID,
            "user_id": "u1",
            "image": {"id": spec["imageRef"]},
            "flavor": {"id": spec["flavorRef"]},
            "metadata": metadata,
            "created": created,
            "updated": created,
            "key_name": spec.get("key_name"),
            "OS-EXT-AZ:availability_zone": spec.get("availability_zone", "nova"),
            "OS-EXT-STS:task_state": "scheduling",
            "OS-EXT-STS:vm_state": "building",
            "links": [{"rel": "self", "href": f"{self.url}{NOVA}/servers/{sid}"}],
            "_networks": spec.get("networks"),
        }
        if self.schedule_faults:
            self._pending_fault[sid] = self.schedule_faults.pop(0)
        self._polls_left[sid] = self.build_polls
        if self.build_polls <= 0:
            self._settle(sid)
        if self._lost_replies > 0:
            self._lost_replies -= 1
            return 503, nova_error(503, "Service Unavailable")
        return 202, {
            "server": {"id": sid, "links": self.servers[sid]["links"], "adminPass": "generated-pass"}
        }

    def _settle(self, sid: str) -> None:
        server = self.servers[sid]
        if server["status"] != "BUILD":
            return
        server["OS-EXT-STS:task_state"] = None
        if sid in self._pending_fault:
            server["status"] = "ERROR"
            server["OS-EXT-STS:vm_state"] = "error"
            server["fault"] = {"code": 500, "message": self._pending_fault.pop(sid), "created": _now()}
        else:
            server["status"] = "ACTIVE"
            server["OS-EXT-STS:vm_state"] = "active"
            server["addresses"] = {
                "private": [{"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"}]
            }

    def _get(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "get")) is not None:
            return problem
        sid = m["id"]
        if sid not in self.servers:
            return 404, nova_error(404, f"Instance {sid} could not be found.")
        self._polls_left[sid] = self._polls_left.get(sid, 0) - 1
        if self._polls_left[sid] <= 0:
            self._settle(sid)
        return 200, {"server": self._view(self.servers[sid])}

    def _delete(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "delete")) is not None:
            return problem
        if self.servers.pop(m["id"], None) is None:
            return 404, nova_error(404, f"Instance {m['id']} could not be found.")
        return 204, None

    def _flavors(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "flavors")) is not None:
            return problem
        return 200, {"flavors": self.flavors}

    def _images(self, request: Request, m: re.Match[str]) -> Reply:
        if (problem := self._check(request, "images")) is not None:
            return problem
        return 200, {"images": self.images, "first": "/v2/images", "schema": "/v2/schemas/images"}
