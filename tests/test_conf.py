"""The app's settings: one table of defaults, used by chatsite and by a host site that
names none of them (docs/reusable-app.md), and documented wherever an operator looks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chat import conf

ROOT = Path(__file__).resolve().parent.parent
NAMES = [*conf.DEFAULTS, "CHAT_DEMO", "CHAT_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"]


def forget(settings, *names):
    for name in names:
        delattr(settings, name)


def test_it_fills_in_every_setting_a_host_site_leaves_out(settings):
    forget(settings, *NAMES)
    conf.install_defaults()
    assert settings.CHAT_MAX_MESSAGE_CHARS == 32000
    assert settings.CHAT_OPEN_SIGNUP is False
    assert settings.CHAT_DIRECT_WRITES is True
    assert (settings.CHAT_DEMO, settings.CHAT_MODEL, settings.OPENAI_BASE_URL) == (True, "demo", "")


def test_a_key_alone_means_openai(settings):
    forget(settings, *NAMES)
    settings.OPENAI_API_KEY = "sk-host"
    conf.install_defaults()
    assert (settings.CHAT_DEMO, settings.CHAT_MODEL) == (False, "gpt-4o-mini")
    assert settings.OPENAI_BASE_URL == "https://api.openai.com/v1"


def test_it_keeps_what_the_host_set(settings):
    forget(settings, *NAMES)
    settings.OPENAI_BASE_URL = "http://localhost:11434/v1"
    settings.CHAT_MODEL = "llama3.2"
    settings.CHAT_MAX_MESSAGE_CHARS = 5
    conf.install_defaults()
    assert (settings.CHAT_DEMO, settings.CHAT_MODEL, settings.CHAT_MAX_MESSAGE_CHARS) == (
        False,
        "llama3.2",
        5,
    )
    assert settings.OPENAI_BASE_URL == "http://localhost:11434/v1"


def test_the_site_and_a_host_site_get_the_same_defaults(tmp_path):
    """chatsite with an empty environment has exactly the values a host site gets."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_", "OPENAI_"))}
    environ.update(CHAT_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="chatsite.settings")
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {NAMES!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    site = json.loads(done.stdout)
    assert site == {
        **conf.DEFAULTS,
        "CHAT_DEMO": True,
        "CHAT_MODEL": "demo",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
    }


# --- the documentation lists every setting, with the table's default ----------------------------
def as_env(value) -> str:
    """A default as it is written in .env: true/false, 10 rather than 10.0."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))


def table_rows(path: Path, heading: str) -> dict[str, list[str]]:
    """The cells of each row of the Markdown table under `heading`, by each name in its first cell."""
    lines = path.read_text().split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    rows = {}
    for line in lines[start + 2 : end]:  # past the header and its rule
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name in re.findall(r"`([A-Z_]+)`", cells[0]):
            rows[name] = cells
    return rows


README = table_rows(ROOT / "README.md", "## Settings")
REUSABLE = table_rows(ROOT / "docs/reusable-app.md", "## 5. Settings")


@pytest.mark.parametrize("setting", conf.SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented_with_its_default(setting):
    assert env_example().get(setting.name) == as_env(setting.default), ".env.example"
    readme_default = README[setting.name][1]
    if setting.default == "":
        assert readme_default == "empty", "README"
    else:
        assert f"`{as_env(setting.default)}`" in readme_default, "README"
    default = '""' if setting.default == "" else str(setting.default)
    assert f"`{default}`" in REUSABLE[setting.name][1], "docs/reusable-app.md"


def read_by_settings() -> set[str]:
    """The variables chatsite/settings.py reads by name (the table's are read in a loop)."""
    source = (ROOT / "chatsite/settings.py").read_text()
    return set(re.findall(r"env_[a-z]+\(\s*\"([A-Z_]+)\"", source))


@pytest.mark.parametrize("name", sorted(read_by_settings() | {"CHAT_ENV_FILE", "HOST", "PORT"}))
def test_every_other_variable_is_documented(name):
    assert re.search(rf"^#? ?.*\b{name}\b", (ROOT / ".env.example").read_text(), re.M), ".env.example"
    assert name in README, "README"
