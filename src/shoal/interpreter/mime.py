"""Jupyter MIME bundle → the fields of an E2B ``result`` (e2b-compat.md §5.2)."""

from __future__ import annotations

import json
from typing import Any

#: MIME type → result field; everything else goes to ``extra``
FIELDS: dict[str, str] = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}

_OBJECT_FIELDS = {"json", "data", "chart"}


def strip_quotes(text: str) -> str:
    """One level of surrounding quotes, as upstream (``'abc'`` → ``abc``)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def bundle_to_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for mime_type, value in data.items():
        name = FIELDS.get(mime_type)
        if name is None:
            extra[mime_type] = value
            continue
        if name == "text" and isinstance(value, str):
            value = strip_quotes(value)
        elif name in _OBJECT_FIELDS and isinstance(value, str):
            try:  # some kernels send JSON MIME types as text
                value = json.loads(value)
            except ValueError:
                pass
        elif name not in _OBJECT_FIELDS and isinstance(value, list):  # split lines
            value = "".join(str(v) for v in value)
        fields[name] = value
    fields["extra"] = extra
    return fields
