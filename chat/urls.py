from django.urls import path

from chat import attachment_views, shares, views

app_name = "chat"

urlpatterns = [
    path("", views.new_chat, name="home"),
    path("new/", views.new_chat, name="new"),
    path("c/", views.create, name="create"),
    path("chats/", views.conversation_list, name="list"),
    path("c/<int:conversation_id>/", views.conversation, name="conversation"),
    path("c/<int:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<int:conversation_id>/delete/", views.delete, name="delete"),
    path("c/<int:conversation_id>/settings/", views.update_settings, name="settings"),
    path("c/<int:conversation_id>/export.md", views.export_markdown, name="export_md"),
    path("c/<int:conversation_id>/export.json", views.export_json, name="export_json"),
    path("c/<int:conversation_id>/share/", shares.share, name="share"),
    path("c/<int:conversation_id>/share/revoke/", shares.revoke_view, name="share_revoke"),
    path("s/<str:token>/", shares.shared, name="shared"),
    path("c/<int:conversation_id>/messages/", views.message_list, name="messages"),
    path("c/<int:conversation_id>/messages/<int:message_id>/", views.message_detail, name="message"),
    path("attachments/", attachment_views.upload, name="attachments"),
    path("attachments/<int:attachment_id>/", attachment_views.attachment, name="attachment"),
]
