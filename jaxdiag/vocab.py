"""Which token ids a checkpoint was trained on, and the prompts that contain any other.

A shipped model records its trained ids in ``trained_tokens.json``; for any other checkpoint an
embedding row that is exactly zero marks an untrained id (a tied GPT-2 feeds it a zero vector and
gives it a logit of exactly 0). JAX-free: numpy and the checkpoint's files only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRAINED_TOKENS_FILE = "trained_tokens.json"


def write_trained_tokens(directory: str | Path, ids: np.ndarray) -> Path:
    """Record the sorted token ids a model was trained on in ``directory/trained_tokens.json``."""
    path = Path(directory) / TRAINED_TOKENS_FILE
    ids = sorted({int(i) for i in np.asarray(ids).ravel()})
    path.write_text(json.dumps({"description": "token ids whose embedding rows were trained; every other row "
                                "is untrained (exactly zero)", "n": len(ids), "ids": ids}, separators=(",", ":")) + "\n")
    return path
