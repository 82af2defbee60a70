"""The web console: server-rendered pages for operators, experiments and finance, behind the API's tokens."""

from provisioner.console.routes import install

__all__ = ["install"]
