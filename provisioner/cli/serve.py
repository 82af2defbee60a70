"""`provisioner serve`: the REST API and /metrics over uvicorn, optionally with the engine loop in the same process."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    @root.command("serve")
    def serve_cmd(
        host: str = typer.Option("127.0.0.1", help="address to listen on"),
        port: int = typer.Option(8080, min=1, max=65535, help="TCP port"),
        engine: bool = typer.Option(
            False, "--engine/--no-engine", help="also run the decision engine loop in this process"
        ),
        interval: float = typer.Option(60.0, min=1, help="seconds between engine cycles (with --engine)"),
    ) -> None:
        """Serve the REST API (OpenAPI docs at /docs) and Prometheus metrics at /metrics.

        PROVISIONER_API_AUTH_FILE names the trusted token issuers and the group → experiment mapping;
        PROVISIONER_API_TOKEN is one static operator token for development. With neither, the API is
        open, so it listens on loopback only: beyond loopback it needs token issuers configured.
        Without --engine, metrics see another process's events only through MQTT (PROVISIONER_MQTT_URL).
        """
        import uvicorn

        from provisioner.api import create_app
        from provisioner.api.auth_config import AuthConfigError
        from provisioner.api.context import ApiSettings
        from provisioner.api.exposure import listen_refusal
        from provisioner.broker import Broker, build_broker
        from provisioner.bus import open_bus
        from provisioner.settings import load_settings

        settings = load_settings()
        try:
            api_settings = ApiSettings()
            refusal = listen_refusal(host, api_settings)
        except AuthConfigError as exc:
            refusal = f"cannot read the auth configuration: {exc}"
        if refusal is not None:
            typer.echo(refusal, err=True)
            raise typer.Exit(2)

        async def broker() -> Broker:
            bus = await open_bus(settings.mqtt_url, settings.broker_id)
            return build_broker(settings, bus=bus)

        app = create_app(broker, settings=api_settings, run_engine=engine, engine_interval_seconds=interval)
        # uvicorn's access log writes method, path and status, never request headers (the token).
        uvicorn.run(app, host=host, port=port, log_level="info")
