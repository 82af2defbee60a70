"""Logs never carry secrets, and keep working when stderr is swapped (daemons, test capture)."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from provisioner.logs import configure_logging


def test_secret_fields_are_redacted_and_stderr_is_resolved_at_each_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging("INFO")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    structlog.get_logger().info("login", password="hunter2", api_key="AKIA123", user="ops")
    first.close()  # the stream configured first is gone...
    monkeypatch.setattr(sys, "stderr", second)
    structlog.get_logger().info("still here", token="t0ken")  # ...and logging must not break
    out = second.getvalue()
    assert "still here" in out and "t0ken" not in out and "token=***" in out
