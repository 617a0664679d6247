"""Opt-in contract self-check: API *responses* validated against the vendored spec.

Enabled by ``Emulator(check_contract=True)`` / ``bulkbatch emulator --check-contract``, or
for every emulator a process starts (and its children) by the environment variable
``BULKBATCH_EMULATOR_CHECK_CONTRACT=1`` (the default of both). It uses openapi-core, an
independent reading of the OpenAPI file (the request side uses compiled fastjsonschema
validators, :mod:`.spec`), so a bug in one cannot hide a bug in the other. It costs
milliseconds per response (a 100-row ``GET /bulk/{id}/users`` page ~12 ms), which is why it
is off by default and why long runs are *sampled*: the first :data:`FIRST_N` responses of
every route (per emulator) are validated, then every :data:`EVERY_K`-th. Every error status
and every 2xx status not seen before on a route is always validated.

What counts as a violation (``/_emulator/stats`` → ``contract_violations`` and
``contract_violation_details``, the first 50):

* a 2xx status the spec does not list for the operation;
* a body that does not match the schema of a documented status.

The ``tutorial`` flavor disagrees with the spec on purpose for three answers (``POST /bulk``
201, ``POST /bulk/{id}`` 200 ``{total, errors}``, ``POST /bulk/{id}/run`` 202). For that
flavor they are validated against the tutorial's documented shapes (:data:`TUTORIAL_ANSWERS`)
and counted in ``contract_flavor_deviations``, not as violations; every other response is held
to the spec.

Error statuses the spec does not list (401, 404 on bulk routes, 409 on cancel, 413, 429,
5xx) are not violations: the spec is a subset that leaves them out
(courier-bulk-api.md §1-2 documents them).

Every violation is also recorded process-wide (:func:`drain_violations`) and, when
``BULKBATCH_EMULATOR_CONTRACT_LOG`` names a file, appended to it as one JSON line (with the
process id), so a test harness can fail the test that caused it, emulator subprocesses too.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import threading
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Scope

from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.spec import load_spec

__all__ = [
    "ENV_CHECK",
    "ENV_LOG",
    "EVERY_K",
    "FIRST_N",
    "TUTORIAL_ANSWERS",
    "ContractChecker",
    "check_wanted",
    "default_check_contract",
    "drain_violations",
    "require_checker",
]

ENV_CHECK = "BULKBATCH_EMULATOR_CHECK_CONTRACT"
ENV_LOG = "BULKBATCH_EMULATOR_CONTRACT_LOG"
MAX_DETAILS = 50
SERVER = "https://api.courier.com"  # the spec's only server; requests are matched under it
# Sampling per route and emulator: all of the first FIRST_N responses, then every EVERY_K-th.
FIRST_N = 50
EVERY_K = 10

_JSON = "application/json"
# (method, path, status) -> response object: the tutorial flavor's documented answers
# (courier-bulk-api.md §0.2, §2.1-2.3), added to the spec for that flavor only.
TUTORIAL_ANSWERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("post", "/bulk", "201"): {
        "description": "tutorial: 201 {jobId}",
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/BulkCreateJobResponse"}}},
    },
    ("post", "/bulk/{job_id}", "200"): {
        "description": "tutorial: 200 {total, errors} (cumulative total)",
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["total"],
                    "properties": {
                        "total": {"type": "integer", "minimum": 0},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["user", "error"],
                                "properties": {"user": {}, "error": {"type": "string"}},
                            },
                        },
                    },
                }
            }
        },
    },
    ("post", "/bulk/{job_id}/run", "202"): {"description": "tutorial: 202, no body"},
}

_TRUE = ("1", "true", "yes", "on")
_sink_lock = threading.Lock()
_violations: list[dict[str, Any]] = []


def default_check_contract() -> bool:
    """The default of ``check_contract``: ``BULKBATCH_EMULATOR_CHECK_CONTRACT`` is 1/true."""
    return os.environ.get(ENV_CHECK, "").strip().lower() in _TRUE


def require_checker(asked_by: str) -> None:
    """Raise :class:`EmulatorConfigError` unless openapi-core, which only the dev extra
    installs, can be imported: one line saying what to install, rather than a
    ``ModuleNotFoundError`` as the server starts. ``asked_by`` names what asked for the check
    (a flag, a keyword, the environment variable)."""
    if importlib.util.find_spec("openapi_core") is None:
        raise EmulatorConfigError(
            f"{asked_by}: validating responses needs openapi-core, which is not installed: "
            "pip install openapi-core (or 'bulkbatch[dev]'), or leave the check off."
        )


def check_wanted(check_contract: bool | None) -> bool:
    """``check_contract`` resolved (None: :data:`ENV_CHECK` decides); when the check is on,
    openapi-core must be importable (:func:`require_checker`)."""
    wanted = default_check_contract() if check_contract is None else check_contract
    if wanted:
        require_checker("check_contract=True" if check_contract else f"{ENV_CHECK}=1")
    return wanted


def drain_violations() -> list[dict[str, Any]]:
    """Every violation any checker in this process recorded since the last drain."""
    with _sink_lock:
        out = list(_violations)
        _violations.clear()
    return out


def _publish(detail: dict[str, Any]) -> None:
    record = {**detail, "pid": os.getpid()}
    with _sink_lock:
        _violations.append(record)
        path = os.environ.get(ENV_LOG)
        if path:
            with open(path, "ab") as f:
                f.write(orjson.dumps(record) + b"\n")


def _tutorial_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the tutorial flavor answers: its three bulk answers added, and what that
    flavor accepts on purpose allowed back in the answers that echo it: a job message without
    ``event`` (``GET /bulk/{id}`` → ``definition``), and a user whose ``profile`` or ``to`` is
    not an object (``GET /bulk/{id}/users``; the backend stores it and the user ends ERROR)."""
    spec = copy.deepcopy(spec)
    for (method, path, status), answer in TUTORIAL_ANSWERS.items():
        spec["paths"][path][method]["responses"][status] = answer
    schemas = spec["components"]["schemas"]
    schemas["InboundBulkMessage"].pop("required", None)
    user = copy.deepcopy(schemas["InboundBulkMessageUser"])
    user["properties"].update(profile={}, to={})
    schemas["TutorialBulkMessageUser"] = user
    schemas["BulkMessageUserResponse"]["allOf"] = [
        {"$ref": "#/components/schemas/TutorialBulkMessageUser"}
    ]
    return spec


@functools.cache
def _openapi(flavor: str) -> Any:
    """openapi-core's reading of the spec for a flavor, built once per process (~0.4 s, the
    import). The vendored file is not re-validated as OpenAPI here (~0.1 s per process):
    ``tests/emulator/test_contract.py`` validates both flavors' documents once."""
    from openapi_core import Config, OpenAPI

    spec = load_spec()
    spec = _tutorial_spec(spec) if flavor == "tutorial" else spec
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


class ContractChecker:
    """Validates responses with openapi-core and counts the violations."""

    def __init__(self, flavor: str = "current") -> None:
        self.flavor = flavor
        self._api = _openapi(flavor)
        self._lock = threading.Lock()
        self.count = 0
        self.details: list[dict[str, Any]] = []
        self.checked = 0
        self.deviations = 0
        self.skipped = 0
        self._seen: dict[str, int] = {}
        self._statuses: set[tuple[str, int]] = set()

    def reset(self) -> None:
        with self._lock:
            self.count = self.checked = self.deviations = self.skipped = 0
            self.details = []
            self._seen.clear()
            self._statuses.clear()

    def skip(self) -> None:
        """Count a response that is deliberately not validated (see :meth:`check`)."""
        with self._lock:
            self.skipped += 1

    def _sampled(self, route: str, status: int) -> bool:
        """True when this response is one to validate (see the module docstring)."""
        with self._lock:
            n = self._seen.get(route, 0)
            self._seen[route] = n + 1
            new_status = (route, status) not in self._statuses
            self._statuses.add((route, status))
        return status >= 300 or new_status or n < FIRST_N or n % EVERY_K == 0

    def check(self, scope: Scope, raw: bytes, status: int, body: bytes, route: str = "") -> None:
        """Validate one response; ``route`` is the spec path (the sampling key)."""
        method = scope["method"].lower()
        if not self._sampled(f"{method} {route or scope['path']}", status):
            self.skip()
            return
        from openapi_core.exceptions import OpenAPIError
        from openapi_core.templating.responses.exceptions import ResponseNotFound
        from openapi_core.testing import MockRequest, MockResponse

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        request = MockRequest(
            SERVER,
            method,
            scope["path"],
            args={k: v[0] for k, v in query.items()},
            data=raw or None,
            content_type=_JSON,
        )
        response = MockResponse(body, status_code=status, content_type=_JSON)
        try:
            self._api.validate_response(request, response)
        except ResponseNotFound:
            if 200 <= status < 300:
                self._record(scope, status, f"status {status} is not documented for it")
        except OpenAPIError as exc:
            cause = getattr(exc, "__cause__", None)
            errors = [str(e).split("\n", 1)[0] for e in getattr(cause, "schema_errors", [])]
            self._record(scope, status, "; ".join(errors) or str(exc).split("\n", 1)[0])
        deviation = self.flavor == "tutorial" and (method, route, str(status)) in TUTORIAL_ANSWERS
        with self._lock:
            self.checked += 1
            self.deviations += deviation

    def _record(self, scope: Scope, status: int, error: str) -> None:
        detail = {
            "operation": f"{scope['method']} {scope['path']}",
            "status": status,
            "error": error,
            "flavor": self.flavor,
        }
        with self._lock:
            self.count += 1
            if len(self.details) < MAX_DETAILS:
                self.details.append(detail)
        _publish(detail)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "contract_checked": self.checked,
                "contract_violations": self.count,
                "contract_violation_details": list(self.details),
                "contract_skipped": self.skipped,
                "contract_flavor_deviations": self.deviations,
            }
