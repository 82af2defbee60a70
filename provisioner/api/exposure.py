"""Whether `serve` may listen on an address: beyond loopback only with token issuers configured."""

from __future__ import annotations

import ipaddress

from provisioner.api.context import ApiSettings


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name may resolve anywhere: treat it as beyond loopback


def listen_refusal(host: str, settings: ApiSettings) -> str | None:
    """Why `serve --host host` must not start, or None when it may."""
    if is_loopback(host):
        return None
    if settings.issuers_configured():
        return None
    if settings.authentication_configured():
        return (
            f"refusing to listen on {host}: static tokens are for development on loopback; "
            "configure token issuers in PROVISIONER_API_AUTH_FILE to serve beyond loopback"
        )
    return (
        f"refusing to listen on {host}: no authentication is configured, so anyone could call every "
        "endpoint; configure token issuers in PROVISIONER_API_AUTH_FILE, or listen on 127.0.0.1"
    )
