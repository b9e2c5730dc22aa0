"""Summaries of py-spy profiles (speedscope JSON), for "where the time goes" in the benchmarks' output.

``bench e2e --py-spy FILE`` records the first hubsched worker with ``py-spy record --gil -f speedscope``:
one sample per interval of the thread holding the GIL, so the samples are the process's Python CPU
(and C code called with the GIL held), not its waiting. The summary ranks functions by

- ``self``: share of the samples whose innermost frame is the function;
- ``inclusive``: share of the samples with the function anywhere on the stack (counted once per sample).

Format: https://github.com/jlfwong/speedscope/wiki/Importing-from-custom-sources ("sampled" profiles:
``samples`` are stacks of indices into ``shared.frames``, outermost first, with ``weights``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def speedscope_summary(path: str | Path, *, top: int = 15) -> dict:
    """``{"samples": int, "self": [{"function", "percent"}], "inclusive": [...]}``, ``top`` of each, largest first.

    ``function`` is ``"name (file:line)"`` with the file shortened to its last two path parts.
    Raises OSError when the file cannot be read and ValueError when it is not a speedscope document.
    """
    document = json.loads(Path(path).read_text())
    try:
        frames = document["shared"]["frames"]
        profiles = document["profiles"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a speedscope profile (no shared.frames or profiles)") from None
    names = [_frame_name(frame) for frame in frames]
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0.0
    for profile in profiles:
        if profile.get("type") != "sampled":
            continue
        weights = profile.get("weights") or [1] * len(profile["samples"])
        for stack, weight in zip(profile["samples"], weights):
            if not stack:
                continue
            total += weight
            own[names[stack[-1]]] += weight
            for name in {names[index] for index in stack}:
                anywhere[name] += weight

    def ranked(counter: Counter[str]) -> list[dict]:
        return [{"function": name, "percent": round(100.0 * weight / total, 1)} for name, weight in counter.most_common(top)]

    return {"samples": int(total), "self": ranked(own) if total else [], "inclusive": ranked(anywhere) if total else []}


def _frame_name(frame: dict) -> str:
    file = "/".join(Path(str(frame.get("file") or "?")).parts[-2:])
    line = frame.get("line")
    return f"{frame.get('name', '?')} ({file}:{line})" if line else f"{frame.get('name', '?')} ({file})"
