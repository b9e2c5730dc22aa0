"""Django settings for hubsched, read from the environment with embedded defaults for a bare machine.

Defaults need no server: SQLite under ``var/`` for Django, kombu's ``filesystem://`` broker under
``var/broker/``, and a SQLite sink under ``var/``. URLs in the environment switch to real servers:
``DATABASE_URL`` (anything dj-database-url reads), ``CELERY_BROKER_URL`` (``redis://``, ``amqp://``),
``HUBSCHED_SINK_URL`` (any SQLAlchemy URL).

Deployment mode (README "Deploying"): ``HUBSCHED_ENV=production`` refuses to start without ``SECRET_KEY``,
``ALLOWED_HOSTS`` and ``HUBSCHED_SECRETS_KEY`` from the environment, turns DEBUG off and the SECURE_* settings
on by default, and serves static files from ``collectstatic``'s hashed, compressed copies (whitenoise).
Unset (``make run``, the tests), the embedded defaults keep working: DEBUG on, a SECRET_KEY made once
in ``var/secret-key``.
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


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated variable as a list, blanks dropped: ``a, b,`` -> ``["a", "b"]``."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# The deployment mode: "production" or "development" (the default: `make run`, the tests).
HUBSCHED_ENV = env_str("HUBSCHED_ENV", "development").strip().lower() or "development"
if HUBSCHED_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"HUBSCHED_ENV={HUBSCHED_ENV!r}: expected production or development")
PRODUCTION = HUBSCHED_ENV == "production"

# --- several hosts (README, "Deploying on several hosts") ----------------------------------------------------------
# Each embedded default is right on one machine and a silent fault on several: a worker host's SQLite sink or log that
# no other host reads, a broker folder no other worker sees, file locks that exclude nothing on another host. With
# HUBSCHED_DEPLOYMENT=multi-host a process refuses to start until each is set to a server that every host shares.
HUBSCHED_DEPLOYMENT = env_str("HUBSCHED_DEPLOYMENT", "single-host").strip().lower() or "single-host"
if HUBSCHED_DEPLOYMENT not in {"single-host", "multi-host"}:
    raise ImproperlyConfigured(f"HUBSCHED_DEPLOYMENT={HUBSCHED_DEPLOYMENT!r}: expected single-host or multi-host")


def shared_servers_problems(environ) -> list[str]:
    """What keeps a process of a multi-host deployment from starting: one line per variable to set, empty when
    none. ``environ`` is the process environment (``os.environ``)."""
    def value(name: str) -> str:
        return (environ.get(name) or "").strip()

    problems = []
    if not value("DATABASE_URL") or value("DATABASE_URL").startswith("sqlite"):
        problems.append("DATABASE_URL: Django's database would be a SQLite file on this host; "
                        "set it to the PostgreSQL or MariaDB server every host uses")
    broker = value("CELERY_BROKER_URL")
    if not broker or broker.startswith(("filesystem:", "memory:")):
        problems.append("CELERY_BROKER_URL: the broker would be a folder on this host; set it to the Redis or "
                        "RabbitMQ server every host uses (redis://host:6379/0, amqp://user:password@host:5672//)")
    if not value("HUBSCHED_SINK_URL") or value("HUBSCHED_SINK_URL").startswith("sqlite"):
        problems.append("HUBSCHED_SINK_URL: the default sink would be a SQLite file on this host; set it to the "
                        "sink database server")
    if not value("HUBSCHED_LOG_URL") or value("HUBSCHED_LOG_URL").startswith("sqlite"):
        problems.append("HUBSCHED_LOG_URL: the durable log would be a SQLite file on this host, which no forwarder "
                        "on another host reads; set it to RabbitMQ Streams (rabbitmq-stream://user:password@host:5552/)")
    shared_locks = ("redis://", "rediss://", "postgres", "mysql", "mariadb")  # groups.scheduler.locks.locks_backend
    if not broker.startswith(("redis://", "rediss://")) and not value("HUBSCHED_LOCK_URL").startswith(shared_locks) \
            and not value("DATABASE_URL").startswith(shared_locks[2:]):
        problems.append("HUBSCHED_LOCK_URL: overlap locks and hub gates would be file locks on this host, which "
                        "exclude nothing on another; set it to a Redis server every worker uses (redis://host:6379/1), "
                        "or use a PostgreSQL or MariaDB DATABASE_URL (its advisory locks)")
    return problems


if HUBSCHED_DEPLOYMENT == "multi-host":
    _problems = shared_servers_problems(os.environ)
    if _problems:
        raise ImproperlyConfigured("HUBSCHED_DEPLOYMENT=multi-host: set these to servers every host shares:\n  - "
                                   + "\n  - ".join(_problems))



def env_required(name: str, dev_default):
    """``name`` from the environment; in production its absence stops the process (no embedded default)."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(
            f"{name} is not set: HUBSCHED_ENV=production needs it from the environment (README, Deploying)"
        )
    return dev_default() if callable(dev_default) else dev_default


def _dev_secret_key() -> str:
    """The development SECRET_KEY, made once in var/secret-key (mode 0600) and read from there afterwards."""
    import secrets

    path = VAR_DIR / "secret-key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        # web, worker and beat start together: write a whole file aside, then link it into place (atomic,
        # fails if another process got there first), so that no process reads a half-written key
        tmp = VAR_DIR / f".secret-key.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(50) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


# Fernet key(s) that encrypt hub keys and database URLs at rest (hubsched/secrets.py); comma-separated, the
# first encrypts. Empty on the embedded defaults: a key is made once in var/secrets.key. Required in production.
HUBSCHED_SECRETS_KEY = env_required("HUBSCHED_SECRETS_KEY", "")

SECRET_KEY = env_required("SECRET_KEY", _dev_secret_key)
DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG is on with HUBSCHED_ENV=production: debug pages show settings and code")
ALLOWED_HOSTS = [h.strip() for h in env_required("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",")
                 if h.strip()]

# HTTPS (Django's deployment checklist): on by default in production, where a TLS proxy is expected in front.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# the container health check asks over plain HTTP inside the container (docker-compose.yml, web): no redirect
SECURE_REDIRECT_EXEMPT = [r"^api/health$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
# "HEADER,value", e.g. HTTP_X_FORWARDED_PROTO,https: set it only behind a proxy that sets (and strips) that header.
_proxy_ssl_header = env_list("SECURE_PROXY_SSL_HEADER", "")
if _proxy_ssl_header and len(_proxy_ssl_header) != 2:
    raise ImproperlyConfigured(
        f"SECURE_PROXY_SSL_HEADER={os.environ['SECURE_PROXY_SSL_HEADER']!r}: expected HEADER,value "
        "(e.g. HTTP_X_FORWARDED_PROTO,https)"
    )
SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl_header) or None
# Origins allowed to POST with a CSRF token, with their scheme: https://hubsched.example.com
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

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
    "streams",
    "api",
    "jobs",
    "alarms",
    "console",
    "django_htmx",
    "ninja",  # serves the API docs' Swagger UI files from the package (no CDN)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # static files from the ASGI server itself, right after the HTTPS redirect (whitenoise's documented place)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",  # request.htmx: the console answers htmx requests with a fragment
    # every error under /api/ in the API's one shape, also Django's own 404/405/413 (api/errors.py)
    "api.errors.ApiErrorShapeMiddleware",
]

ROOT_URLCONF = "hubsched.urls"
# A refused CSRF check on /api/ answers JSON, like the API's other errors (hubsched/views.py).
CSRF_FAILURE_VIEW = "hubsched.views.csrf_failure"
WSGI_APPLICATION = "hubsched.wsgi.application"
ASGI_APPLICATION = "hubsched.asgi.application"  # what uvicorn serves (compose, Dockerfile, make run)

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
STATICFILES_DIRS = [BASE_DIR / "static"]  # static/vendor: the console's pinned npm packages (`make vendor`)
# the console's login (Django's auth views); the admin keeps its own
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "login"
STATIC_ROOT = VAR_DIR / "static"
# Production serves collectstatic's hashed, compressed copies (far-future cache headers; the Dockerfile runs
# collectstatic at build); elsewhere plain storage, and whitenoise finds files in the apps, so `make run` and the
# tests need no collectstatic.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # URLs in every line (tracebacks too) are masked: no password or token reaches a log (hubsched/secrets.py)
    "formatters": {"plain": {"()": "hubsched.secrets.MaskingFormatter",
                             "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
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
    # kombu's transport with whole-message writes (a reader could take a file still empty: Flower's
    # "Failed to capture events", a lost task) and dead event queues unbound: hubsched/broker_files.py
    CELERY_BROKER_TRANSPORT = "hubsched.broker_files:Transport"
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # A message taken by a worker that dies unacknowledged (acks late: the tick's outcome was not yet in the log)
    # goes back to the queue this long after it was taken; kombu's default is an hour, during which its ticks have
    # no outcome. Its ticks have expired by then and are recorded as missed (docs/streams.md, "Every tick").
    # A message a live worker holds longer than this is delivered twice, so it must outlast the longest hold: the
    # eta (beat's lead, 0.25 s), a wait for a thread behind the prefetched others, the batch (its reads end at the
    # tick's expiry or the hub's call timeout, 5 s; a script at Group.execution_timeout) and a log append retried for
    # up to HUBSCHED_LOG_APPEND_DEADLINE_S (10 s). A shorter one gains nothing for 1 s ticks: they have expired long
    # before either value, and come back as missed (docs/scheduler.md, "A worker killed mid-tick").
    # Every worker looks for such messages every second and acts on every look (kombu: every 10 s, one look in ten),
    # so they come back within the timeout plus 1 s of their delivery (groups/tests/test_redelivery_killed_worker.py).
    # A worker killed during a look holds kombu's look mutex until it expires: 10 s here (kombu: 300 s). Each message
    # is put back in a transaction watching the hash, so two workers looking at once do not put one back twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_float("HUBSCHED_BROKER_VISIBILITY_TIMEOUT_S", 30.0, minimum=5.0),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    }
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
# Messages a worker process takes beyond its threads: a kill costs them (they come back as missed), but with no
# credit left kombu's Redis transport leaves a BRPOP reply unread, a message a kill then loses for good; with 4
# that takes 24 batches waiting behind 8 running (docs/scheduler.md, "A worker killed mid-tick").
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4, minimum=1)
# Acknowledged once the batch's outcomes are in the log: a dead worker's messages are delivered again.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# hubsched's own beat scheduler: batched dispatch, one message per hub per tick (docs/scheduler.md).
# jobs (jobs/): their runs go to a queue of their own, so that a long job never holds a worker that polls hubs
HUBSCHED_JOBS_QUEUE = env_str("HUBSCHED_JOBS_QUEUE", "jobs")
CELERY_TASK_ROUTES = {"jobs.tasks.*": {"queue": HUBSCHED_JOBS_QUEUE}}
# where shell jobs run (a job's working_directory is relative to it); off: a worker refuses shell jobs (recorded failed)
HUBSCHED_JOBS_DIR = Path(env_str("HUBSCHED_JOBS_DIR", str(VAR_DIR / "jobs")))
HUBSCHED_JOBS_SHELL = env_bool("HUBSCHED_JOBS_SHELL", True)
# a killed, replaced or timed-out command gets SIGTERM, then SIGKILL this many seconds later (its whole process group)
HUBSCHED_JOBS_KILL_GRACE_S = env_float("HUBSCHED_JOBS_KILL_GRACE_S", 5.0, minimum=0.0)
# a running job run whose worker has not beaten for this long is recorded lost (its worker was killed or cut off)
HUBSCHED_JOBS_LOST_AFTER_S = env_float("HUBSCHED_JOBS_LOST_AFTER_S", 30.0, minimum=2.0)
# the project whose jobs the ruqi-compatible endpoints (/ruqi/) list, add and remove (made on the first add_job)
HUBSCHED_RUQI_PROJECT = env_str("HUBSCHED_RUQI_PROJECT", "ruqi")

CELERY_BEAT_SCHEDULER = env_str("CELERY_BEAT_SCHEDULER", "groups.scheduler:Scheduler")

# --- hubsched -----------------------------------------------------------------------------------
# Where values go when a project names no sink of its own (any SQLAlchemy URL).
HUBSCHED_SINK_URL = env_str("HUBSCHED_SINK_URL", f"sqlite:///{VAR_DIR / 'values.sqlite3'}")
# API requests per user (or token's user) and time unit, django-ninja's rate syntax ("6000/m"); 429 beyond it.
HUBSCHED_API_RATE = env_str("HUBSCHED_API_RATE", "6000/m")
# GET /metrics (docs/metrics.md): per-group series for at most this many groups (the most failed, missed, skipped
# or killed ticks; 0 = none); the recent-runs histograms read the last minute's runs of this many groups, at most
# this many runs.
HUBSCHED_METRICS_GROUPS_MAX = env_int("HUBSCHED_METRICS_GROUPS_MAX", 100, minimum=0)
HUBSCHED_METRICS_RUNS_GROUPS = env_int("HUBSCHED_METRICS_RUNS_GROUPS", 500, minimum=1)
HUBSCHED_METRICS_RUNS_SAMPLE = env_int("HUBSCHED_METRICS_RUNS_SAMPLE", 5000, minimum=0)
# worker and beat processes write what only they hold (hub connections, call latency, dispatch lag) this often
# for /metrics (hubsched/metrics/reports.py; 0 = not reported); rows not reported for RETAIN_S are deleted
HUBSCHED_METRICS_REPORT_S = env_float("HUBSCHED_METRICS_REPORT_S", 15.0, minimum=0.0)
HUBSCHED_METRICS_REPORT_RETAIN_S = env_float("HUBSCHED_METRICS_REPORT_RETAIN_S", 3600.0, minimum=60.0)
# A ceiling over every hub's own limit of requests in flight on its one connection (Hub.max_in_flight is the
# limit: hub protocol v1, 429 beyond the hub's own). It was 32, which cut any hub's larger limit to 32: a batch
# of 100 reads then cost 4 round trips (issue 19; docs/benchmarks.md "Pipelining"). Lower it to cap every hub.
HUBSCHED_HUB_MAX_IN_FLIGHT = env_int("HUBSCHED_HUB_MAX_IN_FLIGHT", 1024, minimum=1)
# A sink's forwarder writes a batch when it holds this many values or its oldest record is this old (streams.forwarding).
HUBSCHED_SINK_BATCH_SIZE = env_int("HUBSCHED_SINK_BATCH_SIZE", 20000, minimum=1)
HUBSCHED_SINK_BATCH_AGE_S = env_float("HUBSCHED_SINK_BATCH_AGE_S", 0.2, minimum=0.0)
# ... or holds this many bytes of log records (a hub sending large values fills this bound before the count's).
HUBSCHED_SINK_BATCH_BYTES = env_int("HUBSCHED_SINK_BATCH_BYTES", 16 * 1024 * 1024, minimum=1024)
# Forwarders writing one sink at once (lanes, a process each, each the groups whose id modulo this is its own): the
# database works on one batch while Python prepares the next (docs/streams.md; measured in docs/benchmarks.md).
HUBSCHED_SINK_WRITERS = env_int("HUBSCHED_SINK_WRITERS", 2, minimum=1)
# A hostile or broken hub is bounded (issue 11): a frame larger than this drops its connection, a value whose JSON is
# larger than this fails its execution. A hub's own max_frame_bytes / max_value_bytes override these.
HUBSCHED_HUB_MAX_FRAME_BYTES = env_int("HUBSCHED_HUB_MAX_FRAME_BYTES", 16 * 1024 * 1024, minimum=1024)
HUBSCHED_HUB_MAX_VALUE_BYTES = env_int("HUBSCHED_HUB_MAX_VALUE_BYTES", 1024 * 1024, minimum=16)
# What executions read from the Django database is kept per worker process (groups/definitions.py): a group is
# read again within HUBSCHED_EXECUTION_CHECK_S of an edit, everything else within HUBSCHED_EXECUTION_CACHE_S.
HUBSCHED_EXECUTION_CACHE_S = env_float("HUBSCHED_EXECUTION_CACHE_S", 30.0, minimum=0.0)
HUBSCHED_EXECUTION_CHECK_S = env_float("HUBSCHED_EXECUTION_CHECK_S", 1.0, minimum=0.0)

# Overlap locks and hub gates (docs/scheduler.md): Redis when this or the broker is redis://, else PostgreSQL or
# MariaDB advisory locks (this URL, or DATABASE_URL), else file locks under var/locks. With Redis, a dead worker's
# run locks and hub gate slots lapse HUBSCHED_RUN_LOCK_TTL_S seconds after its last heartbeat; while it lives, its
# heartbeat extends them every quarter of that. Under one period of 1 s, so that the groups of a worker killed
# at a tick run again at the next tick (bench failover, groups_blocked_s; a TTL of 2 s blocked them 3 s).
HUBSCHED_LOCK_URL = env_str("HUBSCHED_LOCK_URL", "")
HUBSCHED_RUN_LOCK_TTL_S = env_float("HUBSCHED_RUN_LOCK_TTL_S", 0.8, minimum=0.2)
# Beat sends a tick this long before it is due, with the tick's time as the Celery eta, so that sending costs no
# lag (docs/scheduler.md); per cohort at most half its period. 0 sends at the tick itself.
HUBSCHED_DISPATCH_LEAD_S = env_float("HUBSCHED_DISPATCH_LEAD_S", 0.25, minimum=0.0)
# Beat high availability (docs/scheduler.md, "High availability"): one beat leads, holding a Redis lease of this many
# seconds (renewed every quarter of it); a standby takes over once it lapses. The lease's keys start with the prefix.
HUBSCHED_BEAT_LEASE_S = env_float("HUBSCHED_BEAT_LEASE_S", 0.8, minimum=0.2)
HUBSCHED_BEAT_KEY_PREFIX = env_str("HUBSCHED_BEAT_KEY_PREFIX", "hubsched")

# Long-lived sandbox processes per worker process that run integrator scripts; 0 means one per CPU (at least 2).
HUBSCHED_SANDBOX_PROCESSES = env_int("HUBSCHED_SANDBOX_PROCESSES", 0, minimum=0)

# The durable log between acquisition and storage (issue 12, docs/streams.md). Empty: the embedded SQLite log at
# var/log.sqlite3 (WAL, synchronous=FULL); rabbitmq-stream://guest:guest@127.0.0.1:5552/ selects RabbitMQ Streams.
HUBSCHED_LOG_URL = env_str("HUBSCHED_LOG_URL", "")
# Retention per stream: records older than this many seconds, and the oldest beyond this many bytes of records,
# are dropped (RabbitMQ: whole segments; set when a stream is first declared). Days, so that a sink can be down a while.
HUBSCHED_LOG_RETENTION_S = env_float("HUBSCHED_LOG_RETENTION_S", 7 * 24 * 3600.0, minimum=1.0)
HUBSCHED_LOG_RETENTION_BYTES = env_int("HUBSCHED_LOG_RETENTION_BYTES", 10 * 1024**3, minimum=1024 * 1024)
# A worker retries an append this long (the log restarting) before it records the batch's ticks as failed.
HUBSCHED_LOG_APPEND_DEADLINE_S = env_float("HUBSCHED_LOG_APPEND_DEADLINE_S", 10.0, minimum=0.0)
# Forwarders (manage.py forward): a lease per consumer, taken over by a standby this long after its holder stops
# renewing; state reported every REPORT_S; a database that is away is retried with backoff up to BACKOFF_MAX_S;
# an execution the database refuses QUARANTINE_TRIES times is set aside; a backlog past ALARM_PERCENT of retention
# is an alarm (status, log line).
HUBSCHED_FORWARDER_LEASE_S = env_float("HUBSCHED_FORWARDER_LEASE_S", 10.0, minimum=1.0)
HUBSCHED_FORWARDER_REPORT_S = env_float("HUBSCHED_FORWARDER_REPORT_S", 2.0, minimum=0.1)
HUBSCHED_FORWARDER_BACKOFF_MAX_S = env_float("HUBSCHED_FORWARDER_BACKOFF_MAX_S", 5.0, minimum=0.1)
HUBSCHED_FORWARDER_QUARANTINE_TRIES = env_int("HUBSCHED_FORWARDER_QUARANTINE_TRIES", 3, minimum=1)
HUBSCHED_LOG_BACKLOG_ALARM_PERCENT = env_float("HUBSCHED_LOG_BACKLOG_ALARM_PERCENT", 80.0, minimum=1.0)

VAR_DIR.mkdir(parents=True, exist_ok=True)
if not PRODUCTION:  # whitenoise looks at STATIC_ROOT at start (and warns when it is missing); finders serve the files
    Path(STATIC_ROOT).mkdir(exist_ok=True)

# alarms (alarms/): the system checks of ``python manage.py alarms`` (alarms/system.py) and how often they run
HUBSCHED_ALARMS_CHECK_S = env_float("HUBSCHED_ALARMS_CHECK_S", 10.0, minimum=0.5)
HUBSCHED_ALARM_GROUP_FAILURES = env_int("HUBSCHED_ALARM_GROUP_FAILURES", 10, minimum=1)
HUBSCHED_ALARM_MISSED_RATIO = env_float("HUBSCHED_ALARM_MISSED_RATIO", 0.1, minimum=0.0)
HUBSCHED_ALARM_HUB_UNREACHABLE_S = env_float("HUBSCHED_ALARM_HUB_UNREACHABLE_S", 60.0, minimum=0.0)
HUBSCHED_ALARM_SINK_BACKLOG_S = env_float("HUBSCHED_ALARM_SINK_BACKLOG_S", 60.0, minimum=0.0)
# alarm notifications by e-mail (alarms/notifications): Django's mail settings, from the environment
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "hubsched@localhost")
# the address people reach the web server at, for links in notifications (https://scada.example.com); empty: paths only
HUBSCHED_BASE_URL = env_str("HUBSCHED_BASE_URL", "").rstrip("/")
