"""Opt-in contract self-check: every API *response* validated against the vendored spec.

Enabled by ``Emulator(check_contract=True)`` / ``bulkbatch emulator --check-contract``. It uses
openapi-core, an independent reading of the OpenAPI file (the request side uses compiled
fastjsonschema validators, :mod:`.spec`), so a bug in one cannot hide a bug in the other.
It costs a few milliseconds per response, which is why it is off by default.

What counts as a violation (``/_emulator/stats`` → ``contract_violations`` and
``contract_violation_details``, the first 50):

* a 2xx status the spec does not list for the operation (e.g. the ``tutorial`` flavor's 201
  for ``POST /bulk``: that flavor disagrees with the spec on purpose);
* a body that does not match the schema of a documented status.

Error statuses the spec does not list (401, 404 on bulk routes, 409 on cancel, 413, 429,
5xx) are not violations: the spec is a subset that leaves them out
(courier-bulk-api.md §1-2 documents them).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Scope

from bulkbatch.emulator.spec import load_spec

__all__ = ["ContractChecker"]

MAX_DETAILS = 50
SERVER = "https://api.courier.com"  # the spec's only server; requests are matched under it


class ContractChecker:
    """Validates responses with openapi-core and counts the violations."""

    def __init__(self) -> None:
        from openapi_core import OpenAPI

        self._api = OpenAPI.from_dict(load_spec())
        self._lock = threading.Lock()
        self.count = 0
        self.details: list[dict[str, Any]] = []
        self.checked = 0

    def reset(self) -> None:
        with self._lock:
            self.count = self.checked = 0
            self.details = []

    def check(self, scope: Scope, raw: bytes, status: int, body: bytes) -> None:
        from openapi_core.exceptions import OpenAPIError
        from openapi_core.templating.responses.exceptions import ResponseNotFound
        from openapi_core.testing import MockRequest, MockResponse

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        request = MockRequest(
            SERVER,
            scope["method"].lower(),
            scope["path"],
            args={k: v[0] for k, v in query.items()},
            data=raw or None,
            content_type="application/json",
        )
        response = MockResponse(body, status_code=status, content_type="application/json")
        try:
            self._api.validate_response(request, response)
        except ResponseNotFound:
            if 200 <= status < 300:
                self._record(scope, status, f"status {status} is not documented for it")
        except OpenAPIError as exc:
            cause = getattr(exc, "__cause__", None)
            errors = [str(e).split("\n", 1)[0] for e in getattr(cause, "schema_errors", [])]
            self._record(scope, status, "; ".join(errors) or str(exc).split("\n", 1)[0])
        with self._lock:
            self.checked += 1

    def _record(self, scope: Scope, status: int, error: str) -> None:
        with self._lock:
            self.count += 1
            if len(self.details) < MAX_DETAILS:
                self.details.append(
                    {
                        "operation": f"{scope['method']} {scope['path']}",
                        "status": status,
                        "error": error,
                    }
                )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "contract_checked": self.checked,
                "contract_violations": self.count,
                "contract_violation_details": list(self.details),
            }
