from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from chat.conf import install_defaults

        install_defaults()  # CHAT_* defaults for host sites that set none (docs/reusable-app.md)

        from chat.signout import connect_signals

        connect_signals()  # signing out closes the user's chat sockets

        from django.db.models.signals import post_delete, post_save

        from chat.budgets import forget_budgets
        from chat.early import forget_everywhere
        from chat.image_tokens import forget_rules
        from chat.models import Budget, ChatModel, Conversation, ImageTokenRule, Provider
        from chat.providers import forget_models

        for model, forget in (
            (ChatModel, forget_models),
            (Provider, forget_models),
            (Budget, forget_budgets),
            (ImageTokenRule, forget_rules),
            (Conversation, forget_everywhere),
        ):
            post_save.connect(forget, sender=model, dispatch_uid=f"forget-{model.__name__}")
            post_delete.connect(forget, sender=model, dispatch_uid=f"forget-{model.__name__}-deleted")

        from chat.attachments import delete_stored_file
        from chat.models import Attachment

        # Every way a row goes (a conversation deleted, purge_conversations, a user deleted,
        # the admin) deletes its file too: a cascade sends this for each row.
        post_delete.connect(delete_stored_file, sender=Attachment, dispatch_uid="attachment-file")
