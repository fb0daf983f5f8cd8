"""Everything that talks to a model provider over the network lives in this package."""

from chat.upstream.client import ChatStream, Piece, Provider, Retry, complete, list_models, warm_up
from chat.upstream.errors import UpstreamError, redact

__all__ = [
    "ChatStream",
    "Piece",
    "Provider",
    "Retry",
    "UpstreamError",
    "complete",
    "list_models",
    "redact",
    "warm_up",
]
