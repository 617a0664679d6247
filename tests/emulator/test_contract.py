"""The response contract check: on for the whole suite, a wrong answer is caught, and the
tutorial flavor's documented answers are deviations rather than violations."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from bulkbatch.emulator import Emulator, contract, emulator_command, handlers
from bulkbatch.emulator.app import create_app
from bulkbatch.emulator.contract import ENV_CHECK, ENV_LOG, drain_violations
from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.spec import load_spec
from tests.emulator.emulator_helpers import API_KEY, all_users, client_for, create_job
from tests.support import EmulatorProcess


@pytest.mark.parametrize("flavor", ["current", "tutorial"])
def test_the_documents_the_check_reads_are_valid_openapi(flavor: str) -> None:
    from openapi_spec_validator import validate

    spec = load_spec()
    validate(contract._tutorial_spec(spec) if flavor == "tutorial" else spec)


def test_the_suite_runs_every_emulator_with_the_check_on() -> None:
    emu = Emulator()
    assert emu.check_contract is True  # from BULKBATCH_EMULATOR_CHECK_CONTRACT (conftest.py)
    assert Emulator(check_contract=False).check_contract is False


def test_the_check_is_off_by_default_outside_the_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CHECK)
    assert Emulator().check_contract is False
    monkeypatch.setenv(ENV_CHECK, "true")
    assert Emulator().check_contract is True


def test_the_emulator_process_reads_the_variable_too() -> None:
    with EmulatorProcess("--flavor", "tutorial") as emu:
        config = httpx_get(emu, "/_emulator/config")
    assert config["check_contract"] is True and config["flavor"] == "tutorial"


def httpx_get(emu: EmulatorProcess, path: str) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {emu.api_key}"}
    return httpx.get(f"{emu.url}{path}", headers=headers, timeout=10).json()


def test_a_deliberately_wrong_response_is_caught(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A handler that drops ``jobId`` is a violation: in the stats, in the process-wide list
    the suite's fixture drains, and in the log file other processes append to."""
    log = tmp_path / "violations.jsonl"
    monkeypatch.setenv(ENV_LOG, str(log))
    monkeypatch.setattr(handlers, "_create_job", lambda backend, call: (200, {"job": "x"}))
    emu = make_emulator(flavor="current", api_key=API_KEY)
    with client_for(emu) as client:
        assert client.post("/bulk", json={"message": {"event": "e"}}).status_code == 200
    stats = emu.stats()
    assert stats["contract_violations"] == 1
    (detail,) = stats["contract_violation_details"]
    assert (detail["operation"], detail["status"]) == ("POST /bulk", 200)
    assert "jobId" in detail["error"]
    (recorded,) = drain_violations()  # drained here, so this test itself passes
    assert recorded["error"] == detail["error"]
    (logged,) = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert logged == recorded


def test_an_undocumented_success_status_is_caught(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "_run", lambda backend, call: (202, None))
    emu = make_emulator(flavor="current", api_key=API_KEY)
    with client_for(emu) as client:
        job = create_job(client)
        assert client.post(f"/bulk/{job}/run").status_code == 202
    assert emu.stats()["contract_violations"] == 1
    (recorded,) = drain_violations()
    assert recorded["error"] == "status 202 is not documented for it"


def test_the_tutorial_answers_are_deviations_validated_against_their_own_shapes(
    make_emulator: Any,
) -> None:
    emu = make_emulator(flavor="tutorial", api_key=API_KEY, progression="immediate")
    with client_for(emu) as client:
        job = create_job(client)
        users = [{"recipient": "a"}, {"recipient": "a"}]
        assert client.post(f"/bulk/{job}", json={"users": users}).status_code == 200
        assert client.post(f"/bulk/{job}/run").status_code == 202
    stats = emu.stats()
    assert stats["contract_flavor_deviations"] == 3
    assert stats["contract_violations"] == 0, stats["contract_violation_details"]


def test_a_wrong_tutorial_answer_is_still_a_violation(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "_ingest", lambda backend, call: (200, {"errors": []}))
    emu = make_emulator(flavor="tutorial", api_key=API_KEY)
    with client_for(emu) as client:
        job = create_job(client)
        client.post(f"/bulk/{job}", json={"users": [{"recipient": "a"}]})
    assert emu.stats()["contract_violations"] == 1
    (recorded,) = drain_violations()
    assert "total" in recorded["error"]


def test_long_runs_are_sampled_but_every_route_is_checked(
    make_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contract, "FIRST_N", 2)
    monkeypatch.setattr(contract, "EVERY_K", 3)
    emu = make_emulator(flavor="current", api_key=API_KEY, progression="immediate")
    with client_for(emu) as client:
        job = create_job(client)
        users = [{"recipient": f"u{i}"} for i in range(5)]
        client.post(f"/bulk/{job}", json={"users": users})
        client.post(f"/bulk/{job}/run")
        for _ in range(8):  # responses 0, 1 (first 2), then 3 and 6 (every 3rd)
            client.get(f"/bulk/{job}")
        assert client.get("/bulk/nope").status_code == 404  # an error status: always
        assert len(all_users(client, job)) == 5
    stats = emu.stats()
    assert stats["contract_checked"] == 3 + 4 + 1 + 1
    assert stats["contract_skipped"] == 4


def test_asking_for_the_check_without_openapi_core_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openapi-core comes with the dev extra only: a runtime install that asks for the check
    is told what to install (not a traceback as the server starts)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openapi_core" else real(name, *a),
    )
    # --port is invalid too: without the check's own error, click would name that instead.
    result = CliRunner().invoke(emulator_command, ["--check-contract", "--port", "x"])
    assert result.exit_code == 2
    assert "needs openapi-core, which is not installed: pip install openapi-core" in result.output


@pytest.mark.parametrize(
    ("keyword", "env", "named"),
    [
        (True, "", "check_contract=True"),
        (None, "1", "BULKBATCH_EMULATOR_CHECK_CONTRACT=1"),
    ],
)
def test_an_emulator_in_process_without_openapi_core_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, keyword: bool | None, env: str, named: str
) -> None:
    """The Python door says it too, naming what asked for the check, when the emulator is
    made (it was a ``ModuleNotFoundError`` as the server started)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openapi_core" else real(name, *a),
    )
    monkeypatch.setenv(ENV_CHECK, env)
    with pytest.raises(EmulatorConfigError) as caught:
        Emulator(check_contract=keyword)
    assert str(caught.value).startswith(f"{named}: validating responses needs openapi-core")
    assert "pip install openapi-core" in str(caught.value)
    with pytest.raises(EmulatorConfigError, match=named):  # serve() and direct use
        create_app(check_contract=keyword)
    monkeypatch.setenv(ENV_CHECK, "")
    assert Emulator(check_contract=False).check_contract is False  # off: nothing to install
