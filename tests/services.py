"""Finding the real services tests talk to: skip with a clear message on a laptop, fail in CI.

In CI (`CI=true`) a missing service is an error, never a silent skip.
"""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_missing(name: str, how_to_start: str) -> None:
    """Skip (laptop) or fail (CI) because `name` is not reachable."""
    message = f"{name} is not available: {how_to_start}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)
