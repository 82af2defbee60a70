"""The demand a running burst request still has: what it asked for, less what it already got."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime

from provisioner.bursts.ending import duration_ends
from provisioner.bursts.progress import RequestProgress
from provisioner.domain import DemandGroup
from provisioner.requests import BurstRequestSpec, demand_group_for

MIN_WALLTIME_HOURS = 1 / 60  # a duration request in its last minute still asks for a minute


def remaining_demand(
    request_id: str, spec: BurstRequestSpec, admitted_at: datetime, progress: RequestProgress, now: datetime
) -> DemandGroup:
    """The request's demand group now: an HS23-hours request asks only for the work not yet delivered;
    a duration request asks for its slots only until its duration ends."""
    group = demand_group_for(request_id, spec, admitted_at=admitted_at)
    if spec.hs23_hours is not None:
        left = max(0.0, spec.hs23_hours - progress.hs23_hours_done)
        jobs = max(1, min(group.jobs, math.ceil(left / group.hs23_hours_per_job)))
        return dataclasses.replace(
            group,
            jobs=jobs,
            input_gb_per_job=spec.input_gb / group.jobs,
            output_gb_per_job=spec.output_gb / group.jobs,
        )
    ends = duration_ends(spec, admitted_at, progress)
    if ends is None:
        return group
    hours_left = (ends - now).total_seconds() / 3600
    return dataclasses.replace(
        group, walltime_hours=max(MIN_WALLTIME_HOURS, min(group.walltime_hours, hours_left))
    )
