"""The control plane, kept outside the Courier API's paths (moto's ``/moto-api``).

========================== ================================================================
``GET /_emulator/stats``   counters as JSON (see the package docstring for the keys)
``POST /_emulator/reset``  forget all jobs, users, messages, idempotency records, counters;
                           re-seed the faults and refill the rate-limit bucket
``POST /_emulator/clock``  ``{"advance_seconds": N}``: move the emulator clock forward
                           (idempotency expiry, ``seconds:T`` progression); returns ``now_ms``
``GET /_emulator/config``  the progression and fault spec in effect
========================== ================================================================

No faults, latency or auth apply here.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bulkbatch.emulator.handlers import EmulatorState

__all__ = ["control_routes"]


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def control_routes(state: EmulatorState) -> list[Route]:
    async def stats(request: Request) -> Response:
        return _json(state.backend.stats())

    async def reset(request: Request) -> Response:
        state.backend.reset()
        state.faults.reset()
        return _json({"reset": True})

    async def clock(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
            seconds = float(body.get("advance_seconds", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return _json(
                {
                    "message": 'Expected a JSON body like {"advance_seconds": 3600}.',
                    "type": "invalid_request_error",
                },
                400,
            )
        return _json({"now_ms": state.backend.advance_clock(seconds)})

    async def config(request: Request) -> Response:
        return _json(
            {
                "progression": str(state.backend.progression),
                "faults": str(state.faults.spec),
                "auth": state.api_key is not None,
                "db": state.backend.path,
            }
        )

    return [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/clock", clock, methods=["POST"]),
        Route("/_emulator/config", config, methods=["GET"]),
    ]
