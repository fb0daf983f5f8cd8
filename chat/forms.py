from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm

from chat import providers
from chat.models import Conversation

TITLE_LONGEST = 80  # characters a title chosen in the page may have


def title_text(text: str) -> str:
    """A title as the page's form keeps it: whitespace runs made one space, at most
    TITLE_LONGEST characters."""
    return " ".join(text.split())[:TITLE_LONGEST]


class TitleForm(forms.ModelForm):
    """Rename, and the optional title of a new chat (the page sends the first message's start)."""

    class Meta:
        model = Conversation
        fields = ["title"]

    def clean_title(self) -> str:
        return title_text(self.cleaned_data["title"])


class ConversationSettingsForm(forms.ModelForm):
    """Model and system prompt, chosen in the page's header (issue #14) for a chat or for a new
    one before its first message. The model is one of providers.choices(), or "" for the default.

    The picker names models by their display names. The site's default is offered once, as ""
    (the conversation follows the default, even when the admin changes it), and a default chosen
    by name earlier shows as that same choice.
    """

    NOT_OFFERED = "“%(value)s” is not a model this site offers. Pick one from the list, or the default."

    # A CharField with a Select: clean_model decides what is offered, so that the default's own
    # name stays a valid choice although the picker lists the default once, as "".
    model = forms.CharField(
        required=False,
        widget=forms.Select(
            attrs={
                "id": "settings-model",
                "form": "settings-form",
                "class": "model-picker",
                "data-testid": "model-picker",
                "aria-label": "Model",
                "autocomplete": "off",  # a reload shows the saved choice, not the browser's memory
            }
        ),
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
                    "autocomplete": "off",
                }
            )
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        options = providers.choices()
        default = next((o for o in options if o["default"]), None)
        self.default_label = default["label"] if default else ""
        self.model_names = {o["name"] for o in options}
        choices = [("", self.default_label)] + [(o["name"], o["label"]) for o in options if not o["default"]]
        current = self.instance.model
        if default and current == default["name"]:
            self.initial["model"] = ""
        elif current and current not in self.model_names:
            # Shown so the picker does not silently claim another model; saving asks for a choice.
            choices.insert(1, (current, f"{current} (no longer offered)"))
        self.fields["model"].widget.choices = choices
        # The picker's values that mean the built-in demo model: the page shows its notice then.
        self.demo_values = sorted("" if o["default"] else o["name"] for o in options if o["demo"])
        self.fields["system_prompt"].widget.attrs["maxlength"] = settings.CHAT_MAX_SYSTEM_PROMPT_CHARS

    @property
    def picked(self) -> str:
        """The picker's value as the page shows it (what was posted, or the saved choice)."""
        return self["model"].value() or ""

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
