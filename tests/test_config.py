"""Settings: the API root is checked when the settings are made, never echoed with secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulkbatch.config import Settings
from bulkbatch.errors import UsageError
from bulkbatch.options import option
from tests.support import SAMPLE, bulkbatch


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://api.courier.test", "must start with https:// (or http:// for a local emulator)"),
        ("not a url", "must start with https:// (or http:// for a local emulator)"),
        ("http://", "has no host"),
        ("https:///v1", "has no host"),
    ],
)
def test_a_base_url_that_cannot_work_is_refused_up_front(url: str, said: str) -> None:
    with pytest.raises(UsageError) as e:
        Settings(base_url=url)
    assert said in str(e.value) and "COURIER_BASE_URL" in str(e.value)


def test_credentials_in_the_base_url_are_refused_and_never_repeated() -> None:
    """``http://user:pass@host`` reached aiohttp, which failed with 'Unexpected ValueError:
    Cannot combine AUTHORIZATION header with ... credentials encoded in URL', and the URL,
    password and all, went into state.json and the campaign registry."""
    with pytest.raises(UsageError) as e:
        Settings(base_url="https://user:s3cretpw@api.courier.test/")
    assert "s3cretpw" not in str(e.value)
    assert str(e.value) == (
        "COURIER_BASE_URL (--base-url) holds a user name or password (https://***@...): "
        "Courier takes the API key as a bearer token, from COURIER_API_KEY. Remove them "
        "from the URL."
    )


def test_the_cli_says_so_in_one_line(tmp_path: Path) -> None:
    env = {"COURIER_BASE_URL": "http://user:s3cretpw@127.0.0.1:9/", "COURIER_API_KEY": "k" * 20}
    proc = bulkbatch(
        "send", str(SAMPLE), "--event", "welcome", "--run-dir", str(tmp_path / "r"),
        env={**os.environ, **env},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "s3cretpw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and "Unexpected" not in proc.stderr


def test_the_defaults_a_help_text_names_are_the_settings_defaults() -> None:
    """``--help`` states these defaults in words; a changed default must change its help."""
    settings = Settings()
    stated = {
        "concurrency": f"(default {settings.concurrency})",
        "max_attempts": f"(default {settings.max_attempts})",
        "max_backoff": f"(default {settings.max_backoff:g})",
    }
    for name, text in stated.items():
        assert text in option(name).help, (name, option(name).help)
