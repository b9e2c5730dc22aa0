"""The rules of a hub (its URL, its TLS settings), written once: the admin (Hub.clean), the console and API, and project import call these.

Each function returns the message a person reads (never quoting a secret), or None when the value is fine;
callers put it on their field (a form field, a JSON path such as ``hubs[0].url``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

def time_zone_problem(name) -> str | None:
    """Why ``name`` is not a project's time zone (an IANA name Python's zoneinfo knows, e.g. Europe/Berlin),
    or None."""
    import json
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return "unknown time zone " + json.dumps(name)
    return None


HUB_URL_MESSAGE = "must be a WebSocket URL: ws:// or wss:// (TLS) and a host, e.g. ws://10.10.20.8/connect"


def hub_url_problem(url: str) -> str | None:
    """Why ``url`` is not a hub endpoint (hub protocol v1: a WebSocket URL, ``ws://`` or ``wss://``, with a
    host), or None. The message does not repeat the URL: it may carry credentials."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number or out of range)
    except (ValueError, AttributeError):
        return HUB_URL_MESSAGE
    if parts.scheme.lower() not in {"ws", "wss"} or not host or url != url.strip():
        return HUB_URL_MESSAGE
    return None


# --- TLS settings (wss://) -------------------------------------------------------------------------------------

TLS_CA_MESSAGE = ("must be PEM certificates (blocks from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----); "
                  "this text does not parse as one")
TLS_CERT_MESSAGE = ("must be a PEM certificate, optionally followed by its intermediate CAs (-----BEGIN CERTIFICATE-----); "
                    "this text does not parse as one")
TLS_KEY_MESSAGE = ("must be an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----, or RSA/EC PRIVATE KEY); "
                   "this text does not parse as one")
TLS_KEY_ENCRYPTED_MESSAGE = "must be an unencrypted PEM private key; this one is protected by a password"
TLS_KEY_WITHOUT_CERT_MESSAGE = "a client key needs its client certificate"
TLS_CERT_WITHOUT_KEY_MESSAGE = "a client certificate needs its client key"
TLS_KEY_MISMATCH_MESSAGE = "is not the key of the client certificate (their public keys differ)"


def _certificates(text: str) -> list | None:
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        return None
    return certificates or None


def hub_tls_problems(*, ca_pem: str = "", cert_pem: str = "", key_pem: str = "") -> list[tuple[str, str]]:
    """Why a hub's TLS settings cannot work, as ``[(field, message)]`` with fields ``tls_ca_bundle``,
    ``tls_client_cert``, ``tls_client_key`` (the Hub model's and the project document's names); empty when
    they are fine. Empty texts are fine (the system's CA store; no client certificate), but a certificate
    and a key come together and must match. PEM that does not parse is refused here, at save and at import,
    rather than at the first connection. No message quotes the key or any part of it.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    problems: list[tuple[str, str]] = []
    if ca_pem.strip() and _certificates(ca_pem) is None:
        problems.append(("tls_ca_bundle", TLS_CA_MESSAGE))
    certificates = None
    if cert_pem.strip():
        certificates = _certificates(cert_pem)
        if certificates is None:
            problems.append(("tls_client_cert", TLS_CERT_MESSAGE))
    key = None
    if key_pem.strip():
        try:
            key = serialization.load_pem_private_key(key_pem.encode("utf-8"), password=None)
        except TypeError:  # cryptography: "Password was not given but private key is encrypted"
            problems.append(("tls_client_key", TLS_KEY_ENCRYPTED_MESSAGE))
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
            problems.append(("tls_client_key", TLS_KEY_MESSAGE))
    if cert_pem.strip() and not key_pem.strip():
        problems.append(("tls_client_key", TLS_CERT_WITHOUT_KEY_MESSAGE))
    elif key_pem.strip() and not cert_pem.strip():
        problems.append(("tls_client_cert", TLS_KEY_WITHOUT_CERT_MESSAGE))
    elif certificates and key is not None:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if certificates[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problems.append(("tls_client_key", TLS_KEY_MISMATCH_MESSAGE))
    return problems


# --- redundancy sets and offsets (docs/redundancy.md) --------------------------------------------------------

REDUNDANCY_PROJECT_MESSAGE = "must be a redundancy set of the hub's own project"


def redundancy_project_problem() -> str:
    """The message for a hub put in a redundancy set of another project (members serve one project)."""
    return REDUNDANCY_PROJECT_MESSAGE


def redundancy_priority_problem(*, priority: int, taken_by: str | None) -> str | None:
    """Why ``priority`` cannot be this hub's in its set (another member ``taken_by`` holds it), or None.
    Priorities are unique within a set, so a set has one master (the lowest, normally 0)."""
    if taken_by is None:
        return None
    role = "the master's" if priority == 0 else f"backup {priority}'s"
    return f"priority {priority} ({role}) is already hub {taken_by!r}'s in this set; each member has its own"


def failback_problem(value: float) -> str | None:
    """Why ``value`` (seconds) is not a failback time: it must be a finite number of 0 or more."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return "must be a number of seconds, 0 or more"
    return None


def key_thresholds_problems(value) -> list[tuple[str, str]]:
    """Why ``value`` is not a redundancy set's per-key thresholds ``{key: {"abs": number | null, "percent":
    number | null}}`` (numbers finite and 0 or more): ``[(where, message)]``, where is the key ("" for the whole)."""
    import math

    if not isinstance(value, dict):
        return [("", 'must be an object of keys, e.g. {"flow": {"abs": 0.5}}')]
    problems = []
    for key, limits in value.items():
        if not isinstance(limits, dict) or not limits or set(limits) - {"abs", "percent"}:
            problems.append((key, 'must be an object with "abs", "percent" or both'))
            continue
        for name, limit in limits.items():
            if limit is None:
                continue
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
                problems.append((key, f"{name} must be a number, 0 or more, or null"))
    return problems


def hub_offset_problems(*, add: float, factor: float) -> list[tuple[str, str]]:
    """Why an offset cannot correct values, as ``[(field, message)]`` with fields ``add`` and ``factor``:
    both finite numbers, the factor not 0 (it would erase the reading)."""
    import math

    problems = []
    if add is None or not math.isfinite(add):
        problems.append(("add", "must be a finite number"))
    if factor is None or not math.isfinite(factor):
        problems.append(("factor", "must be a finite number"))
    elif factor == 0:
        problems.append(("factor", "must not be 0 (it would erase the value)"))
    return problems


def redundancy_members_problems(*, members: list[str], hubs: set[str], in_set: dict[str, str], set_name: str
                                ) -> list[tuple[int, str]]:
    """Why a document's member list (hub names, master first) cannot be a set, as ``[(index, message)]``:
    a name that is no hub of the project, a hub twice, a hub already in another set (``in_set``: hub ->
    set name, filled as sets are read)."""
    problems = []
    seen: set[str] = set()
    for index, name in enumerate(members):
        if name not in hubs:
            problems.append((index, f"no hub named {name!r} in this project"))
        elif name in seen:
            problems.append((index, f"hub {name!r} is a member twice"))
        elif in_set.get(name, set_name) != set_name:
            problems.append((index, f"hub {name!r} is already a member of redundancy set {in_set[name]!r}"))
        seen.add(name)
    if not members:
        problems.append((-1, "a set needs its members, the master first"))
    return problems
