"""The cyclic garbage collector held off while the planner runs.

A plan allocates millions of small objects (tuples, dataclasses, numpy array headers) and frees nearly all
of them by reference counting; none form cycles worth collecting mid-plan. Yet each allocation burst
triggers collections, and the older generations hold the whole catalog (39,404 offerings), so a full
collection walks it again: 2.6 % of a one-process plan's samples at 5,000 groups in a py-spy profile
(`benchmarks/planner_scale.py`'s instance). The collector runs again as soon as the plan is done. It is
process-wide: the broker's other threads run without it for the plan's seconds too (they still free by
reference counting; only cycles wait).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block; enabled again after it if it was before (nested: the
    outermost block enables it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
