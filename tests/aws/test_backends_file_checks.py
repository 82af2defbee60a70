"""The backends file refuses what would fail later (or never): infinite timeouts, region typos, missing
credentials files; and admission prices only the regions the file configures."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.admission import admit_spec
from provisioner.backend_config import BackendConfigError, load_backends
from provisioner.broker import build_broker
from provisioner.catalog import load_catalog
from provisioner.requests import BurstRequestSpec
from provisioner.settings import Settings


def test_infinite_timeout_region_typo_and_missing_credentials_file_are_each_named(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(
        f"""
[aws]
kind = "aws"
read_timeout_s = inf
connect_timeout_s = nan
credentials_file = "{tmp_path / "absent-credentials"}"
regions = [{{ region = "us-eats-1" }}, {{ region = "eu-west-1" }}]

[gce]
kind = "gce"
project = "p"
zones = ["us-centrall-a"]
"""
    )
    with pytest.raises(BackendConfigError) as err:
        load_backends(path, broker_id="b", catalog=load_catalog().offerings, site_offerings=())
    problems = err.value.problems
    assert "[aws] read_timeout_s: inf is not a finite number" in problems
    assert "[aws] connect_timeout_s: nan is not a finite number" in problems
    assert any(p.startswith("[aws] credentials_file:") and "does not exist" in p for p in problems)
    assert (
        "[aws] regions[0].region: 'us-eats-1' is not a aws region the catalog knows; did you mean 'us-east-1'?"
        in problems
    )
    assert not any("regions[1]" in p for p in problems)  # eu-west-1 is real
    assert any(p.startswith("[gce] zones[0]: 'us-centrall'") and "us-central1" in p for p in problems)


def test_a_timeout_longer_than_a_day_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text('[aws]\nkind = "aws"\nread_timeout_s = 1e308\nregions = [{ region = "us-east-1" }]\n')
    with pytest.raises(BackendConfigError) as err:
        load_backends(path, broker_id="b", catalog=load_catalog().offerings, site_offerings=())
    assert any(p.startswith("[aws] read_timeout_s: 1e+308 s is not a timeout") for p in err.value.problems)


def test_admission_prices_only_the_regions_the_backends_file_configures(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[broker]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = x\n")
    path = tmp_path / "backends.toml"
    path.write_text(
        f'[aws]\nkind = "aws"\nprofile = "broker"\ncredentials_file = "{credentials}"\n'
        'endpoint_url = "http://127.0.0.1:9"\nregions = [{ region = "us-east-1" }]\n'
    )
    broker = build_broker(
        Settings(state_dir=tmp_path / "state", broker_id="regions-test", backends_file=path)
    )
    aws = {o.region for o in broker.offerings.values() if o.backend == "aws"}
    assert aws == {"us-east-1"}
    assert not any(o.backend == "gce" for o in broker.offerings.values())  # not configured at all
    admitted = admit_spec(broker, BurstRequestSpec(experiment="atlas", cores=64, duration_hours=2))
    assert all(
        o.startswith(("aws:us-east-1:", "perlmutter", "maxwell", "polaris")) for o in admitted.offerings
    ), admitted.admission.reason
