"""The run spec: option parsing, validation wording, the job message, state.json round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkbatch.errors import UsageError
from bulkbatch.options import OPTIONS
from bulkbatch.spec import (
    MAX_JSON_DEPTH,
    Campaign,
    RunSpec,
    json_depth,
    parse_json_option,
    parse_map_option,
)


def test_parse_map_option_errors() -> None:
    assert parse_map_option(["Email=mail", "data.x=y"]) == {"profile.email": "mail", "data.x": "y"}
    with pytest.raises(UsageError) as e:
        parse_map_option(["user_id"])
    assert (
        str(e.value) == "Bad --map 'user_id': use TARGET=COLUMN, e.g. --map to.user_id=customer_id."
    )
    with pytest.raises(UsageError) as e:
        parse_map_option(["nickname=x"])
    assert str(e.value) == (
        "Unknown --map target 'nickname': use user_id, email, phone_number, locale, tenant_id, "
        "list_id, data, preferences, or data.NAME, profile.NAME or to.NAME."
    )
    with pytest.raises(UsageError) as e:
        parse_map_option(["user_id=a", "to.user_id=b"])
    assert str(e.value) == "--map to.user_id is given twice (a and b); keep one."


def test_parse_json_option(tmp_path: Path) -> None:
    assert parse_json_option("data", '{"a": 1}') == {"a": 1}
    f = tmp_path / "d.json"
    f.write_text('{"b": [1]}')
    assert parse_json_option("data", f"@{f}") == {"b": [1]}
    with pytest.raises(UsageError) as e:
        parse_json_option("data", '{"a": 1,}')
    assert str(e.value) == (
        "--data is not valid JSON: Expecting property name enclosed in double quotes at line 1, "
        """column 9. Pass a JSON object, e.g. --data '{"promo": "SPRING"}', or @file.json."""
    )
    with pytest.raises(UsageError) as e:
        parse_json_option("data", "[1]")
    assert str(e.value) == (
        "--data must be a JSON object, not list. "
        """Wrap the values in an object, e.g. --data '{"promo": "SPRING"}'."""
    )
    with pytest.raises(UsageError) as e:
        parse_json_option("data", f"@{tmp_path / 'nope.json'}")
    assert (
        str(e.value)
        == f"--data file not found: {tmp_path / 'nope.json'}. Check the path after '@'."
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"a": NaN}', 'NaN at "a"'),
        ('{"a": {"b": [1, Infinity]}}', 'Infinity at "a.b[1]"'),
        ('{"a": -Infinity}', '-Infinity at "a"'),
    ],
)
def test_nan_in_a_json_option_is_refused_not_sent_as_null(
    tmp_path: Path, text: str, said: str
) -> None:
    """Python's json reads NaN and Infinity; orjson then wrote them as null, so --data's
    value silently vanished from every user."""
    f = tmp_path / "d.json"
    f.write_text(text)
    for value in (text, f"@{f}"):
        with pytest.raises(UsageError) as e:
            parse_json_option("data", value)
        assert str(e.value) == (
            f"--data{' file ' + str(f) if value.startswith('@') else ''} holds {said}, which "
            "JSON does not have (Courier refuses it). Give a number, a string or null."
        )


def test_nan_in_a_message_option_from_python_or_toml_is_refused() -> None:
    from bulkbatch.spec import Campaign

    with pytest.raises(UsageError) as e:
        Campaign(event="welcome", data={"a": [1.0, math.nan]})
    assert '--data holds NaN at "a[1]"' in str(e.value)
    with pytest.raises(UsageError) as e:
        Campaign(event="welcome", override={"x": {"y": math.inf}})
    assert '--override holds Infinity at "x.y"' in str(e.value)


def test_content_errors_name_content_not_data() -> None:
    with pytest.raises(UsageError) as e:
        parse_json_option("content", "notjson")
    assert str(e.value).startswith("--content is not valid JSON")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000])
def test_deep_json_option_is_refused_in_one_line(tmp_path: Path, depth: int) -> None:
    f = tmp_path / "deep.json"
    f.write_text('{"a": ' * depth + "1" + "}" * depth)
    with pytest.raises(UsageError) as e:
        parse_json_option("data", f"@{f}")
    assert "levels" in str(e.value) and "\n" not in str(e.value)


@given(st.recursive(st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_json_depth_matches_a_recursive_count(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    assert json_depth(value) == depth(value)


def test_job_message_is_the_documented_shape() -> None:
    c = Campaign(event="welcome", brand="b", data={"a": 1}, locale="fr")
    # locale goes to each user's to.locale (plan); routing is never sent.
    assert c.message() == {"event": "welcome", "brand": "b", "data": {"a": 1}}
    assert Campaign(template="T1", channel="none").message() == {"event": "T1", "template": "T1"}
    assert Campaign(event="e", override={"channel": {"email": {}}}).message() == {
        "event": "e",
        "override": {"channel": {"email": {}}},
    }
    with pytest.raises(UsageError) as e:
        Campaign().message()
    assert str(e.value) == (
        "No message to send: pass --event EVENT (a Courier event or notification id) or "
        "--template ID; Courier requires an event on every bulk job."
    )


def test_content_must_be_elemental() -> None:
    Campaign(event="e", content={"title": "Hi", "body": "There"})
    Campaign(event="e", content={"version": "2022-01-01", "elements": [{"type": "text"}]})
    with pytest.raises(UsageError, match="--content must be Elemental content"):
        Campaign(event="e", content={"subject": "Hi"})
    with pytest.raises(UsageError, match=r"elements\[0\] has type 'nope'"):
        Campaign(event="e", content={"version": "1", "elements": [{"type": "nope"}]})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("rate", math.nan, "--rate nan must be a finite number (Python: rate=)."),
        ("rate", 1e309, "--rate inf must be a finite number (Python: rate=)."),
        ("rate", 0, "--rate 0 must be above 0 and at most 100000 (Python: rate=)."),
        ("poll_interval", math.nan, "--poll-interval nan must be a finite number"),
        ("batch_size", 5000, "--batch-size 5000 must be at most 1000 (Python: batch_size=)."),
        ("dedupe", "any", "--dedupe 'any' is not one of first, last, fail (Python: dedupe=)."),
        ("concurrency", 0, "--concurrency 0 must be at least 1 and at most 256"),
    ],
)
def test_bad_values_name_the_flag(name: str, value: object, message: str) -> None:
    with pytest.raises(UsageError) as e:
        RunSpec.build({name: value})
    assert str(e.value).startswith(message)


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"Unknown option 'base_urll'\. Known options: api_key"):
        RunSpec.build({"base_urll": "x"})


def test_state_round_trip_keeps_everything_but_the_key() -> None:
    spec = RunSpec.build(
        {
            "sources": ("a.csv",),
            "event": "welcome",
            "data": {"x": {"y": 1}},
            "mapping": {"to.user_id": "id"},
            "rate": 5.0,
            "timeout": 30.0,
            "fail_on_rejects": True,
            "run_id": "welcome-2026-12-01",
            "api_key": "pk_secret",
        }
    )
    stored = spec.to_json()
    assert "api_key" not in stored and "pk_secret" not in repr(stored)
    assert RunSpec.from_json(stored) == spec


def test_every_option_has_help_and_a_unique_flag() -> None:
    flags = [o.flag for o in OPTIONS.values()]
    assert len(flags) == len(set(flags))
    assert all(o.help.endswith((".", ")")) for o in OPTIONS.values())
