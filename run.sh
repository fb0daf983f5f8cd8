#!/usr/bin/env bash
# Set up (first time) and run the chat site on http://127.0.0.1:8000/.
# Zero config: SQLite in ./data, the built-in demo model until OPENAI_API_KEY is set.
# Settings come from the environment or .env, which the app reads itself (chatsite/env.py),
# so manage.py and daphne see the same values whether or not they were started from here.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements.txt
    touch .venv/.installed
fi
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py bootstrap
# Token counts (stats, budgets) need tiktoken's vocabularies, downloaded once into ./data.
# Without a network the chat works all the same; counts show as "not counted" until then.
if ! .venv/bin/python manage.py fetch_vocabularies --if-missing; then
    echo "run.sh: token counts are off: the tiktoken vocabularies could not be downloaded" \
        "(no network?). Serving anyway; run ./run.sh again when online," \
        "or .venv/bin/python manage.py fetch_vocabularies." >&2
fi
# HOST and PORT (where daphne listens), from the environment or .env like the rest.
address=$(.venv/bin/python -m chatsite.env)  # a bad PORT stops here, naming it
read -r host port <<<"$address"
# Tabs reconnecting together after a restart queue for their handshakes; daphne drops one
# not done in 5 s by default (docs/deploy.md, "Redis connections").
exec .venv/bin/daphne -b "$host" -p "$port" --websocket_connect_timeout 30 chatsite.asgi:application
