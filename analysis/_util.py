"""Small helpers shared by the analysis modules."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence numpy's all-NaN / divide warnings: NaN in, NaN out is the documented behaviour."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def to_jsonable(obj: Any) -> Any:
    """numpy/tuple/NaN-laden structures -> plain JSON types; NaN and inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj
