"""``bench log``: how many executions per second the durable log takes and gives back (docs/streams.md).

Writers (threads of one process, as a worker's) each encode an execution of ``--values`` values
(streams.codec) and append it, ``--batch`` executions per append, waiting for each append to be
durable, for ``--seconds``. Then one reader reads the stream from the first record and decodes every
record. Measures appends/s, executions/s, values/s and bytes/s each way. Runs on a stream of its own
(RabbitMQ: deleted after; SQLite: a temporary file, or ``--url``).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

HELP = "Append and read executions through the durable log (streams/) on SQLite or RabbitMQ Streams."


def add_arguments(parser) -> None:
    parser.add_argument("--backend", choices=["sqlite", "rabbitmq"], default="sqlite")
    parser.add_argument("--url", default="", help="The log's URL (default: a temporary SQLite file, or "
                        "rabbitmq-stream://guest:guest@127.0.0.1:5552/).")
    parser.add_argument("--seconds", type=float, default=10.0, help="How long the writers append.")
    parser.add_argument("--threads", type=int, default=4, help="Writer threads.")
    parser.add_argument("--values", type=int, default=100, help="Values per execution.")
    parser.add_argument("--batch", type=int, default=1, help="Executions per append (1: one per tick's task).")


def _execution(values: int, n: int):
    from scripts_engine.sinks.values import ExecutionValues

    tick = datetime.now(timezone.utc)
    ts = tick.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    items = [{"key": f"param-{i}", "value": 20.0 + i / 7, "ts": ts, "quality": "good"} for i in range(values)]
    return ExecutionValues(tick, "bench", "hub-1", n, f"group-{n}", [("boiler/1", items)])


def run(*, backend: str, url: str, seconds: float, threads: int, values: int, batch: int, log) -> dict:
    from streams.codec import execution_decode, execution_encode
    from streams.log import Retention, Start, log_open

    tmp = None
    if not url:
        if backend == "sqlite":
            tmp = tempfile.TemporaryDirectory(prefix="bench-log-")
            url = f"sqlite:///{Path(tmp.name) / 'log.sqlite3'}"
        else:
            url = "rabbitmq-stream://guest:guest@127.0.0.1:5552/"
    the_log = log_open(url, retention=Retention(3600.0, 10 * 1024**3))
    stream = f"bench-{uuid.uuid4().hex[:10]}"
    appends = [0] * threads
    encoded_bytes = [0] * threads
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def writer(k: int) -> None:
        n = 0
        try:
            while time.monotonic() < stop:
                bodies = [execution_encode(_execution(values, k * 1_000_000 + n + i)) for i in range(batch)]
                the_log.append(stream, bodies)
                n += batch
                appends[k] += 1
                encoded_bytes[k] += sum(len(b) for b in bodies)
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(f"{type(exc).__name__}: {exc}")

    try:
        the_log.append(stream, [execution_encode(_execution(values, -1))])  # creates the stream, connects
        log(f"bench log: {backend}: {threads} writer(s), {batch} execution(s) of {values} values per append, "
            f"{seconds:g} s ...")
        started = time.monotonic()
        workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wrote_s = time.monotonic() - started
        executions = sum(appends) * batch
        log(f"bench log: wrote {executions} executions; reading them back ...")

        read, read_bytes, read_values = 0, 0, 0
        started = time.monotonic()
        with the_log.reader(stream, Start.first()) as reader:
            while read < executions + 1:
                records = reader.read(max_records=1000, timeout=5.0)
                if not records:
                    break
                for record in records:
                    read_values += execution_decode(record.body).value_count()
                    read_bytes += len(record.body)
                read += len(records)
        read_s = time.monotonic() - started
    finally:
        try:
            the_log.stream_delete(stream)
        finally:
            the_log.close()
            if tmp is not None:
                tmp.cleanup()
    return {
        "backend": backend,
        "threads": threads,
        "values_per_execution": values,
        "executions_per_append": batch,
        "seconds": round(wrote_s, 2),
        "appends_per_s": round(sum(appends) / wrote_s, 1),
        "executions_per_s": round(executions / wrote_s, 1),
        "values_per_s": round(executions * values / wrote_s),
        "write_mb_per_s": round(sum(encoded_bytes) / wrote_s / 1e6, 2),
        "bytes_per_execution": round(sum(encoded_bytes) / executions) if executions else None,
        "read_executions": read,
        "read_executions_per_s": round(read / read_s, 1) if read_s else None,
        "read_values_per_s": round(read_values / read_s) if read_s else None,
        "read_mb_per_s": round(read_bytes / read_s / 1e6, 2) if read_s else None,
        "errors": errors[:5],
    }


def report(result: dict) -> str:
    return "\n".join([
        f"log on {result['backend']}: {result['threads']} writer thread(s), {result['executions_per_append']} "
        f"execution(s) of {result['values_per_execution']} values per append ({result['bytes_per_execution']} bytes each)",
        f"  append: {result['appends_per_s']} appends/s, {result['executions_per_s']} executions/s, "
        f"{result['values_per_s']} values/s, {result['write_mb_per_s']} MB/s",
        f"  read+decode: {result['read_executions_per_s']} executions/s, {result['read_values_per_s']} values/s, "
        f"{result['read_mb_per_s']} MB/s ({result['read_executions']} read)",
        *(f"  error: {e}" for e in result["errors"]),
    ])
