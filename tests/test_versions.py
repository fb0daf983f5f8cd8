"""Versions of messages (issue #14): the message tree, editing any user message, switching
branches, and what the model is sent afterwards (chat.versions, chat.replies)."""

import importlib
import json

import pytest
from django.contrib.auth.models import User

from chat import replies, versions
from chat.models import Conversation, Message
from chat.protocol import BadFrame, parse
from tests.chat_sockets import frames_until, open_socket, receive_frame, text_of
from tests.upstream_server import Reply, chat_chunks, held_reply, sse


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


def answer(turn: replies.Turn, text: str) -> int:
    """Finish the reply a begin_* call started, as a generation would."""
    Message.objects.filter(pk=turn.reply_id).update(status="finished", content=text, token_count=len(text))
    return turn.reply_id


def shown(conversation) -> list[str]:
    return list(conversation.messages.current().values_list("content", flat=True))


def user_ids(conversation) -> list[int]:
    return list(conversation.messages.current().filter(role="user").values_list("id", flat=True))


def talk(conversation, *questions) -> list[replies.Turn]:
    turns = []
    for number, question in enumerate(questions, 1):
        turn = replies.begin_turn(conversation, question)
        answer(turn, f"A{number}")
        turns.append(turn)
    return turns


# -- the tree -----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_links_each_message_to_the_one_before_it(conversation):
    first, second = talk(conversation, "Q1", "Q2")
    messages = list(conversation.messages.order_by("id"))
    assert [m.parent_id for m in messages] == [None, messages[0].id, messages[1].id, messages[2].id]
    assert versions.of(conversation.id, [m.id for m in messages]) == {}  # one version each: no switcher


@pytest.mark.django_db
def test_editing_a_middle_message_keeps_the_old_branch_as_a_version(conversation):
    talk(conversation, "Q1", "Q2", "Q3")
    q2 = user_ids(conversation)[1]
    turn = replies.begin_edit(conversation, "Q2 again", message_id=q2)
    answer(turn, "A2'")
    assert shown(conversation) == ["Q1", "A1", "Q2 again", "A2'"]
    assert turn.replaces_user == q2
    assert turn.prompt == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2 again"},
    ]
    edited = turn.user_message["id"]
    assert Message.objects.get(pk=edited).parent_id == Message.objects.get(pk=q2).parent_id
    found = versions.of(conversation.id, [q2, edited])
    assert found[edited] == versions.Versions(index=2, count=2, previous=q2, next=None)
    # The old branch is all there, below the old message.
    versions.switch(conversation.id, q2)
    assert shown(conversation) == ["Q1", "A1", "Q2", "A2", "Q3", "A3"]


@pytest.mark.django_db
def test_editing_the_first_message_makes_a_version_of_it(conversation):
    talk(conversation, "Q1", "Q2")
    q1 = user_ids(conversation)[0]
    answer(replies.begin_edit(conversation, "Q1 again", message_id=q1), "B1")
    new = user_ids(conversation)[0]
    assert versions.of(conversation.id, [new])[new] == versions.Versions(2, 2, q1, None)
    versions.switch(conversation.id, q1)
    assert shown(conversation) == ["Q1", "A1", "Q2", "A2"]


@pytest.mark.django_db
def test_only_a_user_message_on_the_branch_shown_can_be_edited(conversation, alice):
    talk(conversation, "Q1")
    reply = conversation.messages.get(role="assistant").id
    other = Conversation.objects.create(user=User.objects.create_user("bob", password="x"))
    (bobs,) = talk(other, "Bob's question")
    for message_id in (reply, bobs.user_message["id"], 10**9):
        with pytest.raises(replies.NotEditable):
            replies.begin_edit(conversation, "Nope", message_id=message_id)
    assert shown(conversation) == ["Q1", "A1"]


@pytest.mark.django_db
def test_regenerating_twice_makes_three_versions_and_switching_shows_each(conversation):
    (turn,) = talk(conversation, "Q")
    first = turn.reply_id
    second = answer(replies.begin_regenerate(conversation), "A1b")
    third = answer(replies.begin_regenerate(conversation), "A1c")
    assert versions.of(conversation.id, [third])[third] == versions.Versions(3, 3, second, None)
    assert versions.switch(conversation.id, first) == [turn.user_message["id"], first]
    assert shown(conversation) == ["Q", "A1"]
    assert versions.of(conversation.id, [first])[first] == versions.Versions(1, 3, None, second)


@pytest.mark.django_db
def test_the_next_send_continues_the_branch_shown_with_true_running_totals(conversation):
    talk(conversation, "Q1", "Q2")
    q2 = user_ids(conversation)[1]
    answer(replies.begin_edit(conversation, "Q2 longer, much longer", message_id=q2), "B2 longer")
    versions.switch(conversation.id, q2)  # back to the first Q2
    turn = replies.begin_turn(conversation, "Q3")
    assert [m["content"] for m in turn.prompt] == ["Q1", "A1", "Q2", "A2", "Q3"]
    q3 = Message.objects.get(pk=turn.user_message["id"])
    a2 = conversation.messages.get(content="A2")
    assert q3.parent_id == a2.id
    assert q3.messages_before == 4
    # The running total is what summing the branch's stored counts gives.
    assert q3.tokens_before == replies._tally(replies._history(conversation.id, a2.id), turn.target)


@pytest.mark.django_db
def test_switching_goes_to_the_most_recent_branch_below_a_version(conversation):
    talk(conversation, "Q1", "Q2")
    q1 = user_ids(conversation)[0]
    answer(replies.begin_edit(conversation, "Q1b", message_id=q1), "B1")
    answer(replies.begin_turn(conversation, "Q2b"), "B2")
    versions.switch(conversation.id, q1)
    assert shown(conversation) == ["Q1", "A1", "Q2", "A2"]
    q1b = conversation.messages.get(content="Q1b").id
    versions.switch(conversation.id, q1b)
    assert shown(conversation) == ["Q1b", "B1", "Q2b", "B2"]


@pytest.mark.django_db
def test_switching_is_refused_while_a_reply_streams_and_for_unknown_messages(conversation):
    (turn,) = talk(conversation, "Q")
    first = turn.reply_id
    streaming = replies.begin_regenerate(conversation)
    with pytest.raises(replies.Busy):
        versions.switch(conversation.id, first, live_ids=[streaming.reply_id])
    assert shown(conversation) == ["Q", ""]
    answer(streaming, "A again")
    with pytest.raises(versions.NotAVersion):
        versions.switch(conversation.id, 10**9)
    other = Conversation.objects.create(user=conversation.user)
    with pytest.raises(versions.NotAVersion):
        versions.switch(other.id, first)  # a message of another conversation
    assert shown(conversation) == ["Q", "A again"]


@pytest.mark.django_db
def test_the_migration_links_existing_messages(conversation):
    """Rows from before the tree: the current branch in a chain, earlier replies under their
    question, an earlier version of an edited middle message left without a place."""
    rows = [
        ("user", "Q1", False),
        ("assistant", "A1 old", True),
        ("assistant", "A1", False),
        ("user", "Q2 old", True),
        ("assistant", "A2 old", True),
        ("user", "Q2", False),
        ("assistant", "A2", False),
    ]
    made = [
        Message.objects.create(conversation=conversation, role=role, content=text, superseded=old)
        for role, text, old in rows
    ]
    migration = importlib.import_module("chat.migrations.0009_message_versions")
    from django.apps import apps

    migration.backfill_parents(apps, None)
    parents = dict(Message.objects.values_list("content", "parent_id"))
    ids = {m.content: m.id for m in made}
    assert parents == {
        "Q1": None,
        "A1 old": ids["Q1"],
        "A1": ids["Q1"],
        "Q2 old": None,
        "A2 old": ids["Q2 old"],
        "Q2": ids["A1"],
        "A2": ids["Q2"],
    }
    found = versions.of(conversation.id, [ids["A1"], ids["Q2"]])
    assert found == {ids["A1"]: versions.Versions(2, 2, ids["A1 old"], None)}  # Q2: no switcher
    with pytest.raises(versions.NotAVersion):
        versions.switch(conversation.id, ids["Q2 old"])


# -- the frames -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("message_id", [None, 0, -3, "12", 1.5, True, 2**63])
def test_a_switch_needs_a_message_id_and_an_edit_a_good_one_if_any(settings, message_id):
    fields = {} if message_id is None else {"message_id": message_id}
    with pytest.raises(BadFrame) as refused:
        parse(json.dumps({"type": "switch", **fields}), None)
    assert refused.value.code == "bad_field"
    edit = {"type": "edit", "content": "Hi", **fields}
    if message_id is None:  # the last user message, as before versions
        assert parse(json.dumps(edit), None).message_id is None
    else:
        with pytest.raises(BadFrame):
            parse(json.dumps(edit), None)
    assert parse(json.dumps({"type": "switch", "message_id": 7, "id": "r"}), None).message_id == 7


# -- over the socket ------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_a_switch_is_shown_in_every_tab_and_the_next_send_follows_it(use_upstream, conversation, alice):
    use_upstream.queue(
        Reply(body=sse(*chat_chunks(["Cats purr."]))),
        Reply(body=sse(*chat_chunks(["Dogs bark."]))),
        Reply(body=sse(*chat_chunks(["Yes."]))),
    )
    _, tab = await open_socket(conversation.id, alice)
    _, other_tab = await open_socket(conversation.id, alice)
    await tab.send_json_to({"type": "send", "content": "Cats?"})
    first = await frames_until(tab, "done")
    await frames_until(other_tab, "done")
    cats = first[0]["user_message"]["id"]
    await tab.send_json_to({"type": "edit", "message_id": cats, "content": "Dogs?"})
    assert text_of(await frames_until(tab, "done")) == "Dogs bark."
    await frames_until(other_tab, "done")

    await tab.send_json_to({"type": "switch", "message_id": cats, "id": "back-to-cats"})
    for socket in (tab, other_tab):
        assert await receive_frame(socket) == {
            "type": "branch",
            "message_id": cats,
            "request_id": "back-to-cats",
        }
    await other_tab.send_json_to({"type": "send", "content": "Sure?"})
    await frames_until(other_tab, "done")
    assert use_upstream.requests[-1]["json"]["messages"] == [
        {"role": "user", "content": "Cats?"},
        {"role": "assistant", "content": "Cats purr."},
        {"role": "user", "content": "Sure?"},
    ]
    await tab.disconnect()
    await other_tab.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_switch_while_a_reply_streams_is_refused(use_upstream, conversation, alice):
    held, release = held_reply(["Slow"], [" end."])
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Fast."]))), held)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Q"})
    first = (await frames_until(socket, "done"))[-1]["message_id"]
    await socket.send_json_to({"type": "regenerate"})
    await frames_until(socket, "start")
    await socket.send_json_to({"type": "switch", "message_id": first})
    refused = await frames_until(socket, "error")
    assert refused[-1]["code"] == "busy"
    release.set()
    await frames_until(socket, "done")
    assert (await Message.objects.aget(pk=first)).superseded  # still an earlier version
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_another_users_message_cannot_be_switched_to_or_edited(use_upstream, conversation, alice):
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Secret answer."]))))
    bob = await User.objects.acreate_user("bob", password="x")
    bobs = await Conversation.objects.acreate(user=bob)
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "Alice's question"})
    alices = (await frames_until(socket, "done"))[0]["user_message"]["id"]
    await socket.disconnect()
    _, intruder = await open_socket(bobs.id, bob)
    await intruder.send_json_to({"type": "switch", "message_id": alices})
    assert (await receive_frame(intruder))["code"] == "unknown_message"
    await intruder.send_json_to({"type": "edit", "message_id": alices, "content": "Mine now"})
    assert (await receive_frame(intruder))["code"] == "unknown_message"
    await intruder.send_json_to({"type": "switch", "message_id": True})
    assert (await receive_frame(intruder))["code"] == "bad_field"
    await intruder.disconnect()
    assert await Message.objects.filter(conversation=bobs).acount() == 0
    assert not (await Message.objects.aget(pk=alices)).superseded


# -- the page's list --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_message_list_says_where_each_message_stands_among_its_versions(client, conversation, alice):
    (turn,) = talk(conversation, "Q")
    answer(replies.begin_regenerate(conversation), "A again")
    client.force_login(alice)
    listed = client.get(f"/c/{conversation.id}/messages/").json()["messages"]
    assert [(m["content"], m["versions"]) for m in listed] == [
        ("Q", None),
        ("A again", {"index": 2, "count": 2, "previous": turn.reply_id, "next": None}),
    ]
    page = client.get(f"/c/{conversation.id}/").content.decode()
    assert 'data-testid="version-label">2/2<' in page
