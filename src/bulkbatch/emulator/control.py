"""The control plane, kept outside the Courier API's paths (moto's ``/moto-api``).

========================== ================================================================
``GET /_emulator/stats``   counters as JSON (see the package docstring for the keys)
``POST /_emulator/reset``  forget all jobs, users, messages, idempotency records, counters;
                           re-seed the faults and refill the rate-limit bucket
``POST /_emulator/clock``  ``{"advance_seconds": N}`` (0 <= N <= 10 years): move the emulator
                           clock forward (idempotency expiry, ``seconds:T`` progression);
                           returns ``now_ms``
``GET /_emulator/config``  the flavor, routes, progression and fault spec in effect (and
                           the webhook settings, never the secret)
``POST /_emulator/         make every waiting webhook delivery (retries, held-back ones) due
webhooks/flush``           now; returns ``{"pending": N}``; 409 when webhooks are off
========================== ================================================================

No faults or latency apply here. With ``--api-key`` these routes need the same
``Authorization: Bearer KEY`` as the API (401 otherwise), whatever the request's content
type: a browser page cannot reset or read the emulator with a "simple" text/plain POST.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bulkbatch.emulator.handlers import EmulatorState, authorized

__all__ = ["MAX_ADVANCE_SECONDS", "control_routes"]

MAX_ADVANCE_SECONDS = 10 * 365 * 24 * 3600
Handler = Callable[[Request], Awaitable[Response]]


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _bad_clock(detail: str) -> Response:
    return _json(
        {
            "message": f'{detail}; send a JSON body like {{"advance_seconds": 3600}} with a '
            f"finite number from 0 to {MAX_ADVANCE_SECONDS}.",
            "type": "invalid_request_error",
        },
        400,
    )


def control_routes(state: EmulatorState) -> list[Route]:
    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not authorized(state, request.scope):
                return _json({"message": "Unauthorized", "type": "authentication_error"}, 401)
            return await handler(request)

        return endpoint

    async def stats(request: Request) -> Response:
        return _json(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    async def clock(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
            seconds = float(body.get("advance_seconds", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return _bad_clock("The body is not a JSON object with a number advance_seconds")
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_ADVANCE_SECONDS:
            return _bad_clock(f"advance_seconds {seconds!r} is out of range")
        return _json({"now_ms": state.backend.advance_clock(seconds)})

    async def config(request: Request) -> Response:
        backend = state.backend
        return _json(
            {
                "flavor": backend.flavor,
                "routes": backend.routes,
                "progression": str(backend.progression),
                "faults": str(state.faults.spec),
                "auth": state.api_key is not None,
                "check_contract": state.contract is not None,
                "db": backend.path,
                "webhooks": state.webhooks.config.public() if state.webhooks else None,
            }
        )

    async def flush_webhooks(request: Request) -> Response:
        if state.webhooks is None or state.backend.webhooks is None:
            return _json(
                {
                    "message": "Webhooks are off; start the emulator with --webhook-url.",
                    "type": "invalid_request_error",
                },
                409,
            )
        return _json({"pending": state.backend.webhooks.flush()})

    return [
        Route("/_emulator/stats", guarded(stats), methods=["GET"]),
        Route("/_emulator/reset", guarded(reset), methods=["POST"]),
        Route("/_emulator/clock", guarded(clock), methods=["POST"]),
        Route("/_emulator/config", guarded(config), methods=["GET"]),
        Route("/_emulator/webhooks/flush", guarded(flush_webhooks), methods=["POST"]),
    ]
