"""Start-up settings: defaults that just work, and bad values that stop start-up by name."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start(tmp_path, **env) -> subprocess.CompletedProcess:
    """Load the settings in a fresh interpreter, as a server process would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    environ.pop("DATABASE_URL", None)
    environ.pop("REDIS_URL", None)
    environ.update({"CHAT_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env})
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.CHAT_DEMO, s.CHAT_MODEL, s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_zero_config_uses_sqlite_memory_layer_and_the_demo_model(tmp_path):
    result = start(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True",
        "demo",
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
    ]
    assert (tmp_path / "secret_key").exists()  # generated once, kept private
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_empty_values_in_an_env_file_mean_the_defaults(tmp_path):
    result = start(
        tmp_path, DATABASE_URL="", DJANGO_DEBUG="", CHAT_UPSTREAM_IDLE_TIMEOUT="", OPENAI_API_KEY=""
    )
    assert result.returncode == 0, result.stderr


def test_an_api_key_switches_to_openai_and_gpt_4o_mini(tmp_path):
    result = start(tmp_path, OPENAI_API_KEY="sk-x", REDIS_URL="redis://127.0.0.1:6379/0")
    assert result.stdout.split() == [
        "False",
        "gpt-4o-mini",
        "django.db.backends.sqlite3",
        "channels_redis.core.RedisChannelLayer",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_DEBUG", "maybe"),
        ("CHAT_UPSTREAM_IDLE_TIMEOUT", "soon"),
        ("CHAT_MAX_MESSAGE_CHARS", "-5"),
        ("DATABASE_URL", "mysql-ish://nowhere"),
        ("OPENAI_BASE_URL", "api.openai.com/v1"),
        ("REDIS_URL", "localhost:6379"),
        ("CHAT_SIGNUP_RATE", "lots"),
        ("CHAT_LOGIN_FAILURE_LIMIT", "0"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, name, value):
    result = start(tmp_path, **{name: value})
    assert result.returncode != 0
    assert name in result.stderr.splitlines()[-1]
    assert "Traceback" in result.stderr  # it is a start-up failure, not a warning


def test_a_default_system_prompt_longer_than_the_limit_stops_start_up(tmp_path):
    result = start(tmp_path, CHAT_SYSTEM_PROMPT="x" * 101, CHAT_MAX_SYSTEM_PROMPT_CHARS="100")
    assert result.returncode != 0
    assert "CHAT_SYSTEM_PROMPT is 101 characters; CHAT_MAX_SYSTEM_PROMPT_CHARS allows 100" in result.stderr
    assert start(tmp_path, CHAT_SYSTEM_PROMPT="x" * 100, CHAT_MAX_SYSTEM_PROMPT_CHARS="100").returncode == 0


def test_hsts_seconds_come_from_the_environment(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    environ.update(CHAT_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="chatsite.settings")
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run(env=environ).stdout.strip() == "0"  # off unless asked: it cannot be taken back
    assert run(env={**environ, "DJANGO_HSTS_SECONDS": "31536000"}).stdout.strip() == "31536000"


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_the_data_directory_and_database_are_private(tmp_path):
    """Sessions, password hashes and provider keys live in the SQLite file: only the
    server's own user may read it, or its -wal and -shm files, or list the directory."""
    import sqlite3

    data = tmp_path / "fresh" / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    environ.pop("DATABASE_URL", None)
    environ.update(CHAT_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="chatsite.settings")
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    database = data / "db.sqlite3"
    assert mode(data) == "0o700"
    assert mode(database) == "0o600"
    assert mode(data / "secret_key") == "0o600"
    # SQLite makes -wal and -shm with the database file's mode, whoever opens it.
    connection = sqlite3.connect(database)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (x)")
        connection.commit()
        for suffix in ("-wal", "-shm"):
            assert mode(data / f"db.sqlite3{suffix}") == "0o600", suffix
    finally:
        connection.close()


def test_a_database_file_made_world_readable_before_is_made_private(tmp_path):
    (tmp_path / "db.sqlite3").touch(mode=0o644)
    (tmp_path / "db.sqlite3").chmod(0o644)  # whatever the umask
    assert start(tmp_path).returncode == 0
    assert mode(tmp_path / "db.sqlite3") == "0o600"
