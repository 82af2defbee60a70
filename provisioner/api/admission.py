"""Resources that serve a burst request, for the API's request views (admission lives in provisioner.admission)."""

from __future__ import annotations

from sqlmodel import Session, col, or_, select

from provisioner.broker import Broker
from provisioner.model import ResourceRow


def request_resources(broker: Broker, request_id: str) -> list[ResourceRow]:
    """Resources started for a request: tagged with its id, or serving its demand group."""
    with Session(broker.db, expire_on_commit=False) as session:
        query = (
            select(ResourceRow)
            .where(
                or_(
                    col(ResourceRow.request_id) == request_id,
                    col(ResourceRow.group_id) == f"request:{request_id}",
                )
            )
            .order_by(col(ResourceRow.created_at), col(ResourceRow.id))
        )
        return list(session.exec(query))
