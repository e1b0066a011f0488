"""Masked-token prompts for encoders, and the reaction pairs of the ``rxn_masked`` preset.

A masked prompt has one token replaced by the tokenizer's ``[MASK]``; its task target is the token
that was there and its metric is read at that position (the masked-LM objective the encoder was
trained on). For reaction SMILES (rxnmapper's ALBERT), the masked token is an atom of the product
side, whose identity the reactants determine; the pair partner is the same prompt with every
reactant-side token (between ``[CLS]`` and ``>>``) permuted: the same tokens, the same length and
the same masked product, but no longer the molecules whose atoms map onto it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from jaxdiag.errors import JaxdiagError

# An atom token of rxnmapper's SMILES regex (jaxdiag.wheels.SMILES_REGEX): a bracket atom or an
# organic-subset element, aromatic or not; bonds, branches, ring digits and dots are not atoms.
ATOM_TOKEN = re.compile(r"\[[^\]]+]|Br|Cl|[BCNOSPFIbcnosp]")
PRODUCT_ARROW = ">>"
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"})  # bracketed, but not atoms


def mask_token(tokens: Sequence[int], index: int, mask_id: int) -> tuple[tuple[int, ...], int]:
    """``tokens`` with ``tokens[index]`` replaced by ``mask_id``, and the token that was there."""
    if mask_id < 0:
        raise JaxdiagError("'mask' needs a model whose tokenizer has a [MASK] token (an encoder)")
    if not 0 <= index < len(tokens):
        raise JaxdiagError(f"'mask' index {index} is outside the prompt's {len(tokens)} tokens")
    masked = list(tokens)
    original, masked[index] = masked[index], mask_id
    return tuple(masked), original


def arrow_index(strings: Sequence[str]) -> int:
    """The position of the reaction arrow ``>>`` among a reaction's token strings."""
    if strings.count(PRODUCT_ARROW) != 1:
        raise JaxdiagError(f"a reaction has exactly one {PRODUCT_ARROW!r}; this one has {strings.count(PRODUCT_ARROW)}")
    return strings.index(PRODUCT_ARROW)


def product_atoms(strings: Sequence[str]) -> list[int]:
    """Positions of the atom tokens after ``>>`` (``[SEP]`` and other special tokens excluded)."""
    start = arrow_index(strings) + 1
    return [i for i in range(start, len(strings))
            if strings[i] not in SPECIAL_TOKENS and ATOM_TOKEN.fullmatch(strings[i])]


def shuffle_reactants(tokens: Sequence[int], strings: Sequence[str], rng: np.random.Generator) -> tuple[int, ...]:
    """``tokens`` with the reactant side (positions 1 .. the arrow, exclusive: after ``[CLS]``)
    permuted by ``rng``; the arrow, the products and ``[SEP]`` stay where they are."""
    arrow = arrow_index(strings)
    side = list(tokens[1:arrow])
    order = rng.permutation(len(side))
    return (tokens[0], *(side[i] for i in order), *tokens[arrow:])
