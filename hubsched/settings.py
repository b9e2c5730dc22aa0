"""Django settings for hubsched, read from the environment with embedded defaults for a bare machine.

Defaults need no server: SQLite under ``var/`` for Django, kombu's ``filesystem://`` broker under
``var/broker/``, and a SQLite sink under ``var/``. URLs in the environment switch to real servers:
``DATABASE_URL`` (anything dj-database-url reads), ``CELERY_BROKER_URL`` (``redis://``, ``amqp://``),
``HUBSCHED_SINK_URL`` (any SQLAlchemy URL).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("HUBSCHED_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def _env_number(name: str, default, cast, what: str, minimum=None):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected {what}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return _env_number(name, default, int, "a whole number", minimum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(name, default, float, "a number", minimum)


SECRET_KEY = env_str("SECRET_KEY", "hubsched-development-only-secret-key-change-me-in-production")
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "hubsched",
    "hubs",
    "scripts_engine",
    "groups",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hubsched.urls"
WSGI_APPLICATION = "hubsched.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_config() -> dict:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'hubsched.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0))
    except Exception as exc:  # dj-database-url raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL: cannot read {url.split('@')[-1]!r}: {exc}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Web, worker and beat share one file: WAL lets readers run beside the writer, IMMEDIATE
        # transactions take the write lock up front instead of failing on upgrade ("database is locked").
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return config


DATABASES = {"default": _database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("in", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport: one folder as both in and out makes it a queue; the control
    # folder carries broadcast messages so that `celery inspect` works without a server.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "in"),
        "data_folder_out": str(BROKER_DIR / "in"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(BROKER_DIR / "control"),
        # the transport looks for new messages this often (kombu's default, 1 s, delays every tick by up to 1 s)
        "polling_interval": env_float("HUBSCHED_FILESYSTEM_BROKER_POLL_S", 0.1, minimum=0.01),
    }
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# hubsched's own beat scheduler: batched dispatch, one message per hub per tick (docs/scheduler.md).
CELERY_BEAT_SCHEDULER = env_str("CELERY_BEAT_SCHEDULER", "groups.scheduler:Scheduler")

# --- hubsched -----------------------------------------------------------------------------------
# Where values go when a project names no sink of its own (any SQLAlchemy URL).
HUBSCHED_SINK_URL = env_str("HUBSCHED_SINK_URL", f"sqlite:///{VAR_DIR / 'values.sqlite3'}")
# Per-hub limit of requests in flight on its one connection (hub protocol v1: 429 beyond the hub's own).
HUBSCHED_HUB_MAX_IN_FLIGHT = env_int("HUBSCHED_HUB_MAX_IN_FLIGHT", 32, minimum=1)
# Sink batching window (issue 6): a batch is written when it holds this many values or is this old.
HUBSCHED_SINK_BATCH_SIZE = env_int("HUBSCHED_SINK_BATCH_SIZE", 5000, minimum=1)
HUBSCHED_SINK_BATCH_AGE_S = env_float("HUBSCHED_SINK_BATCH_AGE_S", 0.2, minimum=0.0)
# Writer threads per sink per worker process: one batch is written while the next is encoded (docs/data-path.md).
HUBSCHED_SINK_WRITERS = env_int("HUBSCHED_SINK_WRITERS", 2, minimum=1)
# Values waiting for a sink per worker process (about 450 bytes each) before polls wait for the sink.
HUBSCHED_SINK_MAX_PENDING = env_int("HUBSCHED_SINK_MAX_PENDING", 100_000, minimum=1)
# What executions read from the Django database is kept per worker process (groups/definitions.py): a group is
# read again within HUBSCHED_EXECUTION_CHECK_S of an edit, everything else within HUBSCHED_EXECUTION_CACHE_S.
HUBSCHED_EXECUTION_CACHE_S = env_float("HUBSCHED_EXECUTION_CACHE_S", 30.0, minimum=0.0)
HUBSCHED_EXECUTION_CHECK_S = env_float("HUBSCHED_EXECUTION_CHECK_S", 1.0, minimum=0.0)
# Finished runs (GroupRun rows, GroupStats counters) are written in bulk this often per worker process.
HUBSCHED_RUN_FLUSH_S = env_float("HUBSCHED_RUN_FLUSH_S", 1.0, minimum=0.05)

# Overlap locks and hub gates (docs/scheduler.md): Redis when this or the broker is redis://, else file locks
# under var/locks; a run lock left by a dead worker expires after HUBSCHED_RUN_LOCK_TTL_S seconds (Redis).
HUBSCHED_LOCK_URL = env_str("HUBSCHED_LOCK_URL", "")
HUBSCHED_RUN_LOCK_TTL_S = env_float("HUBSCHED_RUN_LOCK_TTL_S", 60.0, minimum=1.0)
# Beat sends a tick this long before it is due, with the tick's time as the Celery eta, so that sending costs no
# lag (docs/scheduler.md); per cohort at most half its period. 0 sends at the tick itself.
HUBSCHED_DISPATCH_LEAD_S = env_float("HUBSCHED_DISPATCH_LEAD_S", 0.25, minimum=0.0)

# Long-lived sandbox processes per worker process that run integrator scripts; 0 means one per CPU (at least 2).
HUBSCHED_SANDBOX_PROCESSES = env_int("HUBSCHED_SANDBOX_PROCESSES", 0, minimum=0)

VAR_DIR.mkdir(parents=True, exist_ok=True)
