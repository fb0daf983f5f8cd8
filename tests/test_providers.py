"""Providers and models configured in the admin: styles, fallbacks, trimming, key handling."""

import json

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from chat import tokens
from chat.models import ChatModel, Conversation, Message, Provider
from tests.chat_sockets import frames_until, open_socket, text_of
from tests.upstream_server import Reply, sse

pytestmark = pytest.mark.django_db(transaction=True)
STORED_KEY = "sk-stored-provider-key-987654"


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def local_provider(upstream):
    return Provider.objects.create(name="local vLLM", base_url=upstream.base_url, api_key=STORED_KEY)


async def chat_once(conversation, user, content="Hi"):
    _, socket = await open_socket(conversation.id, user)
    await socket.send_json_to({"type": "send", "content": content})
    frames = await frames_until(socket, "done")
    await socket.disconnect()
    return frames


async def test_a_conversation_uses_the_admin_default_model_and_its_provider_key(
    upstream, local_provider, alice
):
    await ChatModel.objects.acreate(provider=local_provider, name="qwen2.5", is_default=True)
    conversation = await Conversation.objects.acreate(user=alice)
    upstream.queue(
        Reply(
            body=sse({"choices": [{"index": 0, "delta": {"content": "from qwen"}, "finish_reason": "stop"}]})
        )
    )
    frames = await chat_once(conversation, alice)
    assert text_of(frames) == "from qwen"
    request = upstream.requests[0]
    assert request["json"]["model"] == "qwen2.5"
    assert request["headers"]["authorization"] == f"Bearer {STORED_KEY}"
    assert STORED_KEY not in json.dumps(frames)


async def test_a_key_can_come_from_a_named_environment_variable(upstream, alice, monkeypatch):
    monkeypatch.setenv("CHAT_PROVIDER_KEY_TEAM", "sk-from-the-environment-1234")
    source = await Provider.objects.acreate(
        name="env key", base_url=upstream.base_url, api_key_env="CHAT_PROVIDER_KEY_TEAM"
    )
    await ChatModel.objects.acreate(provider=source, name="m", is_default=True)
    conversation = await Conversation.objects.acreate(user=alice)
    upstream.queue(
        Reply(body=sse({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}))
    )
    await chat_once(conversation, alice)
    assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-from-the-environment-1234"


async def test_legacy_completions_models_stream_choices_text(upstream, local_provider, alice):
    await ChatModel.objects.acreate(
        provider=local_provider, name="text-davinci-003", api_style="completions", is_default=True
    )
    conversation = await Conversation.objects.acreate(user=alice)
    chunks = [
        {"choices": [{"index": 0, "text": piece, "finish_reason": None}]} for piece in ["Once ", "upon"]
    ]
    chunks.append({"choices": [{"index": 0, "text": " a time", "finish_reason": "stop"}]})
    upstream.queue(Reply(body=sse(*chunks)))
    frames = await chat_once(conversation, alice, "Tell a story")
    assert text_of(frames) == "Once upon a time"
    request = upstream.requests[0]
    assert request["path"] == "/v1/completions"
    assert request["json"]["prompt"].endswith("User: Tell a story\n\nAssistant:")


async def test_models_that_cannot_stream_get_one_json_reply(upstream, local_provider, alice):
    await ChatModel.objects.acreate(provider=local_provider, name="batch-only", stream=False, is_default=True)
    conversation = await Conversation.objects.acreate(user=alice)
    body = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "All at once."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4},
    }
    upstream.queue(Reply(headers={"content-type": "application/json"}, body=[json.dumps(body).encode()]))
    frames = await chat_once(conversation, alice)
    assert text_of(frames) == "All at once." and frames[-1]["status"] == "finished"
    assert upstream.requests[0]["json"]["stream"] is False
    assert "stream_options" not in upstream.requests[0]["json"]
    reply = await Message.objects.aget(role="assistant")
    assert reply.usage == {"prompt_tokens": 9, "completion_tokens": 4}


@pytest.mark.skipif(
    not tokens.vocabulary_path("o200k_base").exists(), reason="needs the o200k_base vocabulary"
)
async def test_history_is_trimmed_oldest_first_to_the_context_window(upstream, local_provider, alice):
    await ChatModel.objects.acreate(
        provider=local_provider, name="small", context_window=200, max_reply_tokens=50, is_default=True
    )
    conversation = await Conversation.objects.acreate(user=alice, system_prompt="Be kind.")
    for n in range(6):
        words = f"old message {n} " + "filler " * 30
        await Message.objects.acreate(
            conversation=conversation,
            role="user",
            content=words,
            token_count=tokens.count_tokens(words, "small"),
        )
    upstream.queue(
        Reply(body=sse({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}))
    )
    frames = await chat_once(conversation, alice, "newest")
    start = frames[0]
    sent = upstream.requests[0]["json"]["messages"]
    assert start["trimmed"] > 0 and len(sent) == 6 - start["trimmed"] + 2
    assert sent[0] == {"role": "system", "content": "Be kind."} and sent[-1] == {
        "role": "user",
        "content": "newest",
    }
    assert sent[1]["content"].startswith(f"old message {start['trimmed']} ")  # the oldest went first
    assert start["prompt_tokens"] <= 150


def test_the_admin_never_shows_a_stored_key_and_blank_keeps_it(client, local_provider):
    staff = User.objects.create_superuser("charlie", password="x")
    client.force_login(staff)
    url = reverse("admin:chat_provider_change", args=[local_provider.pk])
    page = client.get(url).content.decode()
    assert STORED_KEY not in page
    form = {
        "name": "renamed",
        "base_url": local_provider.base_url,
        "api_key": "",
        "api_key_env": "",
        "extra_headers": "{}",
        "enabled": "on",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
    }
    assert client.post(url, form).status_code == 302
    local_provider.refresh_from_db()
    assert (local_provider.name, local_provider.api_key) == ("renamed", STORED_KEY)
    client.post(url, {**form, "clear_api_key": "on"})
    local_provider.refresh_from_db()
    assert local_provider.api_key == ""


def test_fetch_models_adds_what_the_provider_lists(client, upstream, local_provider):
    staff = User.objects.create_superuser("charlie", password="x")
    client.force_login(staff)
    listing = {
        "object": "list",
        "data": [{"id": "llama3.2", "object": "model"}, {"id": "qwen2.5", "object": "model"}],
    }
    upstream.queue(Reply(headers={"content-type": "application/json"}, body=[json.dumps(listing).encode()]))
    response = client.post(
        reverse("admin:chat_provider_changelist"),
        {"action": "fetch_models", "_selected_action": [local_provider.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert sorted(local_provider.models.values_list("name", flat=True)) == ["llama3.2", "qwen2.5"]
    assert upstream.requests[0]["path"] == "/v1/models"
    assert STORED_KEY not in response.content.decode()
