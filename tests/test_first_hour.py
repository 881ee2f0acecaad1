"""README's first hour in fresh venvs, installed for real from the registry.

A first conversation with only what README's first command installed, and a downstream
project running README's test example after `pip install 'chatapi[pytest]'`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import README, readme_blocks

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 900  # seconds: a venv and its packages from the registry, on a slow machine
FIRST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/chatapi"
# Build and tool output of the working tree, none of it part of the project.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", "*.db", "*.db-wal", "*.db-shm",
)


def fresh_env() -> dict[str, str]:
    """The environment of a new shell: none of this test run's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def copy_project(dest: Path) -> Path:
    """The project's sources, as a checkout has them."""
    shutil.copytree(PROJECT, dest, ignore=NOT_SOURCE, symlinks=True)
    return dest


def sh(command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env or fresh_env(), capture_output=True,
        text=True, timeout=INSTALL_TIMEOUT, check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, from a copy of its sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = copy_project(work / "src")
    sh(f"{sys.executable} -m pip wheel -q --no-deps -w {work / 'dist'} {source}", cwd=work)
    (built,) = (work / "dist").glob("chatapi-*.whl")
    return built


@pytest.fixture
def first_command_server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """README's first command, run in a copy of the project; (project, port) once serving."""
    first = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0].strip()
    assert first == FIRST_COMMAND
    project = copy_project(tmp_path / "chatapi")
    env = {**fresh_env(), "CHATAPI_PORT": "0", "CHATAPI_DB": str(tmp_path / "first.db"),
           "CHATAPI_BCRYPT_ROUNDS": "4"}
    with (tmp_path / "stderr").open("w") as stderr, subprocess.Popen(
        ["bash", "-c", first], cwd=project, env=env, stdout=subprocess.PIPE, stderr=stderr,
        text=True, start_new_session=True,
    ) as proc:
        watchdog = threading.Timer(INSTALL_TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        try:
            lines = []
            for line in proc.stdout:  # pip's output, then the bound URL
                lines.append(line)
                if match := re.fullmatch(r"http://127\.0\.0\.1:(\d+)\n", line):
                    break
            else:
                log = (tmp_path / "stderr").read_text()
                raise AssertionError("the server did not start:\n" + "".join(lines) + log)
            watchdog.cancel()
            yield project, int(match.group(1))
        finally:
            watchdog.cancel()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_a_first_conversation_with_only_what_the_first_command_installed(first_command_server):
    project, port = first_command_server
    python = project / ".venv" / "bin" / "python"
    for missing in ("websockets", "pytest"):
        done = subprocess.run([python, "-c", f"import {missing}"], capture_output=True, check=False)
        assert done.returncode != 0, f"{missing} is installed: the test would prove nothing"

    block = readme_blocks("A first conversation", "sh")[0]
    assert block.count("localhost:8080") >= 5
    out = sh(block.replace("localhost:8080", f"127.0.0.1:{port}"), cwd=project)

    printed = re.search(r"\{'type': 'message'.*\}$", out, re.MULTILINE)
    assert printed, out
    stored = ast.literal_eval(printed.group(0))
    assert stored["text"] == "hello, world" and stored["username"] == "alice"
    history = json.loads(out.rstrip("\n").rsplit("\n", 1)[-1])
    assert history == [{k: v for k, v in stored.items() if k != "type"}]


SAME_NAME_AGAIN = '''
import pytest

from chatapi.client import ChatAPIError


def test_alice_once_more(chatapi_user):
    assert chatapi_user("alice")["id"] == 1  # an empty database for this test too


def test_a_refusal_carries_the_servers_reason(chatapi_user):
    chatapi_user("Named User")
    with pytest.raises(ChatAPIError, match="409: username already taken"):
        chatapi_user("named user")
    with pytest.raises(ChatAPIError, match="400: username: must be at least 3 characters"):
        chatapi_user("al")
'''


def test_a_downstream_project_runs_the_readme_test_example(wheel, tmp_path):
    venv, project = tmp_path / "venv", tmp_path / "project"
    sh(f"python3 -m venv {venv}", cwd=tmp_path)
    (install,) = readme_blocks("Use it in your tests", "sh")
    assert install.strip() == "pip install 'chatapi[pytest]'"
    sh(install.replace("pip install 'chatapi", f"{venv}/bin/pip install -q '{wheel}"),
       cwd=tmp_path)

    example, shared = readme_blocks("Use it in your tests", "python")
    project.mkdir()
    (project / "test_example.py").write_text(example)
    (project / "test_shared.py").write_text(shared)
    (project / "test_same_name_again.py").write_text(SAME_NAME_AGAIN)
    done = subprocess.run(
        [venv / "bin" / "pytest", "-p", "no:cacheprovider"], cwd=project, env=fresh_env(),
        capture_output=True, text=True, timeout=600, check=False,
    )
    summary = done.stdout.rstrip().rsplit("\n", 1)[-1]
    assert re.fullmatch(r"=+ 6 passed in [\d.]+s( \([\d:]+\))? =+", summary), done.stdout
    assert done.returncode == 0
