from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from chat.conf import install_defaults

        install_defaults()  # CHAT_* defaults for host sites that set none (docs/reusable-app.md)
