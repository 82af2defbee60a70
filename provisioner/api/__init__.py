"""The broker's REST API (FastAPI): burst requests, offerings, plans, resources, events, health and metrics."""

from provisioner.api.app import create_app

__all__ = ["create_app"]
