"""Start-up settings: defaults that just work, and bad values that stop start-up by name."""

import ast
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
        "chat.layers.ChannelLayer",  # channels_redis with a waiting pool (issue #15)
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_DEBUG", "maybe"),
        ("CHAT_DIRECT_WRITES", "maybe"),
        ("CHAT_ENV_FILE", "/nonexistent/chat.env"),
        ("CHAT_UPSTREAM_IDLE_TIMEOUT", "soon"),
        ("CHAT_MAX_MESSAGE_CHARS", "-5"),
        ("CHAT_REDIS_MAX_CONNECTIONS", "1"),
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


# --- .env: read by the app itself, so every entry point sees the same settings --------------------
SHOW = (
    "from django.conf import settings as s; "
    "print(repr((s.CHAT_MAX_MESSAGE_CHARS, s.CHAT_DEMO, s.CHAT_MODEL, s.OPENAI_BASE_URL, s.CHAT_OPEN_SIGNUP)))"
)


def manage(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py as an operator would, with only `env` (and the data directory) set."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    environ.pop("DATABASE_URL", None)
    environ.pop("REDIS_URL", None)
    environ.update({"CHAT_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def env_file(tmp_path, text: str) -> str:
    path = tmp_path / "chat.env"
    path.write_text(text)
    return str(path)


def test_manage_py_sees_a_value_set_only_in_the_env_file(tmp_path):
    """`manage.py createsuperuser` and friends, run by hand, use the site's own settings."""
    path = env_file(
        tmp_path,
        "# the site's settings\nCHAT_MAX_MESSAGE_CHARS=1234\nOPENAI_API_KEY='sk-file'\n"
        "export CHAT_OPEN_SIGNUP=true\nCHAT_SYSTEM_PROMPT=\n",
    )
    result = manage(tmp_path, "shell", "-c", SHOW, CHAT_ENV_FILE=path)
    assert result.returncode == 0, result.stderr
    # A key from the file and no base URL: OpenAI and its default model, as in the environment.
    seen = ast.literal_eval(result.stdout.splitlines()[-1])
    assert seen == (1234, False, "gpt-4o-mini", "https://api.openai.com/v1", True)


def test_an_environment_variable_wins_over_the_env_file(tmp_path):
    path = env_file(tmp_path, "CHAT_MAX_MESSAGE_CHARS=1234\nCHAT_MODEL=from-file\n")
    result = manage(tmp_path, "shell", "-c", SHOW, CHAT_ENV_FILE=path, CHAT_MAX_MESSAGE_CHARS="99")
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval(result.stdout.splitlines()[-1]) == (99, True, "from-file", "", False)


def test_a_bad_value_in_the_env_file_stops_start_up_naming_the_variable(tmp_path):
    result = manage(tmp_path, "check", CHAT_ENV_FILE=env_file(tmp_path, "CHAT_FRAME_BURST=lots\n"))
    assert result.returncode != 0
    assert "CHAT_FRAME_BURST must be a whole number, not 'lots'" in result.stderr


def test_values_in_the_env_file_are_taken_literally(tmp_path):
    """A secret may hold `$`: the file is not a shell script (nor was systemd's reading of it)."""
    path = env_file(tmp_path, "CHAT_SYSTEM_PROMPT=Costs $5, or ${HOME}\n")
    result = manage(
        tmp_path,
        "shell",
        "-c",
        "from django.conf import settings as s; print(s.CHAT_SYSTEM_PROMPT)",
        CHAT_ENV_FILE=path,
    )
    assert result.stdout.splitlines()[-1] == "Costs $5, or ${HOME}", result.stderr


def test_run_sh_listens_where_the_env_file_says(tmp_path):
    """run.sh takes daphne's HOST and PORT from the same reader as the settings."""
    path = env_file(tmp_path, "HOST=0.0.0.0\nPORT=9123\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    run = functools.partial(
        subprocess.run,
        [sys.executable, "-m", "chatsite.env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run(env={**environ, "CHAT_ENV_FILE": path}).stdout.split() == ["0.0.0.0", "9123"]
    assert run(env={**environ, "CHAT_ENV_FILE": path, "PORT": "8555"}).stdout.split() == ["0.0.0.0", "8555"]
    assert run(env={**environ, "CHAT_ENV_FILE": os.devnull}).stdout.split() == ["127.0.0.1", "8000"]
    bad = run(env={**environ, "CHAT_ENV_FILE": env_file(tmp_path, "PORT=http\n")})
    assert bad.returncode != 0 and "PORT must be a whole number" in bad.stderr


def test_outside_the_test_suite_the_env_file_is_the_one_beside_manage_py(tmp_path):
    """(The suite itself reads only a CHAT_ENV_FILE it names: a developer's .env must not
    change what it tests.)"""
    environ = {k: v for k, v in os.environ.items() if k not in ("CHAT_ENV_FILE", "PYTEST_VERSION")}
    code = "from chatsite.env import env_file; print(env_file())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == str(ROOT / ".env"), done.stderr
