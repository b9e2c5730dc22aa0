"""PyMySQL connections for MySQL/MariaDB sinks that send a local file only when hubsched asked to load it.

In the MySQL protocol the server names the file of ``LOAD DATA LOCAL INFILE``, and may ask for one in
answer to any statement: a hostile or impersonated server at a sink URL can read any file the worker
can (``var/admin-password``, ``/proc/self/environ``) from a client that has LOCAL enabled. So:

- ``Sink.local_infile`` off (the default): PyMySQL is opened with ``local_infile=False``; it neither
  offers the LOCAL capability nor answers a file request (it raises, sending nothing).
- on: every connection is a ``GuardedConnection``, which answers a file request only with the file
  ``expected_infile`` names, set by ``tall._load_data`` around its own ``LOAD DATA`` and cleared after;
  any other name (or a request at any other time) gets an empty file and the statement fails with
  2068 (CR_LOAD_DATA_LOCAL_INFILE_REJECTED, the code MySQL's own client uses), nothing read.

This relies on PyMySQL internals (1.1: ``Connection._read_query_result``, ``MySQLResult.
_read_load_local_packet``, ``LoadLocalPacketWrapper``); scripts_engine/tests/test_sinks_local_infile.py
checks the guard against the real MariaDB, so an upgrade that moves them fails there.
"""

from __future__ import annotations

import pymysql
import sqlalchemy as sa
from pymysql import err
from pymysql.connections import MySQLResult
from pymysql.protocol import LoadLocalPacketWrapper

CR_LOAD_DATA_LOCAL_INFILE_REJECTED = 2068


class _GuardedResult(MySQLResult):
    def _read_load_local_packet(self, first_packet):
        conn = self.connection
        requested = LoadLocalPacketWrapper(first_packet).filename
        expected = getattr(conn, "expected_infile", None)
        if not conn._local_infile or expected is None or requested != expected.encode("utf-8"):
            # the protocol's refusal: an empty file; the server answers OK (or an error) for it
            conn.write_packet(b"")
            conn._read_packet()
            raise err.OperationalError(
                CR_LOAD_DATA_LOCAL_INFILE_REJECTED,
                f"LOAD DATA LOCAL INFILE file request rejected: the server asked for "
                f"{requested[:200].decode('utf-8', 'replace')!r}, not a file hubsched is loading",
            )
        return super()._read_load_local_packet(first_packet)


class GuardedConnection(pymysql.connections.Connection):
    """A PyMySQL connection that sends only the file in ``expected_infile`` (a path, or None: no file)."""

    expected_infile: str | None = None

    def _read_query_result(self, unbuffered=False):
        # PyMySQL's own method (1.1), with the guarded result class
        self._result = None
        result = _GuardedResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows


def guard_connections(engine: sa.Engine) -> None:
    """Make ``engine`` (a PyMySQL one) open GuardedConnection instead of PyMySQL's Connection."""

    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        return GuardedConnection(*cargs, **cparams)
