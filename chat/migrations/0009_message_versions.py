"""Messages form a tree (issue #14): `parent` is the message before one on its branch, and
the children of one parent are versions of each other.

Existing rows are given their parents where they are known for sure: each message on a
conversation's current branch follows the one before it, and an earlier version of a
reply answers the nearest user message before it (a reply was only ever written right
after its question, or by regenerating the last one). An earlier version of an edited
user message keeps no parent unless it was the conversation's first message: which
reply it followed is not recorded, so it shows no version switcher.
"""

import django.db.models.deletion
from django.db import migrations, models


def backfill_parents(apps, schema_editor):
    Message = apps.get_model("chat", "Message")
    conversation_ids = Message.objects.values_list("conversation_id", flat=True).distinct()
    for conversation_id in conversation_ids.iterator():
        rows = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("id")
            .only("id", "role", "superseded", "parent_id")
        )
        changed = []
        previous_current = None
        last_user = None
        for message in rows:
            if not message.superseded:
                parent = previous_current
                previous_current = message.id
            elif message.role == "assistant":
                parent = last_user
            else:
                parent = None
            if message.role == "user":
                last_user = message.id
            if parent is not None and message.parent_id != parent:
                message.parent_id = parent
                changed.append(message)
        Message.objects.bulk_update(changed, ["parent"], batch_size=500)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0008_drop_message_reply_to"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="children",
                to="chat.message",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="superseded",
            field=models.BooleanField(
                default=False,
                help_text="Not on the conversation's current branch: another version of it (or of a "
                "message before it) is shown.",
            ),
        ),
        migrations.RunPython(backfill_parents, migrations.RunPython.noop),
    ]
