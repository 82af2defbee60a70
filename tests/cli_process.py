"""Running `provisioner …` as the operator does: its own process, and an environment of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def isolated_env(state: Path, *, columns: int = 400) -> dict[str, str]:
    """This environment without the developer's PROVISIONER_* settings, with `state` as the state
    directory; COLUMNS wide enough that tables are not wrapped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    return env | {"PROVISIONER_STATE_DIR": str(state), "COLUMNS": str(columns), "PYTHONPATH": str(REPO)}


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`provisioner ARGS` in a subprocess; its exit code and output, whatever they are."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
