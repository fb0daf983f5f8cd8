import gc
import os

from django.core.asgi import get_asgi_application
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before the routing (and so the models) is imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.backpressure import keep_raw_send  # noqa: E402
from chat.origin import SameOriginWebsockets  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.tokens import warm_up_in_background  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": keep_raw_send(
            SameOriginWebsockets(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# A restarted worker meets every tab it served at once (issue #15): import the channel
# layer's Redis client and the database driver now, not while those handshakes wait.
get_channel_layer()
for alias in connections:
    connections[alias].ensure_connection  # noqa: B018 (loads the backend's driver; no connection yet)

# Loading a tiktoken vocabulary takes about a second; do it now, not in the first reply.
warm_up_in_background()

# What is loaded by now lives as long as the process. Frozen, it is left out of the
# collector's full passes, which otherwise held the event loop (and every stream) for tens
# of milliseconds under load (measured in docs/benchmark.md).
gc.freeze()
