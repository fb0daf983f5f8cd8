"""Token counts match what OpenAI bills, and never download anything mid-chat."""

import threading

import pytest
import tiktoken.load
import tiktoken.registry

from chat import tokens

SEED_PROMPT = "Count to 100, with a comma between each number and no newlines. E.g., 1, 2, 3, ..."
SEED_REPLY = ", ".join(str(i) for i in range(1, 101)) + "."

# The OpenAI cookbook's example (How_to_count_tokens_with_tiktoken), whose counts the API confirmed:
# 129 prompt tokens for gpt-3.5-turbo / gpt-4 (cl100k_base), 124 for gpt-4o / gpt-4o-mini (o200k_base).
COOKBOOK_MESSAGES = [
    (
        "system",
        "",
        "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    ),
    ("system", "example_user", "New synergies will help drive top-line growth."),
    ("system", "example_assistant", "Things working well together will increase revenue."),
    (
        "system",
        "example_user",
        "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    ),
    ("system", "example_assistant", "Let's talk later when we're less busy about how to do better."),
    ("user", "", "This late pivot means we don't have time to boil the ocean for the client deliverable."),
]
CHINESE = "你好，世界！今天天气很好。"  # o200k_base packs this tighter than cl100k_base

needs_vocabularies = pytest.mark.skipif(
    not (tokens.vocabulary_path("o200k_base").exists() and tokens.vocabulary_path("cl100k_base").exists()),
    reason=(
        f"tiktoken vocabularies are not in {tokens.cache_dir()}; run `python manage.py fetch_vocabularies` "
        "or point TIKTOKEN_CACHE_DIR at a cache that has them"
    ),
)


@pytest.fixture
def fresh_vocabularies():
    """Forget loaded vocabularies before and after, so a test's cache directory is really used."""
    for thread in threading.enumerate():  # importing chatsite.asgi starts one; let it finish first
        if thread.name == "tiktoken-warm-up":
            thread.join(30)
    tokens.forget_encodings()
    yield
    tokens.forget_encodings()


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt by tiktoken to fetch a vocabulary fails the test (even if the app swallowed it)."""
    attempts = []

    def refuse(blobpath):
        attempts.append(blobpath)
        raise OSError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # tiktoken's own cache of loaded ones
    yield
    assert attempts == [], "tiktoken tried to download a vocabulary"


@needs_vocabularies
def test_the_seed_prompt_costs_36_tokens_on_gpt_4o_mini():
    content = tokens.count_tokens(SEED_PROMPT, "gpt-4o-mini")

    assert tokens.REPLY_PRIMING + tokens.count_messages(("user",), (content,), "gpt-4o-mini") == 36


@needs_vocabularies
def test_counting_to_100_is_299_completion_tokens():
    assert tokens.count_tokens(SEED_REPLY, "gpt-4o-mini") == 299


@needs_vocabularies
@pytest.mark.parametrize(("model", "expected"), [("gpt-4o-mini", 124), ("gpt-4o", 124), ("gpt-4", 129)])
def test_prompt_counts_match_the_openai_cookbook_including_names(model, expected):
    total = tokens.REPLY_PRIMING
    for role, name, content in COOKBOOK_MESSAGES:
        total += tokens.message_overhead(role, model, name) + tokens.count_tokens(content, model)

    assert total == expected


@needs_vocabularies
def test_cl100k_models_are_counted_with_their_own_vocabulary():
    assert tokens.encoding_name("gpt-4") == "cl100k_base"
    assert tokens.count_tokens(CHINESE, "gpt-4") == 16
    assert tokens.count_tokens(CHINESE, "gpt-4o-mini") == 9
    content = tokens.count_tokens(SEED_PROMPT, "gpt-4")
    assert tokens.count_messages(("system", "user"), (5, content), "gpt-4") == (3 + 1 + 5) + (3 + 1 + 29)


@needs_vocabularies
def test_unknown_models_fall_back_to_the_configured_encoding(settings):
    settings.CHAT_TOKEN_ENCODING = "cl100k_base"
    assert tokens.encoding_name("llama3.2") == "cl100k_base"
    assert tokens.count_tokens(CHINESE, "llama3.2") == 16

    settings.CHAT_TOKEN_ENCODING = "o200k_base"
    assert tokens.encoding_name("mistral-small-latest") == "o200k_base"
    assert tokens.count_tokens(CHINESE, "mistral-small-latest") == 9


@needs_vocabularies
def test_special_token_text_typed_by_a_user_is_counted_as_text():
    assert tokens.count_tokens("<|endoftext|>", "gpt-4o-mini") == 7
    assert tokens.count_tokens("", "gpt-4o-mini") == 0


def test_a_prompt_with_an_uncounted_message_has_no_count():
    assert tokens.count_messages(("user", "assistant"), (5, None), "gpt-4o-mini") is None


def test_missing_vocabularies_give_no_counts_and_no_download(
    monkeypatch, tmp_path, fresh_vocabularies, no_downloads, caplog
):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    assert tokens.count_tokens(SEED_REPLY, "gpt-4o-mini") is None
    assert tokens.count_tokens(SEED_REPLY, "gpt-4") is None
    assert tokens.message_overhead("user", "gpt-4o-mini") is None
    assert tokens.count_messages(("user",), (29,), "gpt-4o-mini") is None
    tokens.warm_up("gpt-4o-mini")
    assert list(tmp_path.iterdir()) == []
    assert "fetch_vocabularies" in caplog.text


def test_an_empty_cache_variable_gives_no_counts_rather_than_a_download(
    monkeypatch, fresh_vocabularies, no_downloads
):
    """tiktoken treats an empty TIKTOKEN_CACHE_DIR as "no cache" and downloads on every load,
    whatever DATA_GYM_CACHE_DIR holds."""
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tokens.vocabulary_path("o200k_base").parent))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")

    assert tokens.count_tokens("hello", "gpt-4o-mini") is None


@needs_vocabularies
def test_counts_come_back_when_the_vocabulary_is_there(monkeypatch, fresh_vocabularies, no_downloads):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tokens.vocabulary_path("o200k_base").parent))

    assert tokens.count_tokens(SEED_REPLY, "gpt-4o-mini") == 299


def test_a_vocabulary_fetched_later_is_used_without_a_restart(fresh_vocabularies, monkeypatch, tmp_path):
    shared = tokens.vocabulary_path("o200k_base")
    if not shared.exists():
        pytest.skip("needs the o200k_base vocabulary to play the part of fetch_vocabularies")
    monkeypatch.setattr(tokens, "RETRY_MISSING_AFTER", 0.0)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tokens.count_tokens("hello", "gpt-4o-mini") is None
    (tmp_path / shared.name).write_bytes(shared.read_bytes())  # what fetch_vocabularies does
    assert tokens.count_tokens("hello", "gpt-4o-mini") == 1
