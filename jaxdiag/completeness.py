"""Whether a store holds every prompt its run planned, for the commands that read one (``report``, ``verify``).

A run that was killed leaves ``complete: false`` and fewer prompts of some condition than planned. Reading it
as if it were whole would silently change the analysis (a paired store whose pairs no longer match is read as
independent), so the readers refuse it unless told ``--allow-incomplete``; they then keep only the prompts
whose pair partner was stored too (:func:`complete_pairs`). Imports numpy only: ``analysis`` uses it without JAX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdiag.errors import JaxdiagError


def stored_counts(ds: Any) -> dict[str, int]:
    """condition -> prompts stored (``n_tokens`` > 0; padding and unwritten chunks have 0)."""
    names = [str(c) for c in ds["condition"].values]
    if "n_tokens" not in ds.coords and "n_tokens" not in ds:
        return {}
    n_tokens = np.asarray(ds["n_tokens"].values)
    return {name: int((n_tokens[i] > 0).sum()) for i, name in enumerate(names)}


def planned_prompts(ds: Any) -> int | None:
    """Prompts per condition the run config asked for, when it names a number."""
    import json

    raw = ds.attrs.get("config")
    try:
        config = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    prompts = config.get("prompts") if isinstance(config, dict) else None
    n = prompts.get("n_prompts") if isinstance(prompts, dict) else None
    if n is None and isinstance(config, dict):
        n = config.get("n_prompts")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def incompleteness(ds: Any) -> str | None:
    """None for a whole store, else what is missing ("ioi 300, non_ioi 256 of 300 prompts stored").

    A store is incomplete when its ``complete`` attribute is false (stores without it, written before it
    existed or by hand, count as complete) or some condition holds fewer prompts than the run config planned."""
    counts = stored_counts(ds)
    planned = planned_prompts(ds)
    short = planned is not None and any(n < planned for n in counts.values())
    if ds.attrs.get("complete", True) is not False and not short:
        return None
    of = f" of {planned}" if planned is not None else ""
    return ", ".join(f"{name} {n}" for name, n in counts.items()) + f"{of} prompts stored"


def check_complete(ds: Any, store: str, allow_incomplete: bool, error: type[Exception] = JaxdiagError) -> str | None:
    """Refuse an incomplete store (one line: what is stored, how to finish it) unless allow_incomplete; return the
    note a report states at its top (None for a whole store)."""
    missing = incompleteness(ds)
    if missing is None:
        return None
    if not allow_incomplete:
        raise error(f"store {store} is incomplete ({missing}): finish it with `jaxdiag run <the same config and "
                    f"flags> --out {store} --resume`, or pass --allow-incomplete to analyse what is stored")
    return f"incomplete store ({missing}): only the complete pairs (the stored prompts, unpaired stores) are analysed"


def complete_pairs(ds: Any, conditions: tuple[str, ...]) -> np.ndarray:
    """``[condition, prompt]`` bool: the stored prompts kept for an incomplete store's analysis: those whose pair id
    is stored in every one of ``conditions`` (all stored prompts when the store has no ``pair`` coordinate)."""
    n_tokens = np.asarray(ds["n_tokens"].values)
    stored = n_tokens > 0
    if "pair" not in ds.coords:
        return stored
    names = [str(c) for c in ds["condition"].values]
    pair = np.asarray(ds["pair"].values).astype(str)
    rows = [names.index(c) for c in conditions if c in names]
    common = set.intersection(*(set(pair[i][stored[i]].tolist()) for i in rows)) if rows else set()
    keep = stored & np.isin(pair, sorted(common))
    return np.where(np.isin(np.arange(len(names)), rows)[:, None], keep, stored)
