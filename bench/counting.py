"""Prompt-token counting cost at turn 1 vs turn 200 of a conversation, in-process.

Run by the benchmark as `python -m bench.counting RUNS` (its own process, so
Django is configured here and nowhere else): a temporary SQLite database, a
conversation with no earlier turns and one with 199 (user + assistant each),
then the median time of `chat.replies.begin_turn` on each, rolled back every
time so each run sees the same history. The counting step alone (counting the
new message, then `chat.replies._count` over the stored counts of the loaded
history) is timed too, since begin_turn also reads the history, builds the
request and writes two rows.
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


def _target(conversation, model: str) -> tuple[object, tuple]:
    """What chat.replies._prompt takes: a providers.Target where the app has providers."""
    try:
        from chat import providers
    except ImportError:
        return model, (model,)
    target = providers.resolve(conversation)
    return target, (target.model, target.encoding)


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

    from chat import replies, tokens
    from chat.models import Conversation, Message

    call_command("migrate", verbosity=0)
    model = "gpt-4o-mini"
    if tokens.get_encoding(tokens.encoding_name(model)) is None:
        print(json.dumps({"skipped": "the tiktoken vocabulary is not in TIKTOKEN_CACHE_DIR"}))
        return
    user = get_user_model().objects.create_user("counting")
    result = {"runs": runs}
    for turns in (1, 200):
        conversation = Conversation.objects.create(user=user)
        rows = []
        for i in range(turns - 1):
            question, answer = text(40, i), text(250, i + 3)
            rows.append(
                Message(
                    conversation=conversation,
                    role="user",
                    content=question,
                    token_count=tokens.count_tokens(question, model),
                )
            )
            rows.append(
                Message(
                    conversation=conversation,
                    role="assistant",
                    content=answer,
                    token_count=tokens.count_tokens(answer, model),
                )
            )
        Message.objects.bulk_create(rows)
        content = text(40, 999)

        begin, count = [], []
        for _ in range(runs):
            with transaction.atomic():
                t0 = time.perf_counter_ns()
                replies.begin_turn(conversation, content)
                begin.append(time.perf_counter_ns() - t0)
                transaction.set_rollback(True)
        history = replies._history(conversation.id)
        target, count_args = _target(conversation, model)
        count_prompt = getattr(replies, "_count", None)  # the counting step alone, where the app has one
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            content_tokens = tokens.count_tokens(content, *count_args)
            if count_prompt is not None:
                count_prompt([*history, ("user", content, content_tokens)], target)
            else:
                replies._prompt(conversation, [*history, ("user", content, content_tokens)], target)
            count.append(time.perf_counter_ns() - t0)
        result[f"turn_{turns}"] = {
            "prior_messages": len(rows),
            "begin_turn_ms": sorted(begin)[len(begin) // 2] / 1e6,
            "counting_ms": sorted(count)[len(count) // 2] / 1e6,
        }
    one, many = result["turn_1"], result["turn_200"]
    result["begin_turn_ratio"] = round(many["begin_turn_ms"] / one["begin_turn_ms"], 2)
    result["counting_ratio"] = round(many["counting_ms"] / one["counting_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
