"""Training data on which indirect-object identification pays only as an algorithm, and the held-out sets.

Every training example is a GPT-2-BPE text whose loss is read at its **last** token only:

- ``ioi``: an IOI sentence (ABBA or BABA) from :data:`TRAIN_TEMPLATES`, names from
  :data:`TRAIN_NAMES`; target the indirect object (the first-clause name that is not repeated);
- ``ioi_words``: the same with two random vocabulary words as the "names" (:func:`word_pool`):
  thousands of them, so memorising per name cannot pay and a copy-the-non-repeated-token circuit must;
- ``three``: a three-name sentence (no name repeated: A and B, then C acts); target *either*
  first-clause name (loss ``-log(p_A + p_B)``): the acting name is suppressed without a repeat, so
  "the name at a template position" or "any name seen once" is not the rule that pays;
- ``single``: one name, copied at the end; every name -- the held-out ones included -- appears here,
  so every name the model is for has trained embedding rows;
- in a share of batches every example starts with a short distractor sentence holding another name
  (the prefix moves every position and adds a non-repeated name that is not the answer).

Held out of every IOI training prompt: :data:`HELDOUT_TEMPLATES`, the posts' 14 and the ``ioi``
generator's 16 templates (none is in :data:`TRAIN_TEMPLATES`), and the names in
:data:`HELDOUT_NAMES` (seen only in ``single``, ``three`` and prefix sentences). Words are always
mid-sentence tokens (``" Name"``), single GPT-2 BPE tokens (checked when the data are built).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Sequence

import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.sweep.prompts import BLOG_ABBA, IOI_ABBA, IOI_NAMES, IOI_OBJECTS, IOI_PLACES
from jaxdiag.tokenizer import GPT2_VOCAB_SIZE, Tokenizer, bundled_gpt2_files

BOS_ID = 50256  # GPT-2's <|endoftext|>, prepended as BOS (as TransformerLens and the sweep do)
N_POSITIONS = 40  # longest training example is 34 tokens; blog/generator prompts are 15

# Names the model is for. Held-out names (never in an IOI training prompt) are a fixed slice of the
# extra names, so they share nothing with the posts' or the generator's names.
EXTRA_NAMES = (
    "Anne", "Ann", "Kim", "Tim", "Jim", "Joan", "Lucy", "Amanda", "Emily", "Grace", "Claire", "Sophie",
    "Martin", "Nick", "Tony", "Jeff", "Scott", "Greg", "Carl", "Luke", "Matt", "Sean", "Jon", "Will",
    "Bill", "Fred", "Ted", "Ray", "Roy", "Lee", "Max", "Leo", "Ian", "Ross", "Neil", "Carol", "Diana",
    "Ruth", "Rose", "Sara", "Jean", "Beth", "Kelly", "Ashley", "Megan", "Nicole", "Amber", "Heather",
    "Rebecca", "Victoria", "Natalie", "Katie", "Patrick", "Kyle", "Aaron", "Justin", "Josh", "Jordan",
    "Jacob", "Tyler", "Noah", "Ethan", "Dylan", "Logan", "Adrian", "Victor", "Oscar", "Bruce", "Wayne",
    "Arthur", "Simon", "Philip", "Louis", "Harry", "Ellen", "Eva", "Mia", "Leah", "Jenny", "Judy",
    "Donna", "Julie", "Marie", "Paula", "Dave", "Jake", "Phil", "Roger", "Larry", "Gary", "Jerry",
    "Terry", "Barry", "Harold", "Howard", "Dennis", "Walter", "Albert", "Douglas", "Eddie", "Stephen",
    "Carlos", "Juan", "Jose", "Luis", "Mario", "Hugo", "Ivan", "Omar", "Ali",
)
HELDOUT_NAMES = EXTRA_NAMES[::5]  # 22 names, seen in training only outside IOI prompts
TRAIN_NAMES = tuple(dict.fromkeys(IOI_NAMES + tuple(n for n in EXTRA_NAMES if n not in HELDOUT_NAMES)))
ALL_NAMES = TRAIN_NAMES + HELDOUT_NAMES

PLACES = tuple(dict.fromkeys(IOI_PLACES + (
    "house", "room", "city", "town", "forest", "field", "village", "island", "harbor", "bakery",
    "factory", "studio", "temple", "palace", "stadium", "concert", "festival", "meeting", "wedding", "camp",
)))
OBJECTS = tuple(dict.fromkeys(IOI_OBJECTS + (
    "chair", "lamp", "coat", "shoe", "plate", "glass", "bread", "apple", "stone", "rope", "sword",
    "shield", "candle", "blanket", "pillow", "wallet", "guitar", "violin", "drum", "letter",
)))

# IOI templates: {A} the indirect object, {B} the subject (ABBA as written; BABA swaps the first
# "{A} and {B}" or, where a template has no such pair, is given explicitly). The last word is what
# the model completes with a name. None of these is one of the posts' or the generator's templates.
TRAIN_TEMPLATES = (
    "When {A} and {B} came to the {P}, {B} gave a {O} to",
    "When {A} and {B} stayed at the {P}, {B} lent a {O} to",
    "When {A} and {B} left the {P}, {B} brought a {O} to",
    "When {A} and {B} were in the {P}, {B} threw a {O} to",
    "As {A} and {B} entered the {P}, {B} handed the {O} to",
    "As {A} and {B} walked to the {P}, {B} gave the {O} to",
    "Once {A} and {B} reached the {P}, {B} sold a {O} to",
    "Once {A} and {B} found the {P}, {B} mailed a {O} to",
    "Before {A} and {B} left for the {P}, {B} gave a {O} to",
    "After {A} and {B} cleaned the {P}, {B} passed the {O} to",
    "After {A} and {B} visited the {P}, {B} returned the {O} to",
    "While {A} and {B} worked at the {P}, {B} tossed a {O} to",
    "While {A} and {B} waited at the {P}, {B} showed the {O} to",
    "Since {A} and {B} lived near the {P}, {B} sent the {O} to",
    "So {A} and {B} went to the {P}, and {B} gave a {O} to",
    "Then {A} and {B} met at the {P}. {B} handed a {O} to",
    "Both {A} and {B} were at the {P}. Then {B} gave the {O} to",
    "Today {A} and {B} had lunch at the {P}, where {B} offered a {O} to",
    "First {A} and {B} talked at the {P}. Later, {B} passed a {O} to",
    "Then {A} met {B} at the {P}, and {B} gave a {O} to",
    "Once {A} saw {B} at the {P}. {B} threw a {O} to",
    "Later {A} called {B} from the {P}, so {B} sent a {O} to",
    "Then {A} joined {B} at the {P}, where {B} lent a {O} to",
    "At the {P}, {A} and {B} sat down, and {B} gave a {O} to",
    "At the {P}, {A} met {B}. {B} sold the {O} to",
    "In the {P}, {A} and {B} found a {O}. {B} gave it to",
    "In the {P}, {A} and {B} played, and {B} kicked the {O} to",
    "Yesterday {A} and {B} went to the {P}, and {B} bought a {O} for",
    "Today {A} and {B} drove to the {P}, and {B} made a {O} for",
    "Later {A} and {B} ran to the {P}, and {B} baked a {O} for",
    "When {A} and {B} got home from the {P}, {B} wrote a {O} for",
    "The {O} was at the {P}, so {A} and {B} looked, and {B} gave it to",
    "Then {A} and {B} had a long day at the {P}, so {B} said thanks to",
    "When {A} and {B} came back from the {P}, {B} waved to",
    "After {A} and {B} argued at the {P}, {B} said sorry to",
    "So {A} and {B} were at the {P} all day. {B} smiled at",
    "When {A} and {B} fought at the {P}, {B} yelled at",
    "Then {A} and {B} shared a {O} at the {P}, and {B} said goodbye to",
    "After the {P}, {A} and {B} went home, and {B} talked to",
    "During the trip to the {P}, {A} and {B} got lost, and {B} gave a {O} to",
)
# Held-out templates: never in training (the posts' and the generator's are held out as well).
HELDOUT_TEMPLATES = (
    "When {A} and {B} hiked to the {P}, {B} carried a {O} to",
    "As {A} and {B} sat at the {P}, {B} slid the {O} to",
    "Then {A} and {B} stopped at the {P}, and {B} pushed a {O} to",
    "Once {A} visited {B} at the {P}. {B} gave a {O} to",
    "After {A} and {B} danced at the {P}, {B} gave a {O} to",
    "While {A} and {B} ate at the {P}, {B} served a {O} to",
    "At the {P}, {A} and {B} talked, and {B} handed a {O} to",
    "So {A} and {B} spent the night at the {P}, and {B} gave a {O} to",
    "Once {A} and {B} arrived at the {P}, {B} gave the {O} to",
    "When {A} and {B} rested at the {P}, {B} sang to",
)
# Distractor sentences put before an example: one name {C}, never the answer.
PREFIXES = (
    "Also {C} was at the {P}.",
    "Then {C} stayed home.",
    "It was a cold day, and {C} was tired.",
    "Nobody saw {C} at the {P}.",
    "Only {C} had a {O}.",
    "The {P} was closed, said {C}.",
    "Then {C} wrote {W}, {X} and {Y}.",  # the evaluation templates' words, in a role with no answer
)
# One-name sentences: the name is the answer.
SINGLE_TEMPLATES = (
    "Then {A} went to the {P} and gave a {O} to the friend of",
    "The {O} that {A} left at the {P} belonged to",
    "Everyone at the {P} said hello to {A}, and the {O} went to",
    "Once {A} was at the {P}, and a {O} was given to",
    "The {P} was quiet until {A} came, and a {O} arrived for",
    "Sadly {A} lost a {O}, so the {P} sent it back to",
)


def _swap_first(template: str) -> str:
    """BABA: swap the first occurrences of {A} and {B} (the first clause)."""
    a, b = template.index("{A}"), template.index("{B}")
    first, second = min(a, b), max(a, b)
    return template[:first] + template[second:second + 3] + template[first + 3:second] + template[first:first + 3] + template[second + 3:]


def baba(template: str) -> str:
    """The BABA form of an ABBA template: the first clause names the subject first."""
    return _swap_first(template)


def three_name(template: str) -> str:
    """The non-IOI form: the second-clause subject is a third name {C} (nobody is repeated)."""
    return "{C}".join(template.rsplit("{B}", 1))


def _template_words(templates: Sequence[str]) -> set[str]:
    return {w.strip(".,") for t in templates for w in t.split() if "{" not in w}


# Words of the evaluation templates (held-out, the posts', the generator's) that no training template
# has: they appear in training only in the "{C} wrote ..." distractor, so their embedding rows are
# trained without the IOI templates being seen.
CONTEXT_WORDS = tuple(sorted(
    _template_words(HELDOUT_TEMPLATES + BLOG_ABBA + IOI_ABBA)
    - _template_words(TRAIN_TEMPLATES + SINGLE_TEMPLATES + PREFIXES[:-1])
))


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    """GPT-2's BPE with BOS prepended (the run's default)."""
    tok = Tokenizer.for_checkpoint(None, vocab_size=GPT2_VOCAB_SIZE, bos_id=BOS_ID)
    assert tok is not None
    return tok


def word_id(word: str) -> int:
    """The single token id of ``" " + word``; an error if it is several tokens."""
    ids = tokenizer().encode(" " + word)[1:]
    if len(ids) != 1:
        raise JaxdiagError(f"{word!r} is {len(ids)} GPT-2 tokens after a space, not one")
    return ids[0]


@functools.lru_cache(maxsize=4)
def word_pool(n_words: int = 3000, seed: int = 0) -> tuple[str, ...]:
    """``n_words`` lowercase single-token words from GPT-2's vocabulary, used as IOI "names".

    Tokens ``"Ġword"`` of 3-9 ASCII letters, excluding every name, place and object and every word of
    a template; drawn with ``numpy.random.default_rng(seed)`` from the sorted candidates, so the pool
    is a fixed list (the training record stores it).
    """
    vocab = json.loads(bundled_gpt2_files()[0].read_text())
    used = {w.lower() for w in ALL_NAMES + PLACES + OBJECTS}
    for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES + PREFIXES + SINGLE_TEMPLATES + BLOG_ABBA + IOI_ABBA:
        used |= {w.strip(".,").lower() for w in t.split()}
    candidates = sorted(
        tok[1:] for tok in vocab
        if tok.startswith("\u0120") and tok[1:].isascii() and tok[1:].isalpha() and tok[1:].islower()
        and 3 <= len(tok) - 1 <= 9 and tok[1:] not in used
    )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(candidates), size=n_words, replace=False)
    return tuple(candidates[i] for i in sorted(picked))


@dataclasses.dataclass(frozen=True)
class Example:
    """A training or evaluation text, its answer token(s) at the last position, and what it is."""

    text: str
    targets: tuple[int, ...]  # one id, or two when either first-clause name is right ("three")
    foil: int = -1  # the IOI subject's id (evaluation: logit(IO) - logit(S))
    kind: str = "ioi"


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Shares of the example kinds in a training batch (the rest is ``ioi`` with names)."""

    ioi_words: float = 0.35
    three: float = 0.15
    single: float = 0.1
    prefix: float = 0.3  # share of batches whose examples (of any kind) start with a distractor sentence


def ioi_example(template: str, io: str, s: str, place: str, obj: str, *, order: str = "abba",
                prefix: str = "", c: str = "") -> Example:
    """One IOI text from an ABBA ``template`` (``order="baba"`` swaps the first clause)."""
    t = baba(template) if order == "baba" else template
    text = (prefix.format(C=c, P=place, O=obj) + " " if prefix else "") + t.format(A=io, B=s, P=place, O=obj)
    return Example(text, (word_id(io),), word_id(s), "ioi")


def training_examples(rng: np.random.Generator, n: int, mixture: Mixture = Mixture(),
                      words: Sequence[str] | None = None) -> list[Example]:
    """``n`` random training examples (see the module docstring for the kinds)."""
    words = word_pool() if words is None else words
    out = []
    # Prefixes are drawn per call (a training batch), so most batches stay short when padded.
    with_prefix = rng.random() < mixture.prefix
    for _ in range(n):
        u = rng.random()
        place, obj = PLACES[rng.integers(len(PLACES))], OBJECTS[rng.integers(len(OBJECTS))]
        prefix = PREFIXES[rng.integers(len(PREFIXES))] if with_prefix else ""
        c_prefix = ALL_NAMES[rng.integers(len(ALL_NAMES))]
        fill = {k: CONTEXT_WORDS[rng.integers(len(CONTEXT_WORDS))] for k in "WXY"}
        head = (prefix.format(C=c_prefix, P=place, O=obj, **fill) + " ") if prefix else ""
        if u < mixture.single:
            name = ALL_NAMES[rng.integers(len(ALL_NAMES))] if rng.random() < 0.7 else words[rng.integers(len(words))]
            text = head + SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))].format(A=name, P=place, O=obj)
            out.append(Example(text, (word_id(name),), kind="single"))
            continue
        template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
        if rng.random() < 0.5:
            template = baba(template)
        if u < mixture.single + mixture.three:
            a, b, c = (ALL_NAMES[i] for i in rng.choice(len(ALL_NAMES), 3, replace=False))
            text = head + three_name(template).format(A=a, B=b, C=c, P=place, O=obj)
            out.append(Example(text, (word_id(a), word_id(b)), kind="three"))
            continue
        pool = words if u < mixture.single + mixture.three + mixture.ioi_words else TRAIN_NAMES
        io, s = (pool[i] for i in rng.choice(len(pool), 2, replace=False))
        text = head + template.format(A=io, B=s, P=place, O=obj)
        out.append(Example(text, (word_id(io),), word_id(s), "ioi_words" if pool is words else "ioi"))
    return out


def encode_batch(examples: Sequence[Example], n_positions: int = N_POSITIONS) -> tuple[np.ndarray, ...]:
    """``(tokens [b, n_positions] int32 right-padded with BOS, lengths [b], targets [b, 2] (-1: none))``."""
    tok = tokenizer()
    ids = tok.backend.encode_batch([e.text for e in examples], add_special_tokens=False)
    tokens = np.full((len(examples), n_positions), BOS_ID, dtype=np.int32)
    lengths = np.empty(len(examples), dtype=np.int32)
    targets = np.full((len(examples), 2), -1, dtype=np.int32)
    for i, (e, enc) in enumerate(zip(examples, ids)):
        seq = [BOS_ID, *enc.ids]
        if len(seq) > n_positions:
            raise JaxdiagError(f"training text of {len(seq)} tokens exceeds n_positions={n_positions}: {e.text!r}")
        tokens[i, :len(seq)] = seq
        lengths[i] = len(seq)
        targets[i, :len(e.targets)] = e.targets
    return tokens, lengths, targets


def evaluation_set(templates: Sequence[str], names: Sequence[str], n: int, seed: int) -> list[Example]:
    """``n`` IOI examples from ABBA ``templates`` (ABBA/BABA alternating), names, places, objects at random."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        io, s = (names[j] for j in rng.choice(len(names), 2, replace=False))
        template = templates[rng.integers(len(templates))]
        place, obj = PLACES[rng.integers(len(PLACES))], OBJECTS[rng.integers(len(OBJECTS))]
        out.append(ioi_example(template, io, s, place, obj, order=("abba", "baba")[i % 2]))
    return out


def used_vocabulary(words: Sequence[str] | None = None) -> np.ndarray:
    """Sorted ids of every token any training example can contain or target (plus BOS).

    The tied embedding rows outside this set stay exactly zero: the loss reads logits of these ids
    only, so no other row ever gets a gradient.
    """
    words = word_pool() if words is None else words
    tok = tokenizer()
    ids = {BOS_ID}
    for w in tuple(ALL_NAMES) + tuple(words) + PLACES + OBJECTS:
        ids.add(word_id(w))
    for w in CONTEXT_WORDS:
        ids.update(tok.encode(" " + w)[1:])
    fill = dict(A=ALL_NAMES[0], B=ALL_NAMES[1], C=ALL_NAMES[2], P=PLACES[0], O=OBJECTS[0], W="a", X="a", Y="a")
    ioi = TRAIN_TEMPLATES + tuple(map(baba, TRAIN_TEMPLATES))
    for t in ioi + tuple(map(three_name, ioi)) + PREFIXES + SINGLE_TEMPLATES:
        for text in (t.format(**fill), " " + t.format(**fill)):  # alone, or after a distractor sentence
            ids.update(tok.encode(text)[1:])
    return np.array(sorted(ids), dtype=np.int32)
