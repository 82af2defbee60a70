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


def _fail_with_a_token_in_locals() -> None:
    pilot_token = "tok-planted-in-locals-91c3"  # noqa: F841 - a local a traceback renderer could show
    user_data = "#!/bin/bash\nexport PILOT_TOKEN=tok-planted-in-user-data-77a1\n"
    raise RuntimeError(f"create failed for user data {user_data!r}")


@pytest.mark.parametrize("json_mode", [False, True])
def test_tracebacks_are_kept_redacted_and_never_show_local_variables(
    monkeypatch: pytest.MonkeyPatch, json_mode: bool
) -> None:
    configure_logging("INFO", json=json_mode)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    try:
        _fail_with_a_token_in_locals()
    except RuntimeError:
        structlog.get_logger().exception("cycle.failed")
    text = out.getvalue()
    assert "Traceback" in text and "_fail_with_a_token_in_locals" in text and "RuntimeError" in text
    assert "tok-planted-in-locals-91c3" not in text
    assert "tok-planted-in-user-data-77a1" not in text
    if json_mode:
        import json

        assert "Traceback" in json.loads(text.strip().splitlines()[-1])["exception"]


def test_standard_library_logging_is_redacted_like_structlog(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from provisioner.logs import register_secret

    configure_logging("DEBUG")
    register_secret("s3cr3t-registered-value-5d")
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    botocore = logging.getLogger("botocore.endpoint")
    botocore.debug(
        "Making request with params: %s",
        {
            "headers": {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAZZTESTKEY0000099/20261130/us-east-1"},
            "body": {"Action": "RunInstances", "UserData": "IyEvYmluL2Jhc2gKZXhwb3J0IFRPS0VOPXg="},
        },
    )
    logging.getLogger("urllib3").warning("retrying with s3cr3t-registered-value-5d")
    logging.getLogger("httpx").info("GET https://ops:hunter2pass@example.org/x")
    text = out.getvalue()
    assert "Making request" in text and "retrying" in text
    for planted in ("AKIAZZTESTKEY0000099", "IyEvYmluL2Jhc2gKZXhwb3J0IFRPS0VOPXg", "s3cr3t-registered-value-5d", "hunter2pass"):
        assert planted not in text
    logging.getLogger().setLevel(logging.WARNING)
