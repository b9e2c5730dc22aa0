"""Summaries of py-spy profiles (speedscope JSON), for "where the time goes" in the benchmarks' output.

``bench e2e --py-spy FILE`` records the first hubsched worker with ``py-spy record --gil -f speedscope``:
a sample every 10 ms of the thread holding the GIL, so the samples are the process's Python CPU
(and C code called with the GIL held), not its waiting. The summary gives

- ``threads``: share of the samples per kind of thread (the name without its number or address:
  ``ThreadPoolExecutor`` for Celery's task threads, ``hub-reader``, ``sink-<name>``, ``run-recorder``);
- ``self``: share of the samples whose innermost function is this one (all its lines together);
- ``inclusive``: share of the samples with the function anywhere on the stack (once per sample).

Format: https://github.com/jlfwong/speedscope/wiki/Importing-from-custom-sources ("sampled" profiles,
one per thread: ``samples`` are stacks of indices into ``shared.frames``, outermost first, and
``weights`` are in the profile's ``unit``, seconds for py-spy).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

# py-spy names a profile 'Process 123 Thread 456 "name"'
_THREAD_NAME = re.compile(r'"([^"]*)"\s*$')
_THREAD_NUMBER = re.compile(r"([-_ ]\d+)+$")


def speedscope_summary(path: str | Path, *, top: int = 15) -> dict:
    """``{"seconds", "samples", "threads", "self", "inclusive"}``; the last three are lists of
    ``{"thread" or "function", "percent"}``, largest first, ``top`` of each function list.

    ``seconds`` is the sum of the weights when the unit is seconds (else None). ``function`` is
    ``"name (file)"`` with the file shortened to its last two path parts; py-spy's process frame
    (no file) is left out. Raises OSError when the file cannot be read and ValueError when it is not
    a speedscope document.
    """
    document = json.loads(Path(path).read_text())
    try:
        frames = document["shared"]["frames"]
        profiles = document["profiles"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a speedscope profile (no shared.frames or profiles)") from None
    names = [_function(frame) for frame in frames]
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0.0
    samples = 0
    seconds = True
    for profile in profiles:
        if profile.get("type") != "sampled":
            continue
        seconds = seconds and profile.get("unit") == "seconds"
        weights = profile.get("weights") or [1] * len(profile["samples"])
        thread = _thread_kind(str(profile.get("name", "")))
        for stack, weight in zip(profile["samples"], weights):
            functions = [names[index] for index in stack if names[index]]
            if not functions:
                continue
            total += weight
            samples += 1
            threads[thread] += weight
            own[functions[-1]] += weight
            for name in set(functions):
                anywhere[name] += weight

    def ranked(counter: Counter[str], label: str, limit: int | None) -> list[dict]:
        if not total:
            return []
        return [{label: name, "percent": round(100.0 * weight / total, 1)} for name, weight in counter.most_common(limit)]

    return {
        "seconds": round(total, 2) if seconds and samples else None,
        "samples": samples,
        "threads": ranked(threads, "thread", None),
        "self": ranked(own, "function", top),
        "inclusive": ranked(anywhere, "function", top),
    }


def _function(frame: dict) -> str:
    file = str(frame.get("file") or "")
    if not file:
        return ""
    return f"{frame.get('name', '?')} ({'/'.join(Path(file).parts[-2:])})"


def _thread_kind(profile_name: str) -> str:
    match = _THREAD_NAME.search(profile_name)
    name = match.group(1) if match else profile_name
    return _THREAD_NUMBER.sub("", name.split(" ", 1)[0]) or name
