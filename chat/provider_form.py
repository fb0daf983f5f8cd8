"""The admin's form for a provider: its API key and credential headers are write-only, and
neither follows the provider to another server (issue #12)."""

import re
from urllib.parse import urlsplit

from django import forms

from chat.models import KEY_ENV_PREFIX, Provider, key_env_allowed

# Header names that carry credentials (Azure's api-key, Authorization, X-Goog-Api-Key, ...):
# their values are write-only, like the API key.
SECRET_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature", re.IGNORECASE)
STORED = "(stored, unchanged)"


def masked_headers(headers: dict | None) -> dict:
    return {name: STORED if SECRET_HEADER.search(name) else value for name, value in (headers or {}).items()}


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides which server a request (and its key) reaches."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class ProviderForm(forms.ModelForm):
    """The API key and secret headers are write-only: never rendered back; leave the key
    blank (and a header as "(stored, unchanged)") to keep the stored one. Neither follows
    the provider to another server: changing the scheme, host or port of its URL needs the
    key typed again (or removed) in the same save."""

    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key. "
        "Changing the server (scheme, host or port of the base URL) needs the key entered again.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")
    base_url = forms.URLField(assume_scheme="https", help_text="Ends in /v1, e.g. http://localhost:11434/v1")

    class Meta:
        model = Provider
        fields = ("name", "base_url", "api_key", "clear_api_key", "api_key_env", "extra_headers", "enabled")
        help_texts = {
            "extra_headers": f'e.g. {{"X-Title": "Chat"}}. Values of credential headers (api-key, '
            f"Authorization, …) are write-only: {STORED} keeps the stored value.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stored = Provider.objects.get(pk=self.instance.pk) if self.instance.pk else None
        if self.stored is not None:
            self.initial["extra_headers"] = masked_headers(self.stored.extra_headers)

    def clean_api_key_env(self) -> str:
        name = self.cleaned_data["api_key_env"].strip()
        if name and not key_env_allowed(name):
            raise forms.ValidationError(
                f"Only variables whose names start with {KEY_ENV_PREFIX} (e.g. {KEY_ENV_PREFIX}GROQ) "
                "can hold a provider key, so no other secret of the server can be sent to a provider."
            )
        return name

    def clean_extra_headers(self):
        headers = self.cleaned_data["extra_headers"] or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise forms.ValidationError('Headers must be a JSON object of strings, e.g. {"X-Title": "Chat"}.')
        stored = (self.stored.extra_headers or {}) if self.stored is not None else {}
        kept = [name for name, value in headers.items() if value == STORED]
        if missing := [name for name in kept if name not in stored]:
            raise forms.ValidationError(f"No stored value to keep for {', '.join(missing)}: type it.")
        return {name: stored[name] if value == STORED else value for name, value in headers.items()}

    def clean(self):
        cleaned = super().clean()
        base_url = cleaned.get("base_url")
        if self.stored is None or not base_url or origin(base_url) == origin(self.stored.base_url):
            return cleaned
        moved = f"The server changed ({_origin_text(self.stored.base_url)} → {_origin_text(base_url)})"
        if self.stored.api_key and not cleaned.get("api_key") and not cleaned.get("clear_api_key"):
            self.add_error(
                "api_key",
                f"{moved}: enter the key again for the new server, or tick “Remove the stored key”. "
                "A stored key is never sent to a server it was not entered for.",
            )
        raw = self.data.get(self.add_prefix("extra_headers"), "")
        if STORED in raw and "extra_headers" in cleaned:
            self.add_error("extra_headers", f"{moved}: type the values of credential headers again.")
        return cleaned

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.api_key = ""
        elif not self.cleaned_data.get("api_key") and self.stored is not None:
            provider.api_key = self.stored.api_key
        if commit:
            provider.save()
        return provider


def _origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"
