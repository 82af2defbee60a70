"""Run moto_server with EC2 tag look-ups indexed by resource id (moto 5.2 scans every tag per instance).

moto's `TaggedEC2Resource.get_tags` answers "tags of this instance" by scanning all tags of all
resources, which makes a tag filter over n instances O(n²): measured, a tag-filtered
`describe_instances` matching nothing took 0.9 s at 1,000 instances and 7.2 s at 3,000.
This launcher replaces that one look-up with the dict access it stands for and otherwise runs
moto's own server unchanged:
`python -m tests.aws.moto_indexed -H 127.0.0.1 -p PORT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Three real AMIs (x86_64 Amazon Linux, x86_64 Deep Learning, arm64 AL2022), copied into moto_amis.json
# from moto 5.2.1's moto/ec2/resources/amis.json.gz (Apache-2.0).
# moto checks every launched instance against all known AMIs, so a short list (MOTO_AMIS_PATH)
# instead of its ~1,200 default images makes launching thousands of instances ~30x faster.
MOTO_AMIS = Path(__file__).with_name("moto_amis.json")
AMIS = {
    "x86_64": "ami-760aaa0f",
    "gpu_x86_64": "ami-999844e0",
    "arm64": "ami-0e9271c829888680e",
}


def _indexed_get_tags(self: Any) -> list[dict[str, str]]:
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    resource_id = getattr(self, "id", None)
    if not resource_id:
        return []
    tags = self.ec2_backend.tags.get(resource_id, {})
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()
    ]


def install() -> None:
    """Patch moto in this process (call before the server starts)."""
    from moto.ec2.models.core import TaggedEC2Resource

    TaggedEC2Resource.get_tags = _indexed_get_tags  # type: ignore[method-assign]


def start_moto(port: int, stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start moto_server on 127.0.0.1:port with the short AMI list.

    PROVISIONER_TEST_MOTO_STOCK=1 runs the `moto_server` entry point as installed; by default the
    same server with the tag look-up indexed (this module).
    """
    env = {**os.environ, "MOTO_AMIS_PATH": str(MOTO_AMIS)}
    if os.environ.get("PROVISIONER_TEST_MOTO_STOCK"):
        cmd = ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [sys.executable, "-m", "tests.aws.moto_indexed", "-H", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    install()
    from moto.server import main

    main()
