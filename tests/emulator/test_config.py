"""Parsing of fault specs, progressions and x-idempotency-expiration; the token bucket."""

from __future__ import annotations

import pytest

from bulkbatch.emulator import Emulator, EmulatorConfigError, FaultSpec, create_app
from bulkbatch.emulator.backend import (
    DAY_MS,
    YEAR_MS,
    Progression,
    ValidationError,
    parse_expiration,
)
from bulkbatch.emulator.faults import Decision, FaultInjector, TokenBucket

NOW = 1_800_000_000_000


def test_fault_spec_parses_every_key() -> None:
    spec = FaultSpec.parse(
        "rate_limit=50, error_rate=0.05,drop_rate=0.01,latency_ms=20,max_users_per_call=500,seed=7"
    )
    assert spec == FaultSpec(50.0, 0.05, 0.01, 20.0, 500, 7)
    assert FaultSpec.parse(None) == FaultSpec.parse("") == FaultSpec()
    assert FaultSpec().max_users_per_call == 1000


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nope=1", "unknown fault key 'nope'"),
        ("error_rate=1.5", "out of range"),
        ("drop_rate=-0.1", "out of range"),
        ("rate_limit=0", "out of range"),
        ("max_users_per_call=0", "out of range"),
        ("seed=x", "bad value 'x'"),
        ("latency_ms", "key=value"),
    ],
)
def test_bad_fault_specs_name_the_value_and_the_form(spec: str, needle: str) -> None:
    with pytest.raises(EmulatorConfigError) as info:
        FaultSpec.parse(spec)
    assert needle in str(info.value)
    assert "rate_limit" in str(info.value)  # the valid form


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("immediate", Progression("immediate")),
        ("polls:5", Progression("polls", polls=5)),
        ("seconds:1.5", Progression("seconds", seconds=1.5)),
        ("seconds:0", Progression("immediate")),
    ],
)
def test_progression_forms(text: str, expected: Progression) -> None:
    assert Progression.parse(text) == expected


@pytest.mark.parametrize("text", ["polls", "polls:0", "polls:x", "seconds:-1", "later", ""])
def test_bad_progressions(text: str) -> None:
    with pytest.raises(EmulatorConfigError, match="polls:N"):
        Progression.parse(text)


def test_bad_config_fails_fast_in_python() -> None:
    with pytest.raises(EmulatorConfigError):
        Emulator(faults="error_rate=9")
    with pytest.raises(EmulatorConfigError):
        create_app(progression="polls:-1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(NOW + 2 * DAY_MS), NOW + 2 * DAY_MS),  # epoch ms
        (str((NOW + 2 * DAY_MS) // 1000), NOW + 2 * DAY_MS),  # epoch s
        ("2027-01-18T07:00:00+00:00", NOW + 3 * DAY_MS - 3_600_000),
        ("3 days", NOW + 3 * DAY_MS),
        (str(NOW + 1000), NOW + DAY_MS),  # below the minimum
        (str(NOW + 2 * YEAR_MS), NOW + YEAR_MS),  # above the maximum
    ],
)
def test_parse_expiration(value: str, expected: int) -> None:
    assert parse_expiration(value, NOW) == expected


def test_parse_expiration_rejects_garbage() -> None:
    with pytest.raises(ValidationError):
        parse_expiration("soon", NOW)


def test_token_bucket_never_exceeds_rate_plus_burst() -> None:
    t = [0.0]
    bucket = TokenBucket(rate=10, burst=10, clock=lambda: t[0])
    granted = 0
    for _ in range(400):  # 4 simulated seconds, 100 attempts a second
        if bucket.try_acquire() is None:
            granted += 1
        t[0] += 0.01
    assert 10 + 39 <= granted <= 10 + 40
    wait = None
    while wait is None:
        wait = bucket.try_acquire()
    assert 0 < wait <= 0.1


def test_fault_decisions_are_seeded() -> None:
    spec = FaultSpec.parse("error_rate=0.3,drop_rate=0.2,seed=42")
    first = FaultInjector(spec)
    second = FaultInjector(spec)
    seq1 = [first.decide()[0] for _ in range(200)]
    seq2 = [second.decide()[0] for _ in range(200)]
    assert seq1 == seq2
    counts = {d: seq1.count(d) for d in Decision}
    assert counts[Decision.DROP_BEFORE] > 5 and counts[Decision.DROP_AFTER] > 5
    assert counts[Decision.ERROR] > 20
    first.reset()
    assert [first.decide()[0] for _ in range(200)] == seq1
