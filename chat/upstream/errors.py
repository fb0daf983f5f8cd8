"""The one error type the rest of the app sees from the network, in plain words."""

import re

from chat.text import storable

REDACTED = "[redacted]"
# Shapes of provider keys, whichever separator a provider uses: OpenAI `sk-…`, `sk-proj-…`,
# Anthropic `sk-ant-…`, OpenRouter `sk-or-…`, Groq `gsk_…`, xAI `xai-…`, Perplexity
# `pplx-…`, NVIDIA `nvapi-…`, Cerebras `csk-…`, Hugging Face `hf_…`, Replicate `r8_…`,
# Google `AIza…`; and a key the provider quoted masked (`sk-abc****wxyz`, `abcd********wxyz`).
_KEYLIKE = re.compile(
    r"\b(?:sk|gsk|or|key|xai|pplx|nvapi|csk|hf|r8)[-_][A-Za-z0-9_\-*.]{6,}"
    r"|\bAIza[A-Za-z0-9_\-]{20,}"
    r"|[A-Za-z0-9_\-.]*\*{4,}[A-Za-z0-9_\-.]*"
)
# Extra header values shorter than this are not treated as secrets: `api-version: 1` would
# otherwise blank every "1" in a message, and so short a value guards nothing.
MIN_SECRET_LENGTH = 8


class UpstreamError(Exception):
    """A failure talking to the model provider.

    `code` is stable and machine-readable (it goes into the websocket `error`
    frame); `detail` is a sentence for the user with no secrets in it. The detail
    quotes the provider, so it is made storable here: it is saved with the reply.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        provider_code: str | None = None,
    ) -> None:
        detail = storable(detail)
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.provider_code = None if provider_code is None else storable(provider_code)


def secrets_of(api_key: str, headers: tuple[tuple[str, str], ...] | dict = ()) -> tuple[str, ...]:
    """Every secret a provider's requests carry: the API key and the values of its extra
    headers (Azure's `api-key`, a gateway's `x-api-key`, an `Authorization: Basic …`),
    each also without its auth scheme, as a provider may quote only the credential."""
    found = [api_key] if api_key else []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for _name, value in pairs:
        value = str(value).strip()
        if len(value) < MIN_SECRET_LENGTH:
            continue
        found.append(value)
        scheme, _, credential = value.partition(" ")
        if credential and len(credential.strip()) >= MIN_SECRET_LENGTH:
            found.append(credential.strip())
    # The longest first: a secret that contains another is replaced whole.
    return tuple(sorted(set(found), key=len, reverse=True))


def redact(text: str, *secrets: str) -> str:
    """Remove the given secrets, and anything shaped like a key, from text bound for a
    user or a log. OpenAI's 401 message quotes part of the rejected key, for one; a
    proxy's error page may echo a header back whole."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _KEYLIKE.sub(REDACTED, text)
