"""A planted secret (AWS key, secret key, pilot token in user data) never reaches any output of
`provisioner run` at DEBUG, in console or JSON mode, nor the database; tracebacks stay (redacted)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.aws.conftest import KEY_ID, SECRET, aws_backends_table
from tests.cli_process import run_cli

pytestmark = pytest.mark.moto

ROOT = Path(__file__).resolve().parents[2]
PILOT_TOKEN = "plantedPilotTok3n-8f3a9c71d2"
USER_DATA = f"#!/bin/bash\nexport PILOT_TOKEN={PILOT_TOKEN}\nexec /opt/pilot/run\n"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(args, env, timeout=180)


@pytest.mark.parametrize("json_logs", [False, True])
def test_provisioner_run_at_debug_never_writes_a_planted_secret(
    tmp_path: Path, moto: str, amis: dict[str, str], credentials_file: Path, json_logs: bool
) -> None:
    backends = tmp_path / "backends.toml"
    backends.write_text(aws_backends_table(moto, amis, credentials_file, user_data=json.dumps(USER_DATA)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PROVISIONER_STATE_DIR": str(tmp_path / "state"),
            "PROVISIONER_BROKER_ID": "broker-secrets-test",
            "PROVISIONER_BACKENDS_FILE": str(backends),
            "PROVISIONER_LOG_LEVEL": "DEBUG",
            "PROVISIONER_LOG_JSON": "true" if json_logs else "false",
        }
    )
    made = _cli(["request", "create", "--experiment", "atlas", "--cores", "16", "--duration", "2h"], env)
    assert made.returncode == 0, made.stderr[-3000:]
    ran = _cli(["run", "--cycles", "2", "--interval", "1"], env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    output = ran.stdout + ran.stderr + made.stdout + made.stderr
    assert "RunInstances" in output  # botocore really logged the request at DEBUG
    database = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*.db*"))
    planted = [
        KEY_ID,
        SECRET,
        PILOT_TOKEN,
        base64.b64encode(USER_DATA.encode()).decode()[:40],
        base64.b64encode(USER_DATA.encode()).decode()[40:80],
    ]
    for secret in planted:
        assert secret not in output, f"{secret[:6]}… appeared in the output"
        assert secret.encode() not in database
