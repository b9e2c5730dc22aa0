"""The one error a project document import raises: every problem found, each naming its JSON path."""

from __future__ import annotations


class ProjectDocumentError(Exception):
    """A project document was refused; ``errors`` lists every problem as ``"<json path>: <what is wrong>"``.

    Paths read like ``hubs[1].groups[0].period``; ``document`` stands for the document as a whole.
    Messages never repeat secret values (hub keys, sink and data source URLs).
    """

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors) if self.errors else "invalid project document")


class ProjectExistsError(ProjectDocumentError):
    """A project of the document's name exists and the import was not asked to replace it."""
