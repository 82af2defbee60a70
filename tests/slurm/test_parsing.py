"""Pure parsing of Slurm's notations (no cluster): hostlists, TRES/gres strings, job comments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.slurm.client import decode_comment, encode_comment, token_in
from backends.slurm.hostlist import expand_hostlist
from backends.slurm.openapi import gpus_from_tres, gres_gpus, memory_mb, parse_tres
from backends.slurm.pilot import job_name, parse_job_name, time_limit_minutes


@given(
    prefix=st.sampled_from(["cloud", "n", "gpu-a"]),
    numbers=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=20, unique=True),
    width=st.integers(min_value=1, max_value=4),
)
def test_hostlist_ranges_expand_to_every_padded_name(prefix: str, numbers: list[int], width: int) -> None:
    numbers.sort()
    ranges, start = [], numbers[0]
    for prev, cur in zip(numbers, [*numbers[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            ranges.append(f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}")
            start = cur if cur is not None else start
    assert expand_hostlist(f"{prefix}[{','.join(ranges)}],login1") == [
        *(f"{prefix}{n:0{width}d}" for n in numbers),
        "login1",
    ]


def test_gpu_counts_and_models_from_tres_and_gres() -> None:
    assert gpus_from_tres(parse_tres("cpu=2,mem=1G,node=1,billing=2,gres/gpu=1")) == (1, None)
    assert gpus_from_tres(parse_tres("cpu=8,gres/gpu=4,gres/gpu:a100=4")) == (4, "a100")
    assert gres_gpus("gpu:fake:2(S:0)") == (2, "fake")
    assert gres_gpus("gres:gpu:1") == (1, None)
    assert gres_gpus("gres/gpu:a100:4,gres/nic:1") == (4, "a100")
    assert gres_gpus("") == (0, None)
    assert (memory_mb("19284M"), memory_mb("1G"), memory_mb("2000"), memory_mb("512K")) == (
        19284,
        1024,
        2000,
        0,
    )


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True),
                       st.from_regex(r"[A-Za-z0-9:._/-]{1,30}", fullmatch=True), max_size=6))  # fmt: skip
def test_job_comments_round_trip_tags(tags: dict[str, str]) -> None:
    assert decode_comment(encode_comment(tags)) == tags


def test_comments_reject_separators_and_find_tokens_exactly() -> None:
    with pytest.raises(ValueError):
        encode_comment({"provisioner-group": "a;b"})
    with pytest.raises(ValueError):
        encode_comment({"x": "has space"})
    comment = encode_comment({"provisioner-broker": "b1", "token": "abc"})
    assert token_in(comment, "abc") and not token_in(comment, "ab") and not token_in("token=abcd", "abc")


def test_pilot_names_and_time_limits() -> None:
    assert parse_job_name(job_name("pilot", "r-1.2")) == ("pilot", "r-1.2")
    assert parse_job_name("user-job") is None and parse_job_name("prv.pilot.") is None
    assert (time_limit_minutes(0.5), time_limit_minutes(0.001), time_limit_minutes(1 / 60)) == (30, 1, 1)
