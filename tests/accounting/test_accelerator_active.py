"""The accelerator record's ActiveDuration is the GPU unit's busy time (a job ran on it), or null
when nothing reported whether the unit held work."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from sqlmodel import Session

from accounting.period import Month
from accounting.publish import Kind, build_messages
from accounting.usage import import_records
from provisioner.model import EventRow
from tests.accounting.conftest import OCT, job, vm
from tests.accounting.test_billing import row


def test_accelerator_active_duration_is_busy_time_of_the_gpu_unit(session: Session) -> None:
    gpu = {"gpu_count": 4, "gpu_model": "A100"}
    busy_vm, silent_vm = vm(1, **gpu), vm(2, **gpu)  # 10 h each in October
    for rec in (busy_vm, silent_vm):
        end = rec.start_time + timedelta(seconds=rec.wall_seconds)
        session.add(row(str(rec.resource_id), gpus=4, launched_at=rec.start_time, released_at=end,
                        created_at=rec.start_time, state_since=end))  # fmt: skip
    t = busy_vm.start_time
    for hours, busy in ((2, True), (5, False)):
        kind = "resource.busy" if busy else "resource.idle"
        session.add(EventRow(at=t + timedelta(hours=hours), kind=kind, subject="i-0001", payload={"busy": busy}))
    session.commit()
    gpu_job = replace(job(7), **gpu)
    import_records(session, [busy_vm, silent_vm, gpu_job], now=OCT + timedelta(days=40))
    _, [message] = build_messages(session, Month(2026, 10), Kind.ACCELERATOR)
    active = {r["AssociatedRecordType"] + ":" + str(r["AssociatedRecord"]): r["ActiveDuration"]
              for r in json.loads(message)["UsageRecords"]}  # fmt: skip
    assert active == {
        "cloud:UKI-TEST:vm:i-0001": 3 * 3600,  # busy from +2 h to +5 h of its 10 h
        "cloud:UKI-TEST:vm:i-0002": None,  # never reported busy or idle: unknown, not 0
        "job:1007": 7200,  # a batch job's GPUs are active for its whole run
    }
