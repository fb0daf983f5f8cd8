"""manage.py fetch_vocabularies, as ./run.sh calls it on every start (issue #14): quiet and
offline when the vocabularies are there, a clear failure (not a hang) when they cannot be
downloaded, so run.sh can say so and serve anyway."""

import os
import subprocess
import sys
import time

import pytest

from tests.live_server import REPO, free_port

pytestmark = pytest.mark.slow
SHARED = os.environ.get("TIKTOKEN_CACHE_DIR", "")


def fetch(tmp_path, cache_dir, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every download fails at once
    env.update(
        TIKTOKEN_CACHE_DIR=str(cache_dir),
        CHAT_DATA_DIR=str(tmp_path / "data"),
        HTTPS_PROXY=dead,
        https_proxy=dead,
        NO_PROXY="",
        no_proxy="",
    )
    return subprocess.run(
        [sys.executable, "manage.py", "fetch_vocabularies", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_says_plainly_when_the_vocabularies_cannot_be_downloaded(tmp_path):
    empty = tmp_path / "cache"
    empty.mkdir()
    started = time.monotonic()
    done = fetch(tmp_path, empty, "--if-missing", "--timeout", "5")
    assert done.returncode != 0
    assert "Could not fetch the o200k_base vocabulary" in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.skipif(not SHARED or not os.path.isdir(SHARED), reason="needs the vocabularies on disk")
def test_it_does_nothing_and_needs_no_network_when_they_are_there(tmp_path):
    done = fetch(tmp_path, SHARED, "--if-missing")
    assert (done.returncode, done.stdout) == (0, "")
