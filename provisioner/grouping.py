"""Collapses pending jobs into demand groups: one group per experiment and shape of need, fast enough for millions of jobs.

Jobs join the same group when they share experiment, cores, GPUs (count and model), allowed
architectures, input data location, preemptibility and priority, and fall in the same memory and
walltime bucket. A group asks for the bucket's upper edge (so every job in it fits) and the mean
input/output GB per job (so egress totals are right). Columnar: `JobTable` holds one numpy array
per attribute, and grouping is one sort of a packed integer key plus `bincount`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from provisioner.domain import Arch, DemandGroup, PendingJob

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Bucket edges: a job asks for the smallest edge at or above its need.
MEMORY_EDGES_GB = np.array(
    [0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048],
    dtype=np.float64,
)
WALLTIME_EDGES_HOURS = np.array(
    [0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 18, 24, 36, 48, 72, 96, 120, 168, 240, 336, 720], dtype=np.float64
)
ARCH_BITS = {Arch.X86_64: 1, Arch.ARM64: 2}


@dataclass(frozen=True, slots=True)
class JobTable:
    """Pending jobs as columns; strings are integer codes into the tuples beside them (-1: none)."""

    experiment: IntArray
    experiments: tuple[str, ...]
    cores: IntArray
    memory_gb: FloatArray
    walltime_hours: FloatArray
    arch_mask: IntArray  # bit set of ARCH_BITS
    gpus: IntArray
    gpu_model: IntArray
    gpu_models: tuple[str, ...]
    input_gb: FloatArray
    output_gb: FloatArray
    data_location: IntArray
    data_locations: tuple[str, ...]
    preemptible: BoolArray
    priority: IntArray

    def __len__(self) -> int:
        return len(self.cores)

    def __post_init__(self) -> None:
        n = len(self.cores)
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, np.ndarray) and len(value) != n:
                raise ValueError(f"JobTable.{name}: {len(value)} rows, expected {n}")

    @classmethod
    def from_jobs(cls, jobs: Sequence[PendingJob]) -> JobTable:
        experiments: dict[str, int] = {}
        gpu_models: dict[str, int] = {}
        locations: dict[str, int] = {}
        n = len(jobs)

        def code(table: dict[str, int], value: str | None) -> int:
            return -1 if value is None else table.setdefault(value, len(table))

        return cls(
            experiment=np.fromiter((code(experiments, j.experiment) for j in jobs), np.int64, n),
            experiments=(),
            cores=np.fromiter((j.cores for j in jobs), np.int64, n),
            memory_gb=np.fromiter((j.memory_gb for j in jobs), np.float64, n),
            walltime_hours=np.fromiter((j.walltime_hours for j in jobs), np.float64, n),
            arch_mask=np.fromiter((sum(ARCH_BITS[a] for a in j.archs) for j in jobs), np.int64, n),
            gpus=np.fromiter((j.gpus for j in jobs), np.int64, n),
            gpu_model=np.fromiter((code(gpu_models, j.gpu_model) for j in jobs), np.int64, n),
            gpu_models=(),
            input_gb=np.fromiter((j.input_gb for j in jobs), np.float64, n),
            output_gb=np.fromiter((j.output_gb for j in jobs), np.float64, n),
            data_location=np.fromiter((code(locations, j.data_location) for j in jobs), np.int64, n),
            data_locations=(),
            preemptible=np.fromiter((j.preemptible for j in jobs), np.bool_, n),
            priority=np.fromiter((j.priority for j in jobs), np.int64, n),
        )._with_names(tuple(experiments), tuple(gpu_models), tuple(locations))

    def _with_names(
        self, experiments: tuple[str, ...], gpu_models: tuple[str, ...], locations: tuple[str, ...]
    ) -> JobTable:
        return JobTable(
            **{
                **{name: getattr(self, name) for name in self.__dataclass_fields__},
                "experiments": experiments,
                "gpu_models": gpu_models,
                "data_locations": locations,
            }
        )


def _bucket(values: FloatArray, edges: FloatArray) -> IntArray:
    """Bucket index per value: the smallest edge at or above it (beyond the last edge: one bucket per ceiling)."""
    index = np.searchsorted(edges, values, side="left")
    if len(values) and values.max() > edges[-1]:
        index = np.where(index >= len(edges), len(edges) + np.ceil(values).astype(np.int64), index)
    return index.astype(np.int64)


def _asked(value: float, edges: FloatArray) -> float:
    """The upper edge of the bucket `value` falls in: what a group of such jobs asks for."""
    index = int(np.searchsorted(edges, value, side="left"))
    return float(edges[index]) if index < len(edges) else float(np.ceil(value))


def _dense(column: IntArray) -> tuple[IntArray, int]:
    """Codes 0..k-1 for the k distinct values of an integer column, in O(n) when their range is small."""
    if len(column) == 0:
        return column, 1
    low, high = int(column.min()), int(column.max())
    if high - low < 1 << 20:
        shifted = column - low
        present = np.bincount(shifted, minlength=high - low + 1) > 0
        rank = np.cumsum(present) - 1
        return rank[shifted], int(present.sum())
    _, inverse = np.unique(column, return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1


DIRECT_KEYS = 1 << 23  # up to this many key combinations, group by counting instead of sorting


def _group_index(table: JobTable) -> tuple[IntArray, int]:
    """Group number per job (0..groups-1) and the number of groups."""
    columns = [
        table.experiment,
        table.cores,
        _bucket(table.memory_gb, MEMORY_EDGES_GB),
        _bucket(table.walltime_hours, WALLTIME_EDGES_HOURS),
        table.arch_mask,
        table.gpus,
        np.where(table.gpus > 0, table.gpu_model, -1),  # a model means nothing for a job that asks no GPU
        table.data_location,
        table.preemptible.astype(np.int64),
        table.priority,
    ]
    key = np.zeros(len(table), dtype=np.int64)
    span = 1
    for column in columns:
        codes, size = _dense(column)
        if span * size >= 1 << 62:  # too many combinations to pack: renumber what we have so far
            key, span = _dense(key)
        key = key * size + codes
        span *= size
    if span > DIRECT_KEYS:
        _, inverse = np.unique(key, return_inverse=True)
        return inverse.astype(np.int64), int(inverse.max()) + 1
    counts = np.bincount(key, minlength=span)
    present = counts > 0
    number = np.cumsum(present) - 1
    return number[key], int(present.sum())


def group_table(table: JobTable) -> list[DemandGroup]:
    """Demand groups of a job table (see the module docstring for what makes a group)."""
    if len(table) == 0:
        return []
    index, count = _group_index(table)
    jobs = np.bincount(index, minlength=count)
    representative = np.zeros(count, dtype=np.int64)
    representative[index] = np.arange(len(table))
    input_total = np.bincount(index, weights=table.input_gb, minlength=count)
    output_total = np.bincount(index, weights=table.output_gb, minlength=count)
    # every job of a group is in the same bucket, so any member tells what the group asks for
    return [
        _group(
            table,
            int(representative[k]),
            int(jobs[k]),
            _asked(float(table.memory_gb[representative[k]]), MEMORY_EDGES_GB),
            _asked(float(table.walltime_hours[representative[k]]), WALLTIME_EDGES_HOURS),
            float(input_total[k]),
            float(output_total[k]),
        )
        for k in range(count)
    ]


def _text(value: str) -> str:
    """A name inside an id: the characters the id uses as separators or markers are percent-encoded."""
    return "".join(f"%{ord(c):02X}" if c in "%:*+" else c for c in value)


def _number(value: float) -> str:
    """A bucket edge inside an id: integers without a decimal point, anything else exactly (repr round-trips)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def demand_group_id(
    experiment: str,
    cores: int,
    memory_gb: float,
    walltime_hours: float,
    archs: frozenset[Arch],
    gpus: int,
    gpu_model: str | None,
    data_location: str | None,
    preemptible: bool,
    priority: int,
) -> str:
    """The id of the group with this grouping key: a different key always gives a different id.

    Readable (`atlas:8c:16g:12h:x86_64:nodata:pre:p0`) and injective: names are escaped, numbers exact,
    the GPU part starts with a digit, a data location is marked `in=` so it never reads as `nodata`.
    """
    arch_part = "+".join(sorted(a.value for a in archs)) or "noarch"
    gpu_part = f":{gpus}x{'*' if gpu_model is None else _text(gpu_model)}" if gpus else ""
    location_part = "nodata" if data_location is None else f"in={_text(data_location)}"
    return (
        f"{_text(experiment)}:{cores}c:{_number(memory_gb)}g:{_number(walltime_hours)}h:{arch_part}{gpu_part}"
        f":{location_part}:{'pre' if preemptible else 'std'}:p{priority}"
    )


def _group(
    table: JobTable, i: int, jobs: int, memory: float, walltime: float, input_gb: float, output_gb: float
) -> DemandGroup:
    experiment = table.experiments[int(table.experiment[i])]
    mask = int(table.arch_mask[i])
    archs = frozenset(a for a, bit in ARCH_BITS.items() if mask & bit)
    gpus = int(table.gpus[i])
    model = table.gpu_models[int(table.gpu_model[i])] if gpus and table.gpu_model[i] >= 0 else None
    location = table.data_locations[int(table.data_location[i])] if table.data_location[i] >= 0 else None
    preemptible = bool(table.preemptible[i])
    priority = int(table.priority[i])
    cores = int(table.cores[i])
    group_id = demand_group_id(
        experiment, cores, memory, walltime, archs, gpus, model, location, preemptible, priority
    )
    return DemandGroup(
        id=group_id,
        experiment=experiment,
        jobs=jobs,
        cores_per_job=cores,
        memory_gb_per_job=memory,
        walltime_hours=walltime,
        archs=archs,
        gpus_per_job=gpus,
        gpu_model=model,
        input_gb_per_job=input_gb / jobs,
        output_gb_per_job=output_gb / jobs,
        data_location=location,
        preemptible=preemptible,
        priority=priority,
    )


def group_jobs(jobs: Sequence[PendingJob]) -> list[DemandGroup]:
    """Group a (small) list of pending jobs; for millions, build a `JobTable` directly and call `group_table`."""
    return group_table(JobTable.from_jobs(jobs))
