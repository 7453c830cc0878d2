"""The pytest plugin's broker compat option (issue 14): flag, ini option and parameter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nolag.testing import ClientFactory, LocalBroker

USER_TESTS = """
def test_mode(nolag_broker, nolag_client):
    alice = nolag_client("alice", room="general", presence={"a": 1})
    assert alice.connected
    print("COMPAT=" + nolag_broker.broker.config.compat)
"""


def run_user_suite(tmp_path: Path, *args: str, ini: str = "") -> subprocess.CompletedProcess[str]:
    """Run a one-test user suite through the installed plugin with extra pytest args."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    if ini:
        (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "ini", "mode"),
    [
        ((), "", "local"),
        (("--nolag-broker-compat", "kraken"), "", "kraken"),
        ((), "nolag_broker_compat = kraken", "kraken"),
        (("--nolag-broker-compat", "local"), "nolag_broker_compat = kraken", "local"),
    ],
    ids=["default", "flag", "ini", "flag-over-ini"],
)
def test_the_mode_comes_from_the_flag_or_the_ini_option(
    tmp_path: Path, args: tuple[str, ...], ini: str, mode: str
) -> None:
    result = run_user_suite(tmp_path, *args, ini=ini)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"COMPAT={mode}" in result.stdout


def test_a_bad_ini_value_fails_the_test_naming_the_option(tmp_path: Path) -> None:
    result = run_user_suite(tmp_path, ini="nolag_broker_compat = krakn")
    assert result.returncode == 1
    assert "the ini option nolag_broker_compat must be one of local, kraken, not 'krakn'" in (
        result.stdout
    )


@pytest.mark.parametrize("nolag_broker_compat", ["local", "kraken"], indirect=True)
def test_the_fixture_parameter_picks_the_mode(
    nolag_broker: LocalBroker, nolag_client: ClientFactory, nolag_broker_compat: str
) -> None:
    assert nolag_broker.broker.config.compat == nolag_broker_compat
    alice = nolag_client("alice", room="general", presence={"a": 1})
    bob = nolag_client("bob", room="general", presence={"b": 1})
    found = bob.wait_for_presence("alice", timeout=5)
    assert found.presence == {"a": 1}
    assert alice.connected
