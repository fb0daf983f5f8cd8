"""The site's own settings plus the benchmark's SQL write counter (bench.apps).

Used for the benchmark's servers (`DJANGO_SETTINGS_MODULE=bench.settings`): the
site's settings unchanged, plus the probes in bench.apps (inert unless their
BENCH_* variables are set).
"""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.apps.SQLCounterConfig"]  # inert without BENCH_SQL_COUNT_FILE
