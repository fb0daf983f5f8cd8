"""The app inside a host site that names none of its settings (docs/reusable-app.md)."""

from chat import conf

NAMES = [*conf.DEFAULTS, "CHAT_DEMO", "CHAT_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"]


def forget(settings, *names):
    for name in names:
        delattr(settings, name)


def test_it_fills_in_every_setting_a_host_site_leaves_out(settings):
    forget(settings, *NAMES)
    conf.install_defaults()
    assert settings.CHAT_MAX_MESSAGE_CHARS == 32000
    assert settings.CHAT_OPEN_SIGNUP is False
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
