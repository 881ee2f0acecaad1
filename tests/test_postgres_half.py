"""README's test command on a machine without PostgreSQL: the PostgreSQL half is skipped
with one line saying why, and CHATAPI_TEST_POSTGRES=required (as .ci/run sets) fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
ONE_TEST = "tests/test_catchup.py::test_logout_needs_a_token"  # runs once per backend
NOWHERE = "postgresql://chatapi:chatapi@127.0.0.1:1/chatapi_test"  # nothing listens there


def pytest_without_postgres(**settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPI_TEST_POSTGRES")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", ONE_TEST],
        cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False,
        env={**env, "CHATAPI_TEST_POSTGRES_URL": NOWHERE, **settings},
    )


def test_without_postgresql_the_postgresql_half_is_skipped_with_one_line():
    done = pytest_without_postgres()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    why = [line for line in done.stdout.splitlines() if "PostgreSQL half skipped" in line]
    assert len(why) == 1, done.stdout
    assert "127.0.0.1:1/chatapi_test cannot be reached" in why[0]
    assert "CHATAPI_TEST_POSTGRES_URL" in why[0]
    assert ":chatapi@" not in done.stdout  # the password of the URL is not printed


def test_with_postgresql_required_its_absence_fails_the_run():
    done = pytest_without_postgres(CHATAPI_TEST_POSTGRES="required")
    assert done.returncode != 0, done.stdout
    assert "1 passed, 1 error" in done.stdout, done.stdout  # the setup of the PostgreSQL run fails
    assert "CHATAPI_TEST_POSTGRES=required but PostgreSQL cannot be reached" in done.stdout
