"""The site's own settings plus the benchmark's SQL write counter (bench.apps).

Used only for the database-writes run (`DJANGO_SETTINGS_MODULE=bench.settings`);
the latency and capacity runs use chatsite.settings unchanged.
"""

import os

from chatsite.settings import *  # noqa: F403
from chatsite.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.apps.SQLCounterConfig"]  # inert without BENCH_SQL_COUNT_FILE

# Experiments with a proposed settings change, measured without editing chatsite/.
if os.environ.get("BENCH_SQLITE_PERSISTENT") == "1" and DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = None
