"""Prompt-token counting cost at turn 1 vs turn 200 of a conversation, in-process.

Run by the benchmark as `python -m bench.counting RUNS` (its own process, so
Django is configured here and nowhere else): a temporary SQLite database, a
conversation with no earlier turns and one with 199 (user + assistant each, written
through begin_turn and finish_many as the app writes them), then the median time of
`chat.replies.begin_turn` on each, rolled back every time so each run sees the same
history. The counting step alone (counting the new message's tokens, adding it to the
loaded history with its running total, then `chat.replies._total` over the history, which
begin_turn makes the prompt's count from) is timed too, since
begin_turn also reads the history, builds the request and writes two rows.
Prints one JSON object.
"""

import json
import os
import sys
import tempfile
import time

WORDS = (
    "the model answers with a few paragraphs about databases, queues and latency, "
    "citing numbers and code where it helps; "
).split()


def text(words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(words))


def final(content: str, target) -> dict:
    """A finished reply's fields, as chat.generation passes them to replies.finish_many."""
    return dict(
        status="finished",
        finish_reason="stop",
        content=content,
        reasoning="",
        refusal="",
        seq=1,
        usage=None,
        ttft_ms=1.0,
        duration_ms=2.0,
        error_code="",
        error_detail="",
        target=target,
    )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    data = tempfile.mkdtemp(prefix="chat-bench-count-")
    os.environ.update(
        CHAT_DATA_DIR=data,
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        CHAT_MODEL="gpt-4o-mini",
        DJANGO_LOG_LEVEL="WARNING",
    )
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from chat import providers, replies, tokens
    from chat.models import Conversation

    call_command("migrate", verbosity=0)
    model = "gpt-4o-mini"
    if tokens.get_encoding(tokens.encoding_name(model)) is None:
        print(json.dumps({"skipped": "the tiktoken vocabulary is not in TIKTOKEN_CACHE_DIR"}))
        return
    user = get_user_model().objects.create_user("counting")
    result = {"runs": runs}
    for turns in (1, 200):
        conversation = Conversation.objects.create(user=user)
        for i in range(turns - 1):  # through the app's own path, so rows carry what it stores
            turn = replies.begin_turn(conversation, text(40, i))
            replies.finish_many([(turn.reply_id, final(text(250, i + 3), turn.target))])
        content = text(40, 999)

        begin, count = [], []
        for _ in range(runs):
            with transaction.atomic():
                t0 = time.perf_counter_ns()
                replies.begin_turn(conversation, content)
                begin.append(time.perf_counter_ns() - t0)
                transaction.set_rollback(True)
        history = replies._history(conversation.id)
        target = providers.resolve(conversation)
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            content_tokens = tokens.count_tokens(content, target.model, target.encoding)
            replies._append(history, "user", content, content_tokens, target)
            replies._total(history, target)  # the prompt's tokens before priming and system prompt
            count.append(time.perf_counter_ns() - t0)
            history.pop()
        result[f"turn_{turns}"] = {
            "prior_messages": len(history),
            "begin_turn_ms": sorted(begin)[len(begin) // 2] / 1e6,
            "counting_ms": sorted(count)[len(count) // 2] / 1e6,
        }
    one, many = result["turn_1"], result["turn_200"]
    result["begin_turn_ratio"] = round(many["begin_turn_ms"] / one["begin_turn_ms"], 2)
    result["counting_ratio"] = round(many["counting_ms"] / one["counting_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
