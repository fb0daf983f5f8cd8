"""Replies saved before issue #12 may hold provider usage with strings or floats for token
counts; the admin's usage report casts them to integers, which fails on PostgreSQL on every
load. Keep only the counts, as chat.upstream.chunks.token_usage now does for new replies."""

from django.db import migrations


def keep_token_counts_only(apps, schema_editor):
    from chat.upstream.chunks import token_usage

    Message = apps.get_model("chat", "Message")
    changed = []
    for message in Message.objects.exclude(usage=None).only("id", "usage").iterator(chunk_size=2000):
        cleaned = token_usage(message.usage)
        if cleaned != message.usage:
            message.usage = cleaned
            changed.append(message)
        if len(changed) >= 500:
            Message.objects.bulk_update(changed, ["usage"])
            changed = []
    Message.objects.bulk_update(changed, ["usage"])


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_transcript_access_search"),
    ]

    operations = [migrations.RunPython(keep_token_counts_only, migrations.RunPython.noop)]
