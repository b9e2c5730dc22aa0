"""The rules of a job, written once: the admin (``Job.clean()``), the API, project import and the ruqi endpoints
all call these, so the text is the same everywhere. Messages name what is wrong; each caller puts them where they
belong (a form field, a JSON path such as ``jobs[2].argv[0]``, ruqi's ``msg``).

The trigger rules are the groups' own (``groups.validators``): the same interval, cron with seconds and once.
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import urlsplit

from groups.validators import cron_problem, group_trigger_problems, period_problem

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUCCESS_CODES_DEFAULT = "200-299"
SUCCESS_CODES_MESSAGE = "expected HTTP status codes and ranges between 100 and 599, such as 200-299,304"
ARGV_MAX = 256  # arguments of a shell job's argument vector
OUTPUT_LIMIT_MAX_KIB = 10 * 1024  # what a run keeps of each of stdout and stderr, at most


def success_codes_parse(text: str) -> list[tuple[int, int]]:
    """``"200-299,304"`` -> ``[(200, 299), (304, 304)]``; raises ValueError with ``SUCCESS_CODES_MESSAGE``."""
    ranges = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(SUCCESS_CODES_MESSAGE)
        lo, hi = int(low), int(high or low)
        if not 100 <= lo <= hi <= 599:
            raise ValueError(SUCCESS_CODES_MESSAGE)
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError(SUCCESS_CODES_MESSAGE)
    return ranges


def success_codes_problem(text: str) -> str | None:
    try:
        success_codes_parse(text)
    except ValueError as exc:
        return str(exc)
    return None


def job_trigger_problems(*, trigger: str, period: float | None, cron: str, has_run_at: bool) -> list[tuple[str, str]]:
    """``[(field, message)]``: the groups' trigger rules; a job has no on-change trigger."""
    problems = []
    if trigger not in ("interval", "cron", "once"):
        return [("trigger", f"unknown trigger {trigger!r}: expected interval, cron or once")]
    if trigger == "interval" and period is not None and period_problem(period):
        problems.append(("period", period_problem(period)))
    problems += group_trigger_problems(trigger=trigger, cron=cron or "", has_run_at=has_run_at)
    return problems


def argv_problems(argv: Any) -> list[tuple[int | None, str]]:
    """``[(index, message)]`` for a shell job's argument vector: a non-empty list of strings without NUL characters.

    Never a string given to a shell: the first item is the program (looked up on the job's ``PATH``), the others its
    arguments, passed as they are (``subprocess.Popen(argv, shell=False)``)."""
    if not isinstance(argv, list) or not argv:
        return [(None, "a shell job needs an argument vector: a list of strings, the program first")]
    if len(argv) > ARGV_MAX:
        return [(None, f"at most {ARGV_MAX} arguments")]
    problems = []
    for index, item in enumerate(argv):
        if not isinstance(item, str):
            problems.append((index, "expected a string"))
        elif "\x00" in item:
            problems.append((index, "contains a NUL character"))
        elif index == 0 and not item.strip():
            problems.append((index, "the program is empty"))
    return problems


def environment_problems(env: Any) -> list[tuple[str | None, str]]:
    """``[(name, message)]`` for a job's environment: names of letters, digits and underscores, string values."""
    if not isinstance(env, dict):
        return [(None, "expected an object of variable names to strings")]
    problems = []
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            problems.append((str(name), "not a variable name (letters, digits and _, not starting with a digit)"))
        elif not isinstance(value, str) or "\x00" in value:
            problems.append((name, "expected a string without NUL characters"))
    return problems


def headers_problems(headers: Any) -> list[tuple[str | None, str]]:
    """``[(name, message)]`` for an HTTP job's headers: token names, string values without line breaks."""
    if not isinstance(headers, dict):
        return [(None, "expected an object of header names to strings")]
    problems = []
    for name, value in headers.items():
        if not isinstance(name, str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", name):
            problems.append((str(name), "not a header name"))
        elif not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            problems.append((name, "expected a string without line breaks"))
    return problems


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL with a host, or None."""
    try:
        parts = urlsplit(url or "")
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    return None


def job_command_problems(
    *, kind: str, argv: Any = None, environment: Any = None, method: str = "POST", url: str = "", headers: Any = None,
    success_codes: str = SUCCESS_CODES_DEFAULT, has_script: bool = False,
) -> list[tuple[str, str]]:
    """``[(field, message)]`` for a job's command; ``field`` may carry an index or name (``argv[1]``, ``environment.X``)."""
    problems: list[tuple[str, str]] = []
    if kind == "shell":
        problems += [("argv" if i is None else f"argv[{i}]", m) for i, m in argv_problems(argv)]
        problems += [("environment" if n is None else f"environment.{n}", m) for n, m in environment_problems(environment or {})]
    elif kind == "http":
        if method not in HTTP_METHODS:
            problems.append(("method", f"expected one of {', '.join(HTTP_METHODS)}"))
        if url_problem(url):
            problems.append(("url", url_problem(url)))
        problems += [("headers" if n is None else f"headers.{n}", m) for n, m in headers_problems(headers or {})]
        if success_codes_problem(success_codes):
            problems.append(("success_codes", success_codes_problem(success_codes)))
    elif kind == "script":
        if not has_script:
            problems.append(("script", "a script job needs a script of its project"))
    else:
        problems.append(("kind", f"unknown command kind {kind!r}: expected shell, http or script"))
    return problems


def fields_message(problems: Iterable[tuple[str, str]]) -> str:
    """``"argv[0]: the program is empty; url: ..."``: problems in one line (ruqi's ``msg``, log lines)."""
    return "; ".join(f"{field}: {message}" for field, message in problems)


__all__ = ["cron_problem", "job_trigger_problems", "job_command_problems", "success_codes_parse", "fields_message"]
