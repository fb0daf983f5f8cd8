#!/usr/bin/env bash
# Run the whole test suite (installing what it needs into .venv first).
# Browser tests use Debian's Chromium at /usr/bin/chromium; PostgreSQL/Redis tests
# use 127.0.0.1:5432 and :6379. Each skips with a reason where its part is absent.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -f .venv/.installed-dev ] || [ requirements-dev.txt -nt .venv/.installed-dev ] \
        || [ requirements.txt -nt .venv/.installed-dev ]; then
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements-dev.txt
    touch .venv/.installed-dev
fi
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d ../shared/tiktoken-cache ]; then
    export TIKTOKEN_CACHE_DIR="$(cd ../shared/tiktoken-cache && pwd)"
fi
.venv/bin/python manage.py makemigrations --check --dry-run
exec .venv/bin/python -m pytest "$@"
