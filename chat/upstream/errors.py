"""The one error type the rest of the app sees from the network, in plain words."""

import re

_KEYLIKE = re.compile(r"\b(sk|gsk|or|key)-[A-Za-z0-9_\-*.]{6,}")


class UpstreamError(Exception):
    """A failure talking to the model provider.

    `code` is stable and machine-readable (it goes into the websocket `error`
    frame); `detail` is a sentence for the user with no secrets in it.
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
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.provider_code = provider_code


def redact(text: str, secret: str = "") -> str:
    """Remove an API key, or anything shaped like one, from text bound for a user or a log.

    OpenAI's 401 message quotes part of the rejected key, for one.
    """
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)
