"""What a team running the site relies on: health checks, retention, backups."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="x")


def test_healthz_reports_the_database_and_channel_layer(client):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200 and body["ok"] is True
    assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]


def test_healthz_says_503_when_the_channel_layer_is_down(client, settings):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.clear()
    try:
        response = client.get("/healthz")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"]["ok"] is False
    assert response.json()["checks"]["database"]["ok"] is True


def test_purge_deletes_only_conversations_older_than_the_limit(alice):
    old = Conversation.objects.create(user=alice, updated_at=timezone.now() - timedelta(days=40))
    Message.objects.create(conversation=old, role="user", content="old")
    recent = Conversation.objects.create(user=alice)
    call_command("purge_conversations", "--older-than", "30", "--dry-run")
    assert Conversation.objects.count() == 2
    call_command("purge_conversations", "--older-than", "30")
    assert list(Conversation.objects.all()) == [recent]
    assert not Message.objects.filter(content="old").exists()
    with pytest.raises(CommandError):
        call_command("purge_conversations", "--older-than", "0")


def test_export_writes_every_conversation_for_backup(alice, tmp_path):
    for n in range(3):
        conversation = Conversation.objects.create(user=alice, title=f"chat {n}")
        Message.objects.create(conversation=conversation, role="user", content=f"hello {n}")
    target = tmp_path / "backup.jsonl"
    call_command("export_conversations", "--output", str(target))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [c["title"] for c in lines] == ["chat 0", "chat 1", "chat 2"]
    assert lines[2]["messages"][0]["content"] == "hello 2" and lines[0]["user"] == "alice"
