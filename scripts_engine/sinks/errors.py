"""The one error the sinks raise."""

from __future__ import annotations


class SinkError(Exception):
    """A sink could not be reached or written; the message names the sink (never its password).

    ``refused``: the database refused the batch's data (a value too long for its column, a constraint,
    a value of the wrong type), so the same write without the offending execution may succeed
    (``sink_write_isolating`` splits on it). False for what would fail any batch: the database is
    down or unreachable, the connection broke, a lock or a timeout, a bad URL.
    """

    def __init__(self, message: str, *, permanent: bool = False, refused: bool = False):
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.refused = refused

    def __reduce__(self):
        return (_sink_error, (type(self), self.message, self.permanent, self.refused))


def _sink_error(cls, message, permanent, refused):
    return cls(message, permanent=permanent, refused=refused)
