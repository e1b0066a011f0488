"""report.html: the report's markdown as one self-contained page, its figures inline.

The page is the text of report.md rendered by markdown-it (CommonMark plus tables), with every
image the markdown names read from the report folder and inlined as a ``data:`` URI, so the file
opens anywhere on its own: no network, no files beside it.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from analysis.errors import AnalysisError

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 3px; }
pre { background: #f5f5f5; padding: 8px; overflow-x: auto; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""
_IMAGE = re.compile(r'<img src="([^"]+)"')


def report_page(markdown_text: str, folder: Path, title: str = "jaxdiag report") -> str:
    """The whole page of ``markdown_text``, its relative images read from ``folder`` and inlined."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    body = _IMAGE.sub(lambda match: f'<img src="{_data_uri(folder, html.unescape(match[1]))}"', body)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def _data_uri(folder: Path, name: str) -> str:
    path = folder / name
    if "/" in name.replace("\\", "/") or not path.is_file():
        raise AnalysisError(f"report.md names the image {name!r}, which is not a file of the report folder {folder}")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
