"""The embedded log loses nothing that ``append`` confirmed when its writer is killed (SIGKILL, for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams.log import Retention, Start, log_open

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

# appends one record at a time and prints each offset only after append returned
WRITER = textwrap.dedent("""
    import sys
    from streams.log import Retention, log_open
    log = log_open(sys.argv[1], retention=Retention(3600.0, 1 << 30))
    i = 0
    while True:
        (offset,) = log.append("fault", [b"record-%d" % i])
        print(offset, i, flush=True)
        i += 1
""")


def test_a_writer_killed_right_after_append_returned_loses_nothing_it_confirmed(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True, env=env)
    confirmed = []
    try:
        for line in writer.stdout:
            confirmed.append(tuple(int(x) for x in line.split()))
            if len(confirmed) == 200:
                os.kill(writer.pid, signal.SIGKILL)  # right after an append returned, mid-way through the next
                break
    finally:
        writer.kill()
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL and len(confirmed) == 200

    log = log_open(url, retention=Retention(3600.0, 1 << 30))
    try:
        stored = {r.offset: r.body for r in log.read("fault", offset=0, max_records=100_000)}
    finally:
        log.close()
    for offset, i in confirmed:
        assert stored.get(offset) == b"record-%d" % i
    assert sorted(stored) == list(range(len(stored)))  # and nothing half-written: offsets without a gap
