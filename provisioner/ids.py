"""Where new ids (resources, burst requests, plans) come from: random in production, seeded in a simulation.

A simulation seeded with the same number must make the same decisions byte for byte, and ids take
part in them (they order rows, and a simulated provider's tokens derive from them), so the demo and
the simulator pass a `SeededIds`; everything else gets `RandomIds`.
"""

from __future__ import annotations

import random
import uuid
from typing import Protocol


class IdSource(Protocol):
    """Fresh random-looking hex strings."""

    def hex(self) -> str:
        """32 hex digits, different on every call."""
        ...


class RandomIds:
    """uuid4: unique across processes and restarts, which production needs."""

    def hex(self) -> str:
        return uuid.uuid4().hex


class SeededIds:
    """A reproducible stream: the same seed gives the same ids in the same order."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(f"provisioner-ids:{seed}")

    def hex(self) -> str:
        return f"{self._random.getrandbits(128):032x}"


def resource_id(ids: IdSource) -> str:
    return f"r-{ids.hex()}"


def request_id(ids: IdSource) -> str:
    return f"req-{ids.hex()[:10]}"


def plan_id(ids: IdSource) -> str:
    return f"p-{ids.hex()}"
