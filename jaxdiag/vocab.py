"""Which token ids a checkpoint was trained on, and the prompts that contain any other.

A shipped model records its trained ids in ``trained_tokens.json``; for any other checkpoint an
input-embedding row that is exactly zero marks an untrained id (a tied GPT-2 feeds it a zero vector
and gives it a logit of exactly 0, so whatever jaxdiag measures on such a prompt is not the model's
behaviour on a word it knows). :func:`check_prompts` counts the prompts that contain one; a sweep and
:func:`jaxdiag.api.diagnose` warn in one line and record the count, or refuse with ``strict``.

JAX-free: numpy and the checkpoint's files only (the embedding is read from the safetensors file
by memory map, so a large checkpoint costs one pass over its embedding).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from jaxdiag.errors import JaxdiagError

TRAINED_TOKENS_FILE = "trained_tokens.json"
# input-embedding tensors of the families jaxdiag loads (GPT-2, Llama/Qwen2/Mistral, BERT/ALBERT, GPT-NeoX)
EMBEDDING_SUFFIXES = ("wte.weight", "embed_tokens.weight", "word_embeddings.weight", "embed_in.weight")
# safetensors dtype -> (unsigned view, mask without the sign bit): a row is zero when every masked value is 0
_RAW = {"F64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF), "F32": (np.uint32, 0x7FFF_FFFF),
        "F16": (np.uint16, 0x7FFF), "BF16": (np.uint16, 0x7FFF)}
SHOWN_IDS = 20  # ids kept in a warning and the store's attributes


class UntrainedTokensWarning(UserWarning):
    """Some prompts contain token ids whose embedding the model never trained."""


def write_trained_tokens(directory: str | Path, ids: np.ndarray) -> Path:
    """Record the sorted token ids a model was trained on in ``directory/trained_tokens.json``."""
    path = Path(directory) / TRAINED_TOKENS_FILE
    ids = sorted({int(i) for i in np.asarray(ids).ravel()})
    path.write_text(json.dumps({"description": "token ids whose embedding rows were trained; every other row "
                                "is untrained (exactly zero)", "n": len(ids), "ids": ids}, separators=(",", ":")) + "\n")
    return path


def _safetensors_header(path: Path) -> tuple[dict, int]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size)), 8 + size


def _embedding_location(directory: Path) -> tuple[Path, dict, int] | None:
    """``(file, tensor header, data start)`` of the input embedding, or None (no safetensors, no such tensor)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [directory / f for name, f in weight_map.items() if name.endswith(EMBEDDING_SUFFIXES)][:1]
    else:
        files = [directory / "model.safetensors"] if (directory / "model.safetensors").is_file() else []
    for path in files:
        header, start = _safetensors_header(path)
        name = next((n for n in sorted(header) if n.endswith(EMBEDDING_SUFFIXES)), None)
        if name is not None and header[name].get("dtype") in _RAW and len(header[name]["shape"]) == 2:
            return path, header[name], start
    return None


def zero_embedding_rows(directory: str | Path) -> np.ndarray | None:
    """Sorted ids whose input-embedding row is exactly zero (+0.0 or -0.0); None when the embedding
    cannot be read without loading the model (no safetensors file, an unknown tensor name or dtype)."""
    found = _embedding_location(Path(directory))
    if found is None:
        return None
    path, tensor, start = found
    kind, mask = _RAW[tensor["dtype"]]
    begin, end = tensor["data_offsets"]
    rows = np.memmap(path, dtype=kind, mode="r", offset=start + begin, shape=tuple(tensor["shape"]))
    assert (end - begin) == rows.nbytes
    return np.flatnonzero(~np.any(rows & kind(mask), axis=1)).astype(np.int64)


def untrained_ids(directory: str | Path, vocab_size: int) -> tuple[np.ndarray, str]:
    """``(sorted untrained ids, where that is known from)``: ``trained_tokens.json`` when the checkpoint
    ships one, else its exactly-zero embedding rows; empty when neither says anything."""
    directory = Path(directory)
    recorded = directory / TRAINED_TOKENS_FILE
    if recorded.is_file():
        try:
            trained = np.asarray(json.loads(recorded.read_text())["ids"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as exc:
            raise JaxdiagError(f"{recorded}: not a trained-tokens file ({exc})") from None
        return np.setdiff1d(np.arange(vocab_size), trained), TRAINED_TOKENS_FILE
    zero = zero_embedding_rows(directory)
    return (np.empty(0, np.int64), "") if zero is None else (zero, "zero embedding rows")


@dataclasses.dataclass(frozen=True)
class VocabCheck:
    """How many prompts contain an untrained id, and which ids (the first :data:`SHOWN_IDS`)."""

    n_prompts: int
    n_untrained_prompts: int
    ids: tuple[int, ...]
    source: str  # "trained_tokens.json" or "zero embedding rows"

    def message(self, describe: Callable[[int], str] | None = None) -> str:
        """One line: how many prompts, by what evidence, which ids (``describe(id)``: each id's text)."""
        shown = ", ".join(f"{i} {describe(i)!r}" if describe else str(i) for i in self.ids[:5])
        return (f"{self.n_untrained_prompts} of {self.n_prompts} prompts contain token ids this model never trained "
                f"(by its {self.source}: {shown}{', ...' if len(self.ids) > 5 else ''}); what it computes on them "
                f"is not its behaviour on words it knows")

    def attrs(self) -> dict:
        """What a store or dataset records (``untrained_prompts`` is 0 when every id was trained)."""
        return {"untrained_prompts": self.n_untrained_prompts, "untrained_token_ids": list(self.ids)}


def check_prompts(token_lists: Iterable[Sequence[int]], untrained: np.ndarray, source: str) -> VocabCheck:
    """Count the prompts holding any id of ``untrained`` (sorted)."""
    untrained = np.asarray(untrained, dtype=np.int64)
    n = bad = 0
    seen: set[int] = set()
    for tokens in token_lists:
        n += 1
        hits = np.asarray(tokens, dtype=np.int64)
        hits = hits[np.isin(hits, untrained)] if untrained.size else hits[:0]
        if hits.size:
            bad += 1
            seen.update(int(i) for i in hits[:SHOWN_IDS])
    return VocabCheck(n, bad, tuple(sorted(seen)[:SHOWN_IDS]), source)


def enforce(check: VocabCheck, *, strict: bool, describe: Callable[[int], str] | None = None) -> str | None:
    """The warning line when some prompts hold untrained ids (None when none does); with ``strict`` a
    :class:`JaxdiagError` instead."""
    if check.n_untrained_prompts == 0:
        return None
    if strict:
        raise JaxdiagError(check.message(describe) + " (refused: --strict-vocab)")
    return check.message(describe) + " (--strict-vocab makes this an error)"


def check(directory: str | Path, vocab_size: int, token_lists: Iterable[Sequence[int]], *, strict: bool = False,
          describe: Callable[[int], str] | None = None) -> tuple[dict, str | None]:
    """``(attributes to record, warning line or None)`` for these prompts on the checkpoint in ``directory``;
    a :class:`JaxdiagError` with ``strict`` when a prompt holds an untrained id. The prompts are read
    only when the checkpoint has untrained ids."""
    untrained, source = untrained_ids(directory, vocab_size)
    if untrained.size == 0:
        return VocabCheck(0, 0, (), "").attrs(), None
    found = check_prompts(token_lists, untrained, source)
    return found.attrs(), enforce(found, strict=strict, describe=describe)
