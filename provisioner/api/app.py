"""The FastAPI app factory: builds the broker in the app's lifespan, wires metrics to its bus, mounts the routers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import structlog
from fastapi import Depends, FastAPI

from provisioner import console
from provisioner.api.auth import AUTH_RESPONSES, Authenticator
from provisioner.api.body_limit import MAX_BODY_BYTES, BodyLimit
from provisioner.api.context import ApiContext, ApiSettings
from provisioner.api.errors import install_error_handlers
from provisioner.api.routes import (
    drain,
    events,
    health,
    heartbeats,
    offerings,
    plan,
    policy,
    requests,
    resources,
)
from provisioner.api.strict_query import no_unknown_query
from provisioner.api.tokens import TokenValidator
from provisioner.broker import Broker
from provisioner.budget_alerts import BudgetAlerter, watch_budgets
from provisioner.catalog import Catalog
from provisioner.metrics import BrokerMetrics

log = structlog.get_logger(__name__)

BrokerFactory = Callable[[], Broker | Awaitable[Broker]]


def create_app(
    broker_factory: BrokerFactory,
    *,
    settings: ApiSettings | None = None,
    run_engine: bool = False,
    engine_interval_seconds: float | None = None,
) -> FastAPI:
    """The API over the broker `broker_factory` builds (sync or async) when the app starts.

    `settings`: the API's own (default: from PROVISIONER_API_* environment variables).
    `run_engine`: also run the decision engine loop in this process, so the API, the engine and
    the metrics share one in-process bus. The app owns the broker: it closes its bus and
    database on shutdown.
    """
    api_settings = settings if settings is not None else ApiSettings()
    auth_config = api_settings.auth_config()  # a broken auth file stops the start, never opens the API

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = broker_factory()
        broker = await built if inspect.isawaitable(built) else built
        metrics = BrokerMetrics(broker.db, now=broker.clock.now)
        budgets = BudgetAlerter(broker.store, metrics.registry, api_settings.budget_alert_threshold)
        context = ApiContext(broker, Catalog(broker.offerings.values()), metrics, budgets)
        app.state.context = context
        validator = TokenValidator(auth_config, broker.clock) if auth_config.issuers else None
        app.state.auth = Authenticator(auth_config, validator, operator_token=api_settings.required_token())
        if app.state.auth.open:
            log.warning("api.open", detail="no authentication configured: every caller has every scope")
        bus = broker.store.bus
        if bus is not None:
            await metrics.attach(bus)
        stop = asyncio.Event()
        engine_task: asyncio.Task[None] | None = None
        if run_engine:
            if engine_interval_seconds is not None:
                broker.engine.settings = replace(
                    broker.engine.settings, interval_seconds=engine_interval_seconds
                )
            engine_task = asyncio.create_task(broker.engine.run_forever(stop), name="engine")
        budget_task: asyncio.Task[None] | None = None
        if api_settings.budget_check_seconds > 0:
            budget_task = asyncio.create_task(
                watch_budgets(budgets, broker, stop, api_settings.budget_check_seconds), name="budgets"
            )
        log.info("api.started", engine=run_engine, auth=not app.state.auth.open)
        try:
            yield
        finally:
            stop.set()
            if engine_task is not None:
                await engine_task
            if budget_task is not None:
                await budget_task
            await metrics.detach()
            if bus is not None:
                await bus.close()
            broker.db.dispose()
            if validator is not None:
                validator.close()

    app = FastAPI(
        title="provisioner",
        summary="Provisioning broker for research computing: HPC allocations, cloud VMs and backfill.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    for module in (requests, offerings, plan, resources, drain, heartbeats, events, policy):
        app.include_router(module.router, responses=AUTH_RESPONSES, dependencies=[Depends(no_unknown_query)])
    app.include_router(health.router)
    console.install(app)
    return app
