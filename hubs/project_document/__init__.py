"""Projects as JSON documents (``hubsched.project/1``): the schema, export, and a validating, all-or-nothing import.

The entry points are the services in ``hubs.services`` (``project_export``, ``project_import``);
this package holds the format itself. See docs/projects.md.
"""

from .errors import ProjectDocumentError, ProjectDocumentUnreadable, ProjectExistsError
from .export import document_build, document_dumps
from .importer import ProjectImport, document_import
from .validation import FORMAT, document_parse, document_validate, schema

__all__ = [
    "FORMAT",
    "ProjectDocumentError",
    "ProjectDocumentUnreadable",
    "ProjectExistsError",
    "ProjectImport",
    "document_build",
    "document_dumps",
    "document_import",
    "document_parse",
    "document_validate",
    "schema",
]
