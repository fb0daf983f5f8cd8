"""Message.reply_to was never set (a reply follows its question by position), yet the
message endpoint returned it: issue #13 drops it."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0007_token_counts_only_in_usage'),
    ]

    operations = [
        migrations.RemoveField(
            model_name='message',
            name='reply_to',
        ),
    ]
