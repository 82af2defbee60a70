"""The build script reproduces the bundled catalog from the shared raw data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.catalog_build import EGRESS_FILE, FAMILIES_FILE, MANIFEST_FILE, OFFERINGS_FILE

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "catalog").is_dir(), reason=f"shared raw data not found at {SHARED}")
def test_build_script_reproduces_the_bundled_files_byte_for_byte(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_catalog.py"), str(SHARED), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in (OFFERINGS_FILE, FAMILIES_FILE, EGRESS_FILE, MANIFEST_FILE):
        assert (tmp_path / name).read_bytes() == (REPO / "data" / name).read_bytes(), name


def test_build_refuses_a_directory_without_the_raw_tables(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_catalog.py"),
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "aws_karpenter_instance_types.csv" in result.stderr
    assert not (tmp_path / "o").exists()
