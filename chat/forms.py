from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm

from chat import providers
from chat.models import Conversation


class TitleForm(forms.ModelForm):
    """Rename, and the optional title of a new chat (the page sends the first message's start)."""

    class Meta:
        model = Conversation
        fields = ["title"]

    def clean_title(self) -> str:
        return " ".join(self.cleaned_data["title"].split())[:80]


class ConversationSettingsForm(forms.ModelForm):
    """Model and system prompt. The model is one of providers.choices(), or "" for the default."""

    NOT_OFFERED = "“%(value)s” is not a model this site offers. Pick one from the list, or the default."

    model = forms.ChoiceField(
        required=False,
        error_messages={"invalid_choice": NOT_OFFERED},
        widget=forms.Select(attrs={"id": "settings-model", "data-testid": "settings-model"}),
    )

    class Meta:
        model = Conversation
        fields = ["model", "system_prompt"]
        widgets = {
            "system_prompt": forms.Textarea(
                attrs={
                    "id": "settings-system-prompt",
                    "rows": 6,
                    "placeholder": "Blank: the site's default",
                    "data-testid": "settings-system-prompt",
                }
            )
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        options = providers.choices()
        self.default_label = next((o["label"] for o in options if o["default"]), "")
        self.model_names = {o["name"] for o in options}
        choices = [("", f"Default ({self.default_label})")] + [(o["name"], o["label"]) for o in options]
        current = self.instance.model
        if current and current not in self.model_names:
            # Shown so the dialog does not silently claim another model; saving asks for a choice.
            choices.insert(1, (current, f"{current} (no longer offered)"))
        self.fields["model"].choices = choices
        self.fields["system_prompt"].widget.attrs["maxlength"] = settings.CHAT_MAX_SYSTEM_PROMPT_CHARS

    def clean_system_prompt(self) -> str:
        """As long as a message may be (CHAT_MAX_SYSTEM_PROMPT_CHARS): it is sent, and counted,
        with every message of the conversation."""
        prompt = self.cleaned_data["system_prompt"]
        limit = settings.CHAT_MAX_SYSTEM_PROMPT_CHARS
        if len(prompt) > limit:
            raise forms.ValidationError(
                "The system prompt can be at most %(limit)s characters; this one has %(length)s.",
                params={"limit": f"{limit:,}", "length": f"{len(prompt):,}"},
                code="max_length",
            )
        return prompt

    def clean_model(self) -> str:
        name = self.cleaned_data["model"]
        if name and name not in self.model_names:
            raise forms.ValidationError(self.NOT_OFFERED, params={"value": name})
        return name


class SignUpForm(UserCreationForm):
    """Username and password (checked by AUTH_PASSWORD_VALIDATORS), for the site's user model."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = (get_user_model().USERNAME_FIELD,)
