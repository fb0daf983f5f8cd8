from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm

from chat.models import Conversation


class TitleForm(forms.ModelForm):
    """Rename, and the optional title of a new chat (the page sends the first message's start)."""

    class Meta:
        model = Conversation
        fields = ["title"]

    def clean_title(self) -> str:
        return " ".join(self.cleaned_data["title"].split())[:80]


class ConversationSettingsForm(forms.ModelForm):
    class Meta:
        model = Conversation
        fields = ["model", "system_prompt"]
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 6})}


class SignUpForm(UserCreationForm):
    """Username and password (checked by AUTH_PASSWORD_VALIDATORS), for the site's user model."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = (get_user_model().USERNAME_FIELD,)
