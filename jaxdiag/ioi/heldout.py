"""What the IOI model is evaluated on and never trained on as IOI (``heldout.toml``, written before
training), and the ABBA -> BABA swap that both the training grammar and the evaluation apply."""

from __future__ import annotations

import tomllib
from pathlib import Path

_FILE = tomllib.loads((Path(__file__).resolve().parent / "heldout.toml").read_text())
TEMPLATES: tuple[str, ...] = tuple(_FILE["templates"])
PLACES: tuple[str, ...] = tuple(_FILE["places"])
OBJECTS: tuple[str, ...] = tuple(_FILE["objects"])
NAMES: tuple[str, ...] = tuple(_FILE["names"])


def baba(template: str) -> str:
    """BABA: swap the first occurrences of {A} and {B} (the first clause)."""
    a, b = template.index("{A}"), template.index("{B}")
    first, second = min(a, b), max(a, b)
    return template[:first] + template[second:second + 3] + template[first + 3:second] + template[first:first + 3] + template[second + 3:]
