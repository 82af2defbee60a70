"""APEL messages field by field against the reference, parsed back with a loader mirroring APEL's."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from accounting import apel
from accounting.apel import JobGroup
from accounting.benchmark import UnknownBenchmark
from tests.accounting.apel_loader import Rejected, load_message
from tests.accounting.conftest import OCT, job, vm


def record_lines(message: str) -> list[list[str]]:
    """Keys of each record, in order, from the raw text."""
    body = message.split("\n", 1)[1]
    chunks = body.split("%%\n")
    assert chunks[-1] == "", "every record, the last included, is closed by a %% line"
    return [[line.split(":", 1)[0] for line in chunk.splitlines()] for chunk in chunks[:-1]]


def test_job_record_has_apel_fields_in_apel_order_with_epoch_times() -> None:
    record = job(1)
    [message] = apel.job_messages([record])
    assert message.startswith("APEL-individual-job-message: v0.3\n")
    assert message.endswith("\n%%\n")
    [keys] = record_lines(message)
    assert keys == [
        "Site", "SubmitHost", "MachineName", "Queue", "LocalJobId", "GlobalUserName", "FQAN", "VO", "VOGroup",
        "VORole", "WallDuration", "CpuDuration", "Processors", "NodeCount", "StartTime", "EndTime",
        "InfrastructureDescription", "InfrastructureType", "MemoryReal", "ServiceLevelType", "ServiceLevel",
    ]  # fmt: skip
    text = message.splitlines()
    assert f"StartTime: {int(record.start_time.timestamp())}" in text
    assert f"EndTime: {int(record.end_time.timestamp())}" in text  # type: ignore[union-attr]
    assert "ServiceLevelType: HEPscore23" in text
    assert "ServiceLevel: 12.5" in text
    assert "WallDuration: 7200" in text  # elapsed, not × cores
    assert "CpuDuration: 57000" in text  # summed over cores
    _header, [loaded] = load_message(message)
    assert loaded["VO"] == "atlas" and loaded["VOGroup"] == "/atlas" and loaded["VORole"] == "Role=production"
    assert loaded["EndTime"] == record.end_time.astimezone(UTC).replace(tzinfo=None)  # type: ignore[union-attr]
    assert loaded["Processors"] == 8 and loaded["NodeCount"] == 1


def test_job_record_without_benchmark_is_refused_not_written() -> None:
    with pytest.raises(UnknownBenchmark):
        apel.job_messages([job(1, hs23_per_core=None)])
    with pytest.raises(UnknownBenchmark):
        apel.job_messages([job(1, hs23_per_core=400.0)])  # a whole-node score, not per core


def test_loader_rejects_what_apel_rejects() -> None:
    good = apel.job_messages([job(1)])[0]
    with pytest.raises(Rejected):
        load_message(good.replace("WallDuration: 7200", "WallDuration: 7200.5"))
    with pytest.raises(Rejected):
        load_message(good.replace("ServiceLevelType: HEPscore23", "ServiceLevelType: HS23"))
    with pytest.raises(Rejected):
        load_message(good.replace("Site: UKI-TEST", "Sitename: UKI-TEST"))
    with pytest.raises(Rejected):
        load_message(good.replace("EndTime: ", "EndTime: 2026-10-10T12:00:00Z#"))


def test_messages_split_at_1000_records_each_with_header() -> None:
    records = [job(n) for n in range(2500)]
    messages = apel.job_messages(records)
    assert len(messages) == 3
    counts = [len(record_lines(m)) for m in messages]
    assert counts == [1000, 1000, 500]
    for message in messages:
        header, _loaded = load_message(message)
        assert header == apel.JOB_HEADER
    assert [len(load_message(m)[1]) for m in messages] == counts


def group(**over: object) -> JobGroup:
    base = JobGroup(
        site="UKI-TEST", experiment="atlas", fqan="/atlas/Role=production/Capability=NULL",
        global_user_name="/DC=ch/CN=prod", submit_host="ce01", hs23_per_core=12.5, nodes=1, cores=8,
        wall_seconds=7200 * 10, cpu_seconds=50000 * 10, jobs=10,
        earliest_end=OCT + timedelta(days=1), latest_end=OCT + timedelta(days=20),
    )  # fmt: skip
    return replace(base, **over)  # type: ignore[arg-type]


def test_summary_record_fields_and_totals() -> None:
    # Same key after FQAN parsing: "/atlas/Role=production/Capability=NULL" and "/atlas/Role=production".
    groups = [group(), group(fqan="/atlas/Role=production", jobs=5, wall_seconds=100, cpu_seconds=50)]
    summaries = apel.summaries_from_groups(groups, 2026, 10)
    assert len(summaries) == 1
    [message] = apel.summary_messages(summaries)
    assert message.startswith("APEL-summary-job-message: v0.2\n")
    [keys] = record_lines(message)
    assert keys == [
        "Site", "Month", "Year", "GlobalUserName", "VO", "VOGroup", "VORole", "SubmitHost", "InfrastructureType",
        "ServiceLevelType", "ServiceLevel", "NodeCount", "Processors", "EarliestEndTime", "LatestEndTime",
        "WallDuration", "CpuDuration", "NumberOfJobs",
    ]  # fmt: skip
    assert "InfrastructureDescription" not in message
    _, [loaded] = load_message(message)
    assert loaded["NumberOfJobs"] == 15
    assert loaded["WallDuration"] == 72100
    assert loaded["CpuDuration"] == 500050
    assert (loaded["Month"], loaded["Year"]) == (10, 2026)
    assert loaded["ServiceLevelType"] == "HEPscore23" and loaded["ServiceLevel"] == 12.5
    assert loaded["EarliestEndTime"] == datetime(2026, 10, 2)


def test_summaries_keep_benchmarks_and_core_counts_apart() -> None:
    groups = [group(), group(hs23_per_core=17.0), group(cores=1)]
    assert len(apel.summaries_from_groups(groups, 2026, 10)) == 3


def test_normalised_summary_is_wall_times_hepscore23_per_core() -> None:
    groups = [
        group(wall_seconds=7, cpu_seconds=5, hs23_per_core=12.5),
        group(wall_seconds=3, cpu_seconds=1, hs23_per_core=10.1),
    ]
    [summary] = apel.normalised_from_groups(groups, 2026, 10)
    # ROUND(7 × 12.5 + 3 × 10.1) = ROUND(87.5 + 30.3) = 118 (the sum is rounded once, not each part)
    assert summary.normalised_wall == 118
    assert summary.normalised_cpu == round(5 * 12.5 + 1 * 10.1)
    [message] = apel.normalised_messages([summary])
    assert message.startswith("APEL-summary-job-message: v0.3\n")
    [keys] = record_lines(message)
    assert keys == [
        "Site", "Month", "Year", "GlobalUserName", "VO", "VOGroup", "VORole", "SubmitHost", "Infrastructure",
        "NodeCount", "Processors", "EarliestEndTime", "LatestEndTime", "WallDuration", "CpuDuration",
        "NormalisedWallDuration", "NormalisedCpuDuration", "NumberOfJobs",
    ]  # fmt: skip
    assert "ServiceLevel" not in message  # a v0.3 normalised record has no benchmark fields
    _, [loaded] = load_message(message)
    assert loaded["NormalisedWallDuration"] == 118 and loaded["WallDuration"] == 10


def test_sync_record() -> None:
    [message] = apel.sync_messages([apel.SyncCount("UKI-TEST", "ce01", 2026, 10, 42)])
    assert (
        message
        == "APEL-sync-message: v0.1\nSite: UKI-TEST\nSubmitHost: ce01\nNumberOfJobs: 42\nMonth: 10\nYear: 2026\n%%\n"
    )
    _, [loaded] = load_message(message)
    assert loaded["NumberOfJobs"] == 42


def test_cloud_record_for_running_and_finished_vms() -> None:
    done, running = vm(1), vm(2, end_time=None, status="started")
    [message] = apel.cloud_messages([done, running])
    assert message.startswith("APEL-cloud-message: v0.4\n")
    first, second = record_lines(message)
    assert first == [
        "RecordCreateTime", "VMUUID", "SiteName", "CloudComputeService", "MachineName", "FQAN", "Status",
        "StartTime", "EndTime", "WallDuration", "CpuDuration", "CpuCount", "Memory", "BenchmarkType",
        "Benchmark", "ImageId", "CloudType",
    ]  # fmt: skip
    assert "EndTime" not in second
    _, (a, b) = load_message(message)
    assert a["Status"] == "completed" and b["Status"] == "started"
    assert a["VMUUID"] == "UKI-TEST:vm:i-0001" and a["CpuCount"] == 4.0 and a["Memory"] == 16384
    assert a["BenchmarkType"] == "HEPscore23" and a["Benchmark"] == 17.5


def test_cloud_summary_record() -> None:
    summary = apel.CloudSummary(
        site="UKI-TEST", cloud_compute_service="aws", year=2026, month=10, vo="cms", vo_group=None, vo_role=None,
        global_user_name=None, status="completed", cloud_type="aws-ec2", image_id="ami-1",
        earliest_start=OCT, latest_start=OCT + timedelta(days=2), wall_seconds=100, cpu_seconds=90, cpu_count=8,
        memory_mb=1024, benchmark=17.5, vms=2,
    )  # fmt: skip
    [message] = apel.cloud_summary_messages([summary])
    assert message.startswith("APEL-cloud-summary-message: v0.4\n")
    _, [loaded] = load_message(message)
    assert loaded["NumberOfVMs"] == 2 and loaded["SiteName"] == "UKI-TEST" and loaded["CpuCount"] == 8.0


# The accelerator message schema as the APEL loader validates it (apel/common/message_schemas.py).
ACCELERATOR_SCHEMA = {
    "type": "object",
    "required": ["Type", "Version", "UsageRecords"],
    "properties": {
        "Type": {"const": "APEL-accelerator-message"},
        "Version": {"enum": ["0.1"]},
        "UsageRecords": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": [
                    "MeasurementMonth",
                    "MeasurementYear",
                    "AssociatedRecordType",
                    "AssociatedRecord",
                    "FQAN",
                    "SiteName",
                    "Count",
                    "AvailableDuration",
                    "Type",
                ],
                "properties": {
                    "MeasurementMonth": {"type": "integer", "minimum": 1, "maximum": 12},
                    "MeasurementYear": {"type": "integer", "minimum": 2000},
                    "AssociatedRecordType": {"enum": ["cloud", "job"]},
                    "AssociatedRecord": {"type": "string"},
                    "GlobalUserName": {"type": ["string", "null"]},
                    "FQAN": {"type": "string"},
                    "SiteName": {"type": "string"},
                    "Count": {"type": "number"},
                    "Cores": {"type": ["integer", "null"]},
                    "ActiveDuration": {"type": ["integer", "null"]},
                    "AvailableDuration": {"type": "integer"},
                    "BenchmarkType": {"type": ["string", "null"]},
                    "Benchmark": {"type": ["number", "null"]},
                    "Type": {"enum": ["GPU", "FPGA", "Other"]},
                    "Model": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
    },
}


def test_gpu_usage_goes_out_as_accelerator_json_linked_to_the_vm() -> None:
    gpu_vm = vm(3, gpu_count=4, gpu_model="NVIDIA A10G")
    messages = apel.accelerator_messages([gpu_vm] * 1001, 2026, 10)
    assert len(messages) == 2
    body = json.loads(messages[0])
    jsonschema.validate(body, ACCELERATOR_SCHEMA)
    jsonschema.validate(json.loads(messages[1]), ACCELERATOR_SCHEMA)
    first = body["UsageRecords"][0]
    assert first["AssociatedRecordType"] == "cloud"
    assert first["AssociatedRecord"] == apel.vm_uuid(gpu_vm)  # the same VMUUID as the cloud record
    assert first["Count"] == 4.0 and first["AvailableDuration"] == 36000 and first["Model"] == "NVIDIA A10G"
    assert list(first) == list(apel.ACCELERATOR_FIELDS)


def test_values_that_would_break_framing_are_refused() -> None:
    with pytest.raises(ValueError):
        apel.job_messages([job(1, submit_host="ce01\nVO: cms")])
