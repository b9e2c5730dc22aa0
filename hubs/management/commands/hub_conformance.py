"""`manage.py hub_conformance URL [--key-file PATH] [--entity ID --keys K1,K2] [TLS options] [--json]`: run hub
protocol v1's checks against a hub; exits non-zero when one fails (for a hub team's CI).

The hub's API key comes from ``--key-file`` (its first line) or ``$HUB_KEY``, never from the command line,
where every user of the machine could read it (``ps``). ``--key K`` was removed and says so. The TLS options
are named apart from the API key's: ``--ca-file``, ``--client-cert-file``, ``--client-key-file`` (the client
certificate's private key, a file too, never an argument), ``--insecure``.
"""

import argparse
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from hubs.client import TlsOptions
from hubs.conformance import format_report, hub_conformance_check, report_json
from hubs.hubsim.cli import KeyFileError, key_file_read
from hubs.validators import hub_tls_problems

KEY_ENV = "HUB_KEY"
TLS_OPTIONS = {"tls_ca_bundle": "--ca-file", "tls_client_cert": "--client-cert-file", "tls_client_key": "--client-key-file"}


def key_removed(value: str) -> str:
    # declared so that argparse does not read `--key K` as an abbreviation of `--key-file K`
    raise argparse.ArgumentTypeError(f"--key was removed: pass the key in ${KEY_ENV} or --key-file PATH")


def key_read(*, key_file: str | None) -> str:
    """The key from the file's first line, else from ``$HUB_KEY``. Raises CommandError when there is none."""
    if key_file:
        try:
            return key_file_read(key_file)
        except KeyFileError as exc:
            raise CommandError(str(exc)) from None
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise CommandError(f"no hub key: set ${KEY_ENV} or pass --key-file PATH")
    return key


def _pem_read(option: str, path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{option} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def tls_read(*, ca_file: str | None, cert_file: str | None, key_file: str | None, insecure: bool) -> TlsOptions:
    """The TlsOptions of the command line; the PEM rules are the admin's and import's (hubs/validators.py).
    Raises CommandError naming the option."""
    texts = {"tls_ca_bundle": _pem_read("--ca-file", ca_file), "tls_client_cert": _pem_read("--client-cert-file", cert_file),
             "tls_client_key": _pem_read("--client-key-file", key_file)}
    problems = hub_tls_problems(ca_pem=texts["tls_ca_bundle"], cert_pem=texts["tls_client_cert"],
                                key_pem=texts["tls_client_key"])
    if problems:
        raise CommandError("; ".join(f"{TLS_OPTIONS[field]}: {message}" for field, message in problems))
    return TlsOptions(ca_pem=texts["tls_ca_bundle"], cert_pem=texts["tls_client_cert"],
                      key_pem=texts["tls_client_key"], verify=not insecure)


class Command(BaseCommand):
    help = ("Check a hub against hub protocol v1 (docs/hub-protocol.md); prints pass/fail per check, exits non-zero "
            f"on a failure. The hub's key from --key-file PATH or ${KEY_ENV}.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("url", help="the hub's endpoint, e.g. ws://10.10.20.8/connect or wss://hub.example/connect")
        parser.add_argument("--key-file", metavar="PATH", help=f"file whose first line is the hub's API key (default ${KEY_ENV})")
        parser.add_argument("--key", type=key_removed, help=argparse.SUPPRESS)
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
        parser.add_argument("--no-write", action="store_true",
                            help="skip the setEntityParams checks (they only write current values back)")
        parser.add_argument("--entity", metavar="ID", help="the entity to test values on, e.g. plant/line1/pump1 "
                            "(default: one found through getEntities; needed when the hub has no getEntities)")
        parser.add_argument("--keys", metavar="K1,K2", help="the entity's keys to test (default: all of them)")
        parser.add_argument("--ca-file", metavar="PATH", help="wss://: PEM file of the CAs to trust (default: the system's)")
        parser.add_argument("--client-cert-file", metavar="PATH", help="wss://: PEM client certificate for a hub that asks for one")
        parser.add_argument("--client-key-file", metavar="PATH", help="wss://: the client certificate's unencrypted PEM key")
        parser.add_argument("--insecure", action="store_true",
                            help="wss://: do not check the hub's certificate (a test bench only; the report says so)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args, **options):
        key = key_read(key_file=options["key_file"])
        keys = [k.strip() for k in (options["keys"] or "").split(",") if k.strip()] or None
        if keys and not options["entity"]:
            raise CommandError("--keys needs --entity ID")
        tls = tls_read(ca_file=options["ca_file"], cert_file=options["client_cert_file"],
                       key_file=options["client_key_file"], insecure=options["insecure"])
        results = hub_conformance_check(url=options["url"], key=key, timeout=options["timeout"],
                                        write=not options["no_write"], entity=options["entity"], keys=keys, tls=tls)
        self.stdout.write(report_json(results, url=options["url"]) if options["json"] else format_report(results))
        failed = sum(r.status == "fail" for r in results)
        if failed:
            raise CommandError(f"{failed} conformance checks failed")
