"""Everything that talks to a model provider over the network lives in this package."""

from chat.upstream.client import ChatStream, Piece, Provider, Retry, stream_chat
from chat.upstream.errors import UpstreamError, redact

__all__ = ["ChatStream", "Piece", "Provider", "Retry", "UpstreamError", "redact", "stream_chat"]
