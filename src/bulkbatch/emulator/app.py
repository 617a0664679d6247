"""The Starlette application: Courier API routes, control routes, JSON 404s."""

from __future__ import annotations

import os

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulkbatch.emulator.backend import Backend, Progression
from bulkbatch.emulator.control import control_routes
from bulkbatch.emulator.faults import FaultInjector, FaultSpec
from bulkbatch.emulator.handlers import ApiEndpoint, EmulatorState, operations

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
) -> Starlette:
    """Build the emulator's ASGI app; ``app.state.emulator`` holds its :class:`EmulatorState`.

    Raises :class:`~bulkbatch.emulator.faults.EmulatorConfigError` for a bad ``faults`` or
    ``progression`` value.
    """
    spec = FaultSpec.parse(faults)
    parsed = Progression.parse(progression)
    state = EmulatorState(backend=Backend(db, parsed), faults=FaultInjector(spec), api_key=api_key)
    routes: list[BaseRoute] = [
        Route(path, ApiEndpoint(state, op), methods=[method]) for method, path, op in operations()
    ]
    routes.extend(control_routes(state))
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.state.emulator = state
    return app
