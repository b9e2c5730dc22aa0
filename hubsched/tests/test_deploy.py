"""Safe deployment (issue 11): production mode, check --deploy on compose's environment, uvicorn + whitenoise,
Flower behind basic auth, no secret on a command line, and the sinks' own PostgreSQL role.

Every test runs the real thing in a subprocess (settings are read once per process): manage.py, uvicorn, Flower,
the reference hub, psql against the local PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet

from hubs.client import HubClient, HubError
from hubs.hubsim.faults import unused_port
from hubsched import stack
from hubsched.testing import in_ci, postgres_url

BASE_DIR = Path(__file__).resolve().parents[2]
PRODUCTION_REQUIRED = ("SECRET_KEY", "ALLOWED_HOSTS", "HUBSCHED_SECRETS_KEY")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A process environment with none of the runner's settings variables: only what the test gives."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HUBSCHED_VAR_DIR": str(tmp_path / "var"),
            "PYTHONUNBUFFERED": "1", **extra}


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return bare_env(tmp_path, HUBSCHED_ENV="production", SECRET_KEY=secrets.token_urlsafe(50),
                    HUBSCHED_SECRETS_KEY=Fernet.generate_key().decode(), ALLOWED_HOSTS="127.0.0.1",
                    CELERY_BROKER_URL="memory://", **extra)


def manage(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}: {process.communicate()[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listens on {port} after {seconds} s")


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=15)[0] or ""
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0] or ""


def get(url: str, headers: dict | None = None):
    """(status, headers, body) of a GET; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


# --- compose and check --deploy ----------------------------------------------------------------------------------


def compose_services() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]


def interpolate(value: str, values: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with ``values`` as the environment."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if values.get(name):
            return values[name]
        if kind == "-":
            return rest
        raise AssertionError(f"compose needs {name}: {rest}")

    return INTERPOLATION.sub(one, str(value))


def compose_test_values() -> dict[str, str]:
    """What an operator's .env holds: the variables .env.example lists, with fresh random values."""
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "HUBSCHED_SECRETS_KEY": Fernet.generate_key().decode(),
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "HUBSCHED_SINK_PASSWORD": secrets.token_hex(24),
        "RABBITMQ_PASSWORD": secrets.token_hex(24),
        "FLOWER_BASIC_AUTH": f"ops:{secrets.token_hex(12)}",
        "HUB_A_KEY": secrets.token_hex(12),
        "HUB_B_KEY": secrets.token_hex(12),
    }


def test_check_deploy_on_the_compose_environment_prints_no_warning(tmp_path):
    values = compose_test_values()
    web = {name: interpolate(value, values) for name, value in compose_services()["web"]["environment"].items()}
    assert web["HUBSCHED_ENV"] == "production"
    done = manage(bare_env(tmp_path, **web), "check", "--deploy", "--fail-level", "WARNING")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "System check identified no issues" in output and "WARNING" not in output, output


def test_compose_takes_every_secret_from_the_environment():
    text = (BASE_DIR / "docker-compose.yml").read_text()
    services = compose_services()
    assert "change-me" not in text and "demo-key" not in text
    for needed in compose_test_values():
        assert re.search(r"\$\{" + needed + r":\?", text), f"{needed} is not required from the environment"
        assert re.search(rf"^#?{needed}=", (BASE_DIR / ".env.example").read_text(), re.M), f".env.example lacks {needed}"
    for name, service in services.items():
        command = " ".join(service.get("command") or []) if isinstance(service.get("command"), list) else ""
        assert "${" not in command and "--key" not in command and "basic_auth" not in command, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    # the reference hubs get their key and nothing of Django's secrets
    assert set(services["hub-a"]["environment"]) == {"HUBSIM_KEY"}
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert "FLOWER_BASIC_AUTH" not in services["web"]["environment"]
    sink_url = interpolate(services["web"]["environment"]["HUBSCHED_SINK_URL"], compose_test_values())
    assert sa.engine.make_url(sink_url).username == "hubsched_sink"
    assert "./deploy/postgres-init.sql:/docker-entrypoint-initdb.d/10-sink-role.sql:ro" in services["postgres"]["volumes"]


# --- production mode ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", PRODUCTION_REQUIRED)
def test_production_mode_refuses_to_start_without(tmp_path, missing):
    env = production_env(tmp_path)
    del env[missing]
    done = manage(env, "check")
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert f"{missing} is not set: HUBSCHED_ENV=production needs it from the environment" in done.stderr


def test_production_mode_starts_with_them_and_refuses_debug_on(tmp_path):
    assert manage(production_env(tmp_path), "check").returncode == 0
    done = manage(production_env(tmp_path, DEBUG="true"), "check")
    assert done.returncode != 0 and "DEBUG is on with HUBSCHED_ENV=production" in done.stderr


def test_production_mode_turns_debug_off_and_https_on_by_default(tmp_path):
    code = ("from django.conf import settings as s; import json; print(json.dumps([s.DEBUG, s.SECURE_SSL_REDIRECT, "
            "s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.STORAGES['staticfiles']['BACKEND']]))")
    done = manage(production_env(tmp_path), "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [False, True, 31536000, True, True,
                                       "whitenoise.storage.CompressedManifestStaticFilesStorage"]


def test_without_production_mode_a_secret_key_is_made_once_in_var_and_kept(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY, settings.DEBUG)"
    first, second = (manage(bare_env(tmp_path), "shell", "-c", code) for _ in range(2))
    assert first.returncode == 0, first.stderr
    key, debug = first.stdout.splitlines()[-1].split()
    path = tmp_path / "var" / "secret-key"
    assert path.read_text().strip() == key and len(key) >= 50 and debug == "True"
    assert path.stat().st_mode & 0o777 == 0o600
    assert second.stdout == first.stdout  # read back, not made again
    assert "change-me" not in (BASE_DIR / "hubsched" / "settings.py").read_text()


def test_a_malformed_proxy_ssl_header_is_refused_with_its_form(tmp_path):
    done = manage(production_env(tmp_path, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO"), "check")
    assert done.returncode != 0 and "SECURE_PROXY_SSL_HEADER='HTTP_X_FORWARDED_PROTO': expected HEADER,value" in done.stderr


# --- uvicorn and whitenoise ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_uvicorn_serves_the_admins_static_files_with_debug_off(tmp_path):
    env = production_env(tmp_path, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
                         DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    done = manage(env, "collectstatic", "--noinput", "-v", "0")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "var" / "static" / "staticfiles.json").read_text())["paths"]
    hashed = manifest["admin/css/base.css"]
    assert hashed != "admin/css/base.css"
    port = unused_port()
    server = subprocess.Popen(stack.web_argv(host="127.0.0.1", port=port), cwd=BASE_DIR, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, server)
        base, proxied = f"http://127.0.0.1:{port}", {"X-Forwarded-Proto": "https"}
        status, headers, body = get(f"{base}/static/{hashed}", proxied)
        assert status == 200, body[:500]
        assert headers["Content-Type"].startswith("text/css") and b"body" in body
        assert "immutable" in headers["Cache-Control"]  # hashed name: cached for good
        status, headers, _ = get(f"{base}/static/{hashed}", {**proxied, "Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        # plain HTTP (no proxy saying https) is sent to https
        status, headers, _ = get(f"{base}/static/{hashed}")
        assert status == 301 and headers["Location"].startswith("https://")
        # DEBUG is off: a missing page is a plain 404, not Django's debug page
        status, _, body = get(f"{base}/no-such-page", proxied)
        assert status == 404 and b"URLconf" not in body
    finally:
        output = stop(server)
    assert "Uvicorn running" in output, output


# --- Flower --------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_flower_asks_for_the_basic_auth_it_reads_from_the_environment(tmp_path):
    credentials = f"ops:{secrets.token_hex(8)}"
    port = unused_port()
    argv = stack.flower_argv(address="127.0.0.1", port=port)
    assert credentials not in " ".join(argv)
    env = bare_env(tmp_path, FLOWER_BASIC_AUTH=credentials, CELERY_BROKER_URL="memory://")
    flower = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, flower, seconds=60)
        assert get(f"http://127.0.0.1:{port}/")[0] == 401
        wrong = base64.b64encode(b"ops:wrong").decode()
        assert get(f"http://127.0.0.1:{port}/", {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(credentials.encode()).decode()
        assert get(f"http://127.0.0.1:{port}/", {"Authorization": f"Basic {right}"})[0] == 200
    finally:
        stop(flower)


@pytest.mark.django_db
def test_the_stack_puts_no_secret_on_a_command_line(tmp_path, settings):
    from hubs.demo import demo_load
    from hubs.models import Hub

    settings.VAR_DIR = tmp_path
    demo_load()
    keys = set(Hub.objects.values_list("api_key", flat=True))
    assert keys
    parts = stack.Stack(port=8000, flower_port=5555, out=lambda line: None).parts
    credentials = (tmp_path / "flower-credentials").read_text().strip()
    assert (tmp_path / "flower-credentials").stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"admin:\S{12,}", credentials)
    for part in parts:
        argv = " ".join(part.argv)
        assert not any(key in argv for key in keys) and credentials not in argv, part
    by_name = {p.name: p for p in parts}
    assert {p.env["HUBSIM_KEY"] for p in parts if p.name.startswith("hubsim-")} == keys
    assert by_name["flower"].env == {"FLOWER_BASIC_AUTH": credentials}
    assert by_name["web"].argv[1:4] == ["-m", "uvicorn", "hubsched.asgi:application"]
    # made once: a second stack reads the same credentials
    again = stack.Stack(port=8000, flower_port=5555, out=lambda line: None).parts
    assert next(p for p in again if p.name == "flower").env == {"FLOWER_BASIC_AUTH": credentials}


# --- the reference hub and the conformance checker take their key from the environment or a file ---------------


@pytest.mark.parametrize("entry", [["-m", "hubs.hubsim"], ["manage.py", "hubsim"]])
def test_hubsim_refuses_a_key_on_its_command_line_without_echoing_it(tmp_path, entry):
    key = secrets.token_hex(8)
    done = subprocess.run([sys.executable, *entry, "--key", key], cwd=BASE_DIR, env=bare_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--key was removed: pass the key in $HUBSIM_KEY or --key-file PATH" in done.stderr
    assert key not in done.stdout + done.stderr


def start_hubsim(tmp_path, *args, **env) -> tuple[subprocess.Popen, int]:
    port = unused_port()
    process = subprocess.Popen([*stack.hubsim_argv(host="127.0.0.1", port=port, name="h"), *args], cwd=BASE_DIR,
                               env=bare_env(tmp_path, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_port(port, process)
    return process, port


def hub_answers(port: int, key: str) -> bool:
    """True when the hub answers a read made with ``key``; False when it refuses the key (401)."""
    try:
        with HubClient(f"ws://127.0.0.1:{port}/connect", key, timeout=5) as client:
            client.get_entity_params("plant/line1/pump1", ["speed_sp"])
        return True
    except HubError as exc:
        assert exc.code == 401, exc
        return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", ["env", "file"])
def test_hubsim_takes_its_key_from_the_environment_or_a_file(tmp_path, source):
    key = secrets.token_hex(8)
    if source == "env":
        process, port = start_hubsim(tmp_path, HUBSIM_KEY=key)
    else:
        (tmp_path / "key").write_text(key + "\n")
        process, port = start_hubsim(tmp_path, "--key-file", str(tmp_path / "key"))
    try:
        assert key not in Path(f"/proc/{process.pid}/cmdline").read_text()
        assert hub_answers(port, key)
        assert not hub_answers(port, "demo-key")
    finally:
        stop(process)


def test_hubsim_names_an_unreadable_key_file(tmp_path):
    done = subprocess.run([sys.executable, "manage.py", "hubsim", "--key-file", str(tmp_path / "none")], cwd=BASE_DIR,
                          env=bare_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"--key-file {tmp_path / 'none'}: No such file or directory" in done.stderr


@pytest.mark.timeout(120)
def test_hub_conformance_takes_the_key_from_hub_key_or_a_file_never_from_argv(tmp_path):
    key = secrets.token_hex(8)
    process, port = start_hubsim(tmp_path, HUBSIM_KEY=key)
    url = f"ws://127.0.0.1:{port}/connect"
    try:
        refused = manage(bare_env(tmp_path), "hub_conformance", url, "--key", key)
        assert refused.returncode == 2 and "--key was removed" in refused.stderr and key not in refused.stderr
        missing = manage(bare_env(tmp_path), "hub_conformance", url)
        assert missing.returncode != 0 and "no hub key: set $HUB_KEY or pass --key-file PATH" in missing.stderr
        by_env = manage(bare_env(tmp_path, HUB_KEY=key), "hub_conformance", url, "--no-write")
        assert by_env.returncode == 0, by_env.stdout + by_env.stderr
        (tmp_path / "key").write_text(key + "\n")
        by_file = manage(bare_env(tmp_path), "hub_conformance", url, "--no-write", "--key-file", str(tmp_path / "key"))
        assert by_file.returncode == 0, by_file.stdout + by_file.stderr
        wrong = manage(bare_env(tmp_path, HUB_KEY="wrong"), "hub_conformance", url, "--no-write")
        assert wrong.returncode != 0
    finally:
        stop(process)


# --- the sinks' database role (deploy/postgres-init.sql) --------------------------------------------------------


@pytest.fixture
def fresh_database():
    """A new database on the local PostgreSQL, owned by a new non-superuser role (as compose's Django role owns
    its database); both dropped after, with the sink role the test names."""
    url = sa.engine.make_url(postgres_url())
    if not shutil.which("psql"):  # the client comes with the server on Debian: its absence is a missing server
        if in_ci():
            pytest.fail("psql is not installed (CI=true: real servers are required)")
        pytest.skip("psql is not installed")
    suffix = uuid.uuid4().hex[:10]
    names = {"database": f"hubsched_deploy_test_{suffix}", "owner": f"hubsched_owner_{suffix}",
             "sink": f"hubsched_sink_{suffix}"}
    admin = dict(host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database)
    conn = psycopg2.connect(**admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE ROLE "{names["owner"]}" LOGIN')
        cur.execute(f'CREATE DATABASE "{names["database"]}" OWNER "{names["owner"]}"')
    try:
        yield {**names, "admin": admin}
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{names["database"]}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{names["sink"]}"')
            cur.execute(f'DROP ROLE IF EXISTS "{names["owner"]}"')
        conn.close()


def psql_init(db: dict, **env: str) -> subprocess.CompletedProcess:
    """deploy/postgres-init.sql as the postgres image runs it: psql, ON_ERROR_STOP, connected to Django's database."""
    admin = db["admin"]
    return subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-h", admin["host"], "-p", str(admin["port"]), "-U", admin["user"],
         "-d", db["database"], "-f", str(BASE_DIR / "deploy" / "postgres-init.sql")],
        env={"PATH": os.environ["PATH"], **({"PGPASSWORD": admin["password"]} if admin["password"] else {}), **env},
        capture_output=True, text=True, timeout=60,
    )


def connect(db: dict, user: str):
    admin = db["admin"]
    conn = psycopg2.connect(host=admin["host"], port=admin["port"], user=user, password=db.get("password"),
                            dbname=db["database"])
    conn.autocommit = True
    return conn


@pytest.mark.postgres
def test_the_sink_role_writes_its_own_tables_and_cannot_read_djangos(fresh_database):
    db = {**fresh_database, "password": secrets.token_hex(12)}
    owner = connect(db, db["owner"])
    with owner.cursor() as cur:  # a Django table, made by the owner role, holding a secret
        cur.execute("CREATE TABLE hubs_hub (id int PRIMARY KEY, api_key text)")
        cur.execute("INSERT INTO hubs_hub VALUES (1, 'fernet:secret')")
    done = psql_init(db, HUBSCHED_SINK_PASSWORD=db["password"], HUBSCHED_SINK_ROLE=db["sink"])
    assert done.returncode == 0, done.stderr
    sink = connect(db, db["sink"])
    try:
        with sink.cursor() as cur:
            cur.execute("CREATE TABLE hubsched_values (tick bigint, key text, value_json text)")
            cur.execute("CREATE INDEX ON hubsched_values (tick)")
            cur.execute("INSERT INTO hubsched_values VALUES (1, 'speed', '42')")
            cur.execute("SELECT current_schema(), count(*) FROM hubsched_values GROUP BY 1")
            assert cur.fetchone() == (db["sink"], 1)  # unqualified names land in its own schema
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT api_key FROM public.hubs_hub")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CREATE TABLE public.planted (id int)")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CREATE ROLE escalated")
        with owner.cursor() as cur:  # Django's role is untouched: it still reads and creates in public
            cur.execute("SELECT api_key FROM hubs_hub")
            assert cur.fetchone() == ("fernet:secret",)
            cur.execute("CREATE TABLE public.django_migrations_probe (id int)")
    finally:
        sink.close()
        owner.close()


@pytest.mark.postgres
def test_the_sink_role_script_stops_without_a_password(fresh_database):
    done = psql_init(fresh_database, HUBSCHED_SINK_ROLE=fresh_database["sink"])
    assert done.returncode != 0
    assert "HUBSCHED_SINK_PASSWORD is not set" in done.stderr
    with psycopg2.connect(**fresh_database["admin"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (fresh_database["sink"],))
        assert cur.fetchone() == (0,)
