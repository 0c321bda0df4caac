"""Webhook subscriptions and dead letters under /api/v1/webhooks (Standard Webhooks signatures)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from quaygate.routing import AdmitFirst
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.parties import Actor
from release_service.domain.webhooks import Delivery, Subscription
from release_service.services import webhooks as svc

from .auth import require
from .problems import problem_responses

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=AdmitFirst)
MANAGE = require("releases:write", member="act")
ERRORS = problem_responses(400, 401, 403, 404, 409, 422)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, examples=["https://hooks.example.com/quaygate"])
    event_types: list[str] = Field(min_length=1, max_length=50, examples=[["release.*"]])


class CreatorOut(BaseModel):
    client_id: str = Field(description="The client it was made with.")
    person_id: uuid.UUID | None = Field(description="The person who made it in a console; null for a machine "
                                        "client. Closed when his acting role there ends or he is suspended.")


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime
    created_by: CreatorOut | None = Field(description="Who made it; null for one made before this was kept.")
    secret: str | None = Field(default=None, description="Shown once, on create and on rotate (whsec_...).")


class DeliveryOut(BaseModel):
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


def _sub(s: Subscription, secret: str | None = None) -> dict[str, Any]:
    creator = None if s.created_by_client_id is None else {
        "client_id": s.created_by_client_id,
        "person_id": str(s.created_by_person_id) if s.created_by_person_id else None}
    return {"id": str(s.id), "url": s.url, "event_types": list(s.event_types), "active": s.active,
            "created_at": s.created_at.isoformat(), "created_by": creator, "secret": secret}


def _delivery(d: Delivery) -> dict[str, Any]:
    return {"id": str(d.id), "subscription_id": str(d.subscription_id), "event_id": str(d.event_id),
            "event_type": d.event_type, "status": d.status, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at.isoformat(), "last_error": d.last_error}


# An answer that carries a secret is kept by no cache (RFC 9111 §5.2.2.5), as the token endpoint's and the
# client registration's are (review 171).
NO_STORE = "no-store"


def _uow(request: Request) -> SqlUnitOfWork:
    return SqlUnitOfWork(request.app.state.container.engine)


@router.post("", operation_id="createWebhookSubscription", status_code=201, response_model=SubscriptionOut,
             responses=ERRORS)
def create(request: Request, body: SubscriptionIn, response: Response,
           actor: Actor = Depends(MANAGE)) -> dict[str, Any]:
    c = request.app.state.container
    response.headers["Cache-Control"] = NO_STORE
    sub, secret = svc.create_subscription(_uow(request), c.cipher, actor, url=body.url,
                                          event_types=body.event_types, now=c.clock.now(),
                                          allow_insecure_localhost=c.settings.local_webhooks)
    return _sub(sub, secret)


@router.get("", operation_id="listWebhookSubscriptions", response_model=list[SubscriptionOut],
            responses=problem_responses(401, 403))
def list_all(request: Request, actor: Actor = Depends(MANAGE)) -> list[dict[str, Any]]:
    return [_sub(s) for s in svc.list_subscriptions(_uow(request), actor.organisation_id)]


@router.delete("/{subscription_id}", operation_id="deleteWebhookSubscription", status_code=204, responses=ERRORS)
def delete(request: Request, subscription_id: uuid.UUID, actor: Actor = Depends(MANAGE)) -> Response:
    svc.delete_subscription(_uow(request), actor, subscription_id, now=request.app.state.container.clock.now())
    return Response(status_code=204)


@router.post("/{subscription_id}/rotate-secret", operation_id="rotateWebhookSecret",
             response_model=SubscriptionOut, responses=ERRORS)
def rotate(request: Request, subscription_id: uuid.UUID, response: Response,
           actor: Actor = Depends(MANAGE)) -> dict[str, Any]:
    c = request.app.state.container
    response.headers["Cache-Control"] = NO_STORE
    sub, secret = svc.rotate_secret(_uow(request), c.cipher, actor, subscription_id,
                                    now=c.clock.now())
    return _sub(sub, secret)


@router.get("/dead-letters", operation_id="listWebhookDeadLetters", response_model=list[DeliveryOut],
            responses=problem_responses(401, 403))
def dead_letters(request: Request, actor: Actor = Depends(MANAGE)) -> list[dict[str, Any]]:
    return [_delivery(d) for d in svc.list_dead_letters(_uow(request), actor.organisation_id)]


@router.post("/dead-letters/{delivery_id}/redeliver", operation_id="redeliverWebhook",
             response_model=DeliveryOut, responses=ERRORS)
def redeliver(request: Request, delivery_id: uuid.UUID, actor: Actor = Depends(MANAGE)) -> dict[str, Any]:
    c = request.app.state.container
    return _delivery(svc.redeliver(_uow(request), actor, delivery_id, now=c.clock.now()))
