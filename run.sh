#!/usr/bin/env bash
# Set up (first time) and run the chat site on http://127.0.0.1:8000/.
# Zero config: SQLite in ./data, the built-in demo model until OPENAI_API_KEY is set.
set -euo pipefail
cd "$(dirname "$0")"
[ -f .env ] && set -a && . ./.env && set +a
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
exec .venv/bin/daphne -b "${HOST:-127.0.0.1}" -p "${PORT:-8000}" chatsite.asgi:application
