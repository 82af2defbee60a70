"""GCE instances' bytes out from Cloud Monitoring: `compute.googleapis.com/instance/network/sent_bytes_count`.

One `projects.timeSeries.list` query (REST, every page followed) covers all of a broker's instances
in a project: the filter selects them by the broker's label (`metadata.user_labels`), each series is
summed over the window (ALIGN_SUM) and the series of one instance (the metric's `loadbalanced` label
splits them) are added up (REDUCE_SUM by `resource.label.instance_id`). The metric is sampled every
60 s and visible up to 240 s later; Cloud Monitoring keeps it 6 weeks.

Like EC2's NetworkOut, sent_bytes_count counts every byte the VM sends (to the internet, other regions,
other zones and its own zone), so it is an upper bound on billed egress.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.auth.transport.requests import AuthorizedSession

from backends.base import TAG_BROKER
from backends.egress_counters import Window

SENT_BYTES = "compute.googleapis.com/instance/network/sent_bytes_count"
MONITORING_SCOPE = "https://www.googleapis.com/auth/monitoring.read"
DEFAULT_ENDPOINT = "https://monitoring.googleapis.com"
PAGE_SIZE = 1000


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")  # microseconds kept: the last second counts


def sent_bytes_query(broker_label: str, window: Window) -> dict[str, str]:
    """The timeSeries.list parameters: every instance labelled with this broker, its bytes out summed
    per period over `window`, one series per instance."""
    return {
        "filter": (
            f'metric.type = "{SENT_BYTES}" AND resource.type = "gce_instance"'
            f' AND metadata.user_labels."{TAG_BROKER}" = "{broker_label}"'
        ),
        "interval.startTime": _rfc3339(window.start),
        "interval.endTime": _rfc3339(window.end),
        "aggregation.alignmentPeriod": f"{window.period_s}s",
        "aggregation.perSeriesAligner": "ALIGN_SUM",
        "aggregation.crossSeriesReducer": "REDUCE_SUM",
        "aggregation.groupByFields": "resource.label.instance_id",
        "view": "FULL",
        "pageSize": str(PAGE_SIZE),
    }


def _point_value(point: Mapping[str, Any]) -> int:
    value = point.get("value") or {}
    if "int64Value" in value:
        return int(value["int64Value"])  # JSON carries int64 as a string
    return int(float(value.get("doubleValue", 0)))


def sent_bytes_by_instance(series: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GCE instance id (the numeric one) → bytes summed over every point of its series."""
    out: dict[str, int] = {}
    for one in series:
        instance_id = str(((one.get("resource") or {}).get("labels") or {}).get("instance_id", ""))
        if not instance_id:
            continue
        out[instance_id] = out.get(instance_id, 0) + sum(_point_value(p) for p in one.get("points", []))
    return out


def fetch_sent_bytes(
    session: AuthorizedSession, endpoint: str, project: str, params: Mapping[str, str], timeout: float
) -> dict[str, int]:
    """Run the query, every page; an HTTP error is raised as google-api-core's exception of its status
    (the backend maps those), so a refusal reads as it does for the Compute API."""
    url = f"{endpoint.rstrip('/')}/v3/projects/{project}/timeSeries"
    series: list[Mapping[str, Any]] = []
    token: str | None = None
    while True:
        query = dict(params) | ({"pageToken": token} if token else {})
        response = session.get(url, params=query, timeout=timeout)
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        body = response.json()
        series.extend(body.get("timeSeries", []))
        token = body.get("nextPageToken") or None
        if token is None:
            return sent_bytes_by_instance(series)
