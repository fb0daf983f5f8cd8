"""Token budgets and send rates, checked before the upstream is called."""

import pytest
from django.contrib.auth.models import Group, User

from chat.models import Budget, Conversation, Message
from tests.chat_sockets import frames_until, open_socket, receive_frame
from tests.upstream_server import Reply, chat_chunks, sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


def spent(conversation, prompt, completion):
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="x",
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


async def test_a_spent_daily_budget_stops_sends_before_anything_is_written(use_upstream, alice):
    conversation = await Conversation.objects.acreate(user=alice)
    await Budget.objects.acreate(user=alice, tokens_per_day=100)
    await Message.objects.acreate(
        conversation=conversation, role="assistant", content="x", prompt_tokens=60, completion_tokens=40
    )
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "one more?"})
    error = await receive_frame(socket)
    assert error["code"] == "budget_exceeded" and "today" in error["detail"]
    assert await Message.objects.acount() == 1 and use_upstream.requests == []
    await socket.disconnect()


async def test_the_remaining_budget_is_reported_with_each_reply(use_upstream, alice):
    conversation = await Conversation.objects.acreate(user=alice)
    await Budget.objects.acreate(user=alice, tokens_per_day=1000, tokens_per_month=5000)
    await Message.objects.acreate(
        conversation=conversation, role="assistant", content="x", prompt_tokens=100, completion_tokens=50
    )
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Hi"]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "hello"})
    start = (await frames_until(socket, "start"))[-1]
    assert start["budget"] == {"tokens_left_today": 850, "tokens_left_this_month": 4850}
    await frames_until(socket, "done")
    await socket.disconnect()


async def test_sends_per_minute_are_limited(use_upstream, alice):
    conversation = await Conversation.objects.acreate(user=alice)
    group = await Group.objects.acreate(name="interns")
    await alice.groups.aadd(group)
    await Budget.objects.acreate(group=group, sends_per_minute=1)
    use_upstream.queue(Reply(body=sse(*chat_chunks(["Hi"]))))
    _, socket = await open_socket(conversation.id, alice)
    await socket.send_json_to({"type": "send", "content": "first"})
    await frames_until(socket, "done")
    await socket.send_json_to({"type": "send", "content": "second"})
    error = await receive_frame(socket)
    assert error["code"] == "send_rate_exceeded"
    assert len(use_upstream.requests) == 1
    await socket.disconnect()


def test_a_users_own_budget_wins_and_groups_give_the_most_generous(alice):
    from chat.budgets import limits_for

    small, large = Group.objects.create(name="small"), Group.objects.create(name="large")
    alice.groups.add(small, large)
    Budget.objects.create(group=small, tokens_per_day=10)
    Budget.objects.create(group=large, tokens_per_day=1000, tokens_per_month=None)
    assert limits_for(alice.pk).tokens_per_day == 1000
    Budget.objects.create(user=alice, tokens_per_day=5)
    assert limits_for(alice.pk).tokens_per_day == 5
