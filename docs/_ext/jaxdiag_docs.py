"""Sphinx extension for jaxdiag's docs: the CLI reference from the argparse parser, and the pages copied in at build.

- ``jaxdiag-cli`` directive: every command's ``--help`` text, taken from ``jaxdiag.cli._parser()`` when the site
  is built, so the reference cannot drift from the parser.
- ``autodoc-process-docstring``: docstrings shown verbatim (they are written as plain text).
- ``builder-inited``: copies ``benchmarks/*.md`` (the recorded results, with machine, date and command) to
  ``docs/performance/`` and ``examples/ioi.ipynb`` (executed once, outputs stored) to ``docs/tutorials/``,
  so the site shows the files themselves rather than copies that could go stale. Relative links in the
  benchmark files that point at other files of the repository become plain code text (the site holds no copy
  of them).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
COPIED_BENCHMARKS = DOCS / "performance"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class CliDirective(SphinxDirective):
    """``.. jaxdiag-cli::`` — a section per command with its full --help text."""

    has_content = False

    def run(self):
        from jaxdiag.cli import _parser

        parser = _parser()
        out = [nodes.literal_block(text=parser.format_help(), language="text")]
        for name, sub in _subcommands(parser).items():
            section = nodes.section(ids=[f"jaxdiag-{name}"])
            section += nodes.title(text=f"jaxdiag {name}")
            section += nodes.literal_block(text=sub.format_help(), language="text")
            out.append(section)
        return out


def _copy_sources(app) -> None:
    for md in sorted((ROOT / "benchmarks").glob("*.md")):
        text = md.read_text()
        # links to repository files the site does not hold -> code text; links to other benchmark pages stay
        text = re.sub(r"\[([^\]]+)\]\((?!https?://)([^)#]+?)\)",
                      lambda m: m.group(0) if m.group(2).endswith(".md") and (ROOT / "benchmarks" / m.group(2)).is_file()
                      else f"`{m.group(1).strip('`')}`", text)
        target = COPIED_BENCHMARKS / md.name
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
    notebook = DOCS / "tutorials" / "ioi.ipynb"
    source = ROOT / "examples" / "ioi.ipynb"
    if not notebook.is_file() or notebook.read_bytes() != source.read_bytes():
        shutil.copyfile(source, notebook)


def _docstring_as_text(app, what, name, obj, options, lines) -> None:
    """The docstrings are plain text with Markdown-style backticks, not reStructuredText: show them verbatim
    (autodoc still renders each signature), so a docstring's wording can never break the -W build."""
    if lines:
        body = [f"   {line}" if line.strip() else "" for line in lines]
        lines[:] = ["::", "", *body, ""]


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_as_text)
    app.add_directive("jaxdiag-cli", CliDirective)
    app.connect("builder-inited", _copy_sources)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
