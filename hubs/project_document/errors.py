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


class ProjectDocumentUnreadable(ProjectDocumentError):
    """The document could not be read at all (too large, not UTF-8, not JSON, nested too deeply), so none of
    its content was checked. ``too_large``: refused for its size alone (the API answers 413 then, else 400)."""

    def __init__(self, errors: list[str], *, too_large: bool = False):
        super().__init__(errors)
        self.too_large = too_large
