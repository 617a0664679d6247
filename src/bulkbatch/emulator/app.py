"""The Starlette application: Courier API routes, control routes, JSON 404s."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulkbatch.emulator.backend import Backend, Progression
from bulkbatch.emulator.contract import check_wanted
from bulkbatch.emulator.control import control_routes
from bulkbatch.emulator.faults import EmulatorConfigError, FaultInjector, FaultSpec
from bulkbatch.emulator.handlers import ApiEndpoint, EmulatorState, operations
from bulkbatch.emulator.outbox import Outbox
from bulkbatch.emulator.rules import parse_routes
from bulkbatch.emulator.webhooks import (
    DEFAULT_TIME_SCALE,
    TIMEOUT_S,
    WebhookConfig,
    WebhookSender,
)

__all__ = ["create_app"]


async def _not_found(request: Request, exc: Exception) -> Response:
    # 405s too: Courier answers an unknown method+path (e.g. POST /bulk/{id}/users) with 404.
    return Response(
        orjson.dumps({"message": "Not Found", "type": "invalid_request_error"}),
        404,
        media_type="application/json",
    )


def create_app(
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    faults: str | FaultSpec | None = None,
    progression: str | Progression = "polls:2",
    flavor: str = "current",
    routes: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    check_contract: bool | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_time_scale: float = DEFAULT_TIME_SCALE,
    webhook_timeout: float = TIMEOUT_S,
) -> Starlette:
    """Build the emulator's ASGI app; ``app.state.emulator`` holds its :class:`EmulatorState`.

    :param flavor: ``"current"`` (the OpenAPI file: 200 / 204 / 204) or ``"tutorial"`` (the
        bulk tutorial: 201 / 200 ``{total, errors}`` / 202, and its nested job message)
    :param routes: ``["EVENT=CHANNEL[,CHANNEL]", ...]`` or ``{event: [channels]}``: how each
        event's messages are routed (default: email)
    :param check_contract: validate the responses against the spec (openapi-core) and
        count violations in the stats; ``None``: on when the environment variable
        ``BULKBATCH_EMULATOR_CHECK_CONTRACT`` is ``1``/``true``
    :param webhook_url: POST a signed ``message:updated`` event there for every message
        status change (:mod:`bulkbatch.emulator.webhooks`); the sender thread is started by
        ``app.state.emulator.start()`` (``Emulator`` and ``serve`` do it)
    :param webhook_secret: sign the events with it (``courier-signature``); kept in memory
        only. Without it the events are unsigned, as Courier's are without a secret
    :param webhook_time_scale: multiply Courier's retry delays (and the reorder hold) by it;
        1 = real timing
    :param webhook_timeout: seconds to wait for the receiver's answer (Courier: 10)

    Raises :class:`~bulkbatch.emulator.faults.EmulatorConfigError` for a bad ``faults``,
    ``progression``, ``flavor``, ``routes``, ``db``, webhook setting or an empty ``api_key``.
    """
    if api_key is not None and not api_key.strip():
        raise EmulatorConfigError(
            "the emulator API key is empty, which would accept any request; pass a "
            "non-empty --api-key (or BULKBATCH_EMULATOR_API_KEY), or none to turn auth off"
        )
    spec = FaultSpec.parse(faults)
    parsed = Progression.parse(progression)
    webhook = None
    if webhook_url is not None:
        webhook = WebhookConfig(webhook_url, webhook_secret, webhook_time_scale, webhook_timeout)
    elif webhook_secret is not None:
        raise EmulatorConfigError(
            "a webhook secret without a webhook URL does nothing; pass --webhook-url too"
        )
    backend = Backend(db, parsed, flavor=flavor, routes=parse_routes(routes))
    injector = FaultInjector(spec)
    sender = None
    if webhook is not None:
        backend.webhooks = Outbox(backend, injector, webhook.hold_ms)
        sender = WebhookSender(backend.webhooks, webhook)
    contract = None
    if check_wanted(check_contract):
        from bulkbatch.emulator.contract import ContractChecker

        contract = ContractChecker(backend.flavor)
    state = EmulatorState(
        backend=backend, faults=injector, api_key=api_key, contract=contract, webhooks=sender
    )
    api_routes: list[BaseRoute] = [
        Route(path, ApiEndpoint(state, op), methods=[method]) for method, path, op in operations()
    ]
    api_routes.extend(control_routes(state))
    app = Starlette(
        routes=api_routes,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.state.emulator = state
    return app
