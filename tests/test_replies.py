"""Beginning replies: one streaming reply per conversation, and replies left by dead processes."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from chat import replies, tokens
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation():
    return Conversation.objects.create(user=User.objects.create_user("alice", password="x"))


def test_a_send_over_a_reply_left_by_a_dead_process_marks_it_interrupted_and_goes_on(conversation):
    Message.objects.create(conversation=conversation, role="user", content="Hi")
    dead = Message.objects.create(
        conversation=conversation, role="assistant", content="Half", status="streaming"
    )
    turn = replies.begin_turn(conversation, "Again", live_ids=[])
    dead.refresh_from_db()
    assert (dead.status, dead.content) == ("interrupted", "Half")
    assert turn.prompt[-2:] == [
        {"role": "assistant", "content": "Half"},
        {"role": "user", "content": "Again"},
    ]


def test_a_send_over_a_live_reply_is_busy_and_writes_nothing(conversation):
    question = Message.objects.create(conversation=conversation, role="user", content="Hi")
    live = Message.objects.create(conversation=conversation, role="assistant", content="", status="streaming")
    with pytest.raises(replies.Busy):
        replies.begin_turn(conversation, "Again", live_ids=[live.pk])
    assert list(Message.objects.values_list("id", flat=True)) == [question.pk, live.pk]
    with pytest.raises(replies.Busy):
        replies.begin_regenerate(conversation, live_ids=[live.pk])
    assert Message.objects.get(pk=live.pk).superseded is False  # the rolled-back attempt left no trace


def test_sends_saved_together_fail_alone_and_a_reply_begun_in_the_batch_is_live(conversation):
    other = Conversation.objects.create(user=conversation.user)
    empty = Conversation.objects.create(user=conversation.user)
    results = replies.begin_many(
        [
            (replies.begin_turn, conversation, "First"),
            (replies.begin_regenerate, empty),  # nothing to answer again: refused alone
            (replies.begin_turn, conversation, "Second, from another tab"),  # busy with "First"
            (replies.begin_turn, other, "Elsewhere"),
        ],
        live_ids=[],
    )
    assert [saved for saved, _ in results] == [True, False, False, True]
    assert isinstance(results[1][1], replies.NothingToRegenerate)
    assert isinstance(results[2][1], replies.Busy)
    first = Message.objects.get(pk=results[0][1].reply_id)
    assert first.status == "streaming"  # not taken for a dead process's reply
    assert list(conversation.messages.values_list("role", "content")) == [
        ("user", "First"),
        ("assistant", ""),
    ]
    assert not empty.messages.exists()
    assert other.messages.count() == 2


def test_a_batch_reads_each_conversation_as_it_is_now(conversation):
    """The batch's conversations are read in one query (replies._read_ahead): one deleted
    since its socket opened is refused alone, one whose model changed is answered by the
    new model, and the message and reply of each go to their own conversation."""
    changed = Conversation.objects.create(user=conversation.user, model="gpt-4o")
    gone = Conversation.objects.create(user=conversation.user)
    Conversation.objects.filter(pk=changed.pk).update(model="gpt-4o-mini")  # the socket's copy is stale
    Conversation.objects.filter(pk=gone.pk).delete()
    results = replies.begin_many(
        [
            (replies.begin_turn, conversation, "Here"),
            (replies.begin_turn, gone, "Lost"),
            (replies.begin_turn, changed, "There"),
        ],
        live_ids=[],
    )
    assert [saved for saved, _ in results] == [True, False, True]
    assert isinstance(results[1][1], Conversation.DoesNotExist)
    assert results[2][1].model == "gpt-4o-mini"
    for chat, text in ((conversation, "Here"), (changed, "There")):
        question, reply = chat.messages.order_by("id")
        assert (question.content, reply.parent_id, reply.status) == (text, question.pk, "streaming")
    assert not Message.objects.filter(content="Lost").exists()


def final(content: str, target, **extra) -> dict:
    """A finished reply's fields, as chat.generation passes them to replies.finish_many."""
    return {"usage": None, **extra} | dict(
        status="finished",
        finish_reason="stop",
        content=content,
        reasoning="",
        refusal="",
        seq=2,
        ttft_ms=1.5,
        duration_ms=20.0,
        error_code="",
        error_detail="",
        target=target,
    )


def test_replies_finished_together_are_saved_and_one_bad_row_does_not_lose_the_others(conversation):
    from chat.providers import resolve

    other = Conversation.objects.create(user=conversation.user)
    kept = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", model="gpt-4o-mini"
    )
    bad = Message.objects.create(
        conversation=other, role="assistant", status="streaming", model="gpt-4o-mini"
    )
    target = resolve(conversation)

    results = replies.finish_many(
        [
            (kept.pk, final("Hello there", target, model="gpt-4o-mini-2024-07-18")),
            (bad.pk, final("Lost?", target, usage={"prompt_tokens": object()})),  # cannot be stored as JSON
        ]
    )
    assert results[0]["completion_tokens"] == 2 and isinstance(results[1], TypeError)
    kept.refresh_from_db()
    assert (kept.status, kept.content, kept.completion_tokens, kept.lease_until) == (
        "finished",
        "Hello there",
        2,
        None,
    )
    assert kept.model == "gpt-4o-mini-2024-07-18"  # what the provider said it ran
    bad.refresh_from_db()
    assert bad.status == "streaming"  # left for recovery to mark interrupted, not half-written

    replies.finish_many([(bad.pk, final("Saved", target))])
    bad.refresh_from_db()
    assert (bad.status, bad.content, bad.model) == ("finished", "Saved", "gpt-4o-mini")  # none reported: kept


# -- prompt token counts, from the running total --------------------------------------


def finished(reply_id: int, content: str) -> None:
    from chat.providers import resolve

    reply = Message.objects.select_related("conversation").get(pk=reply_id)
    (saved,) = replies.finish_many([(reply_id, final(content, resolve(reply.conversation)))])
    assert not isinstance(saved, Exception)


def standing(conversation, before_id: int | None = None) -> tuple[int | None, int]:
    """Tokens (framing included) and number of the conversation's messages as it stands,
    summed over every message's own count: what a running total must equal."""
    history = (
        Message.objects.current()
        .filter(conversation=conversation)
        .exclude(status="streaming")
        .exclude(role="assistant", content="")
    )
    if before_id is not None:
        history = history.filter(id__lt=before_id)
    roles, counts = zip(*history.values_list("role", "token_count"), strict=True) if history else ((), ())
    return tokens.count_messages(roles, counts, "gpt-4o-mini"), len(roles)


SYSTEM = "Answer in one sentence."


def assert_counted(conversation, turn, messages) -> None:
    """The turn's prompt count is the whole conversation's, and `messages` carry running
    totals equal to a recount of what stands before each."""
    system = tokens.count_messages(("system",), (tokens.count_tokens(SYSTEM, "gpt-4o-mini"),), "gpt-4o-mini")
    assert turn.prompt_tokens == tokens.REPLY_PRIMING + system + standing(conversation)[0]
    for message in messages:
        message.refresh_from_db()
        assert (message.tokens_before, message.messages_before) == standing(conversation, message.pk), message


def test_prompt_counts_stay_exact_through_edits_regenerations_empty_and_interrupted_replies(conversation):
    conversation.system_prompt = SYSTEM
    conversation.save()
    steps = [
        (replies.begin_turn, ("What is SQLite?",), "An embedded database, in one file."),
        (replies.begin_turn, ("And PostgreSQL?",), ""),  # an empty reply is left out of the history
        (replies.begin_regenerate, (), "A database server."),
        (replies.begin_edit, ("And PostgreSQL, in short?",), "A server that many processes share."),
        (replies.begin_turn, ("Which for a team of ten?",), None),  # left streaming by a process that died
        (replies.begin_turn, ("Still there?",), "Yes."),
    ]
    for begin, args, answer in steps:
        turn = begin(conversation, *args, live_ids=[])
        current = (
            Message.objects.current().filter(conversation=conversation).exclude(role="assistant", content="")
        )
        assert_counted(conversation, turn, [*current, Message.objects.get(pk=turn.reply_id)])
        if answer is None:
            Message.objects.filter(pk=turn.reply_id).update(content="PostgreSQL, once you")
        else:
            finished(turn.reply_id, answer)
    assert Message.objects.filter(status="interrupted").count() == 1
    assert conversation.messages.filter(superseded=True).count() == 3


def test_prompt_counts_stay_exact_after_a_message_is_deleted_or_on_rows_without_a_running_total(conversation):
    conversation.system_prompt = SYSTEM
    conversation.save()
    for question in ("One?", "Two?", "Three?"):
        turn = replies.begin_turn(conversation, question, live_ids=[])
        finished(turn.reply_id, f"The answer to {question}")
    conversation.messages.filter(content="Two?").delete()  # staff delete it in the admin
    turn = replies.begin_turn(conversation, "Four?", live_ids=[])
    assert_counted(conversation, turn, conversation.messages.filter(pk__gte=turn.user_message["id"]))
    finished(turn.reply_id, "Four.")

    conversation.messages.update(tokens_before=None, messages_before=None)  # rows from an older version
    turn = replies.begin_turn(conversation, "Five?", live_ids=[])
    assert_counted(conversation, turn, conversation.messages.filter(pk__gte=turn.user_message["id"]))


# -- checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("unstorable", ["\ud83d", "\x00"], ids=["lone-surrogate", "nul-fails-on-postgresql"])
def test_a_reply_whose_text_cannot_be_stored_fails_no_other_replys_checkpoint_or_lease(
    conversation, unstorable
):
    lapsing = timezone.now() - timedelta(seconds=1)
    healthy, bad, quiet = (
        Message.objects.create(
            conversation=Conversation.objects.create(user=conversation.user),
            role="assistant",
            status="streaming",
            lease_until=lapsing,
        )
        for _ in range(3)
    )
    failed = replies.checkpoint(
        [
            {"id": bad.pk, "seq": 2, "content": "Bad " + unstorable, "reasoning": "", "refusal": ""},
            {"id": healthy.pk, "seq": 3, "content": "Saved so far", "reasoning": "Hm", "refusal": ""},
        ],
        [quiet.pk],  # nothing new to save: only its lease is renewed
    )
    healthy.refresh_from_db()
    assert (healthy.content, healthy.reasoning, healthy.seq) == ("Saved so far", "Hm", 3)
    for reply in (healthy, bad, quiet):
        reply.refresh_from_db()
        assert reply.lease_until > timezone.now()  # every live reply keeps its lease
    sqlite_takes_it = unstorable == "\x00" and connection.vendor == "sqlite"
    assert [reply_id for reply_id, _ in failed] == ([] if sqlite_takes_it else [bad.pk])
