"""The chaos suite reuses the EC2 fixtures: one moto_server for the session, credentials, AMIs."""

from tests.aws.conftest import amis, credentials_file, moto, moto_server  # noqa: F401
