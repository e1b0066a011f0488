"""Prompt sources for a sweep: the posts' IOI sets, a scalable IOI generator, JSONL files, induction.

Every source is a deterministic *iterator* of :class:`Prompt` (generated or read lazily, never all
held at once), so a sweep can walk it twice -- once to plan and validate the store, once to run --
and get the same prompts in the same order both times.

Sources (``source`` in a run config's ``[prompts]`` table):

- ``ioi-blog``: docs/REFERENCE.md's 50 IOI + 50 non-IOI prompts, reproduced with its exact templates,
  names, seeds (42, 43) and sampling order.
- ``ioi``: thousands of unique IOI / non-IOI prompts from larger single-token name, place and
  object lists, ABBA/BABA balanced; every prompt is tokenised and kept only if it has exactly
  ``n_tokens`` tokens (never truncated).
- ``jsonl``: one JSON object per line: ``condition`` + ``text`` or ``tokens`` + any metadata keys;
  for the task, ``target``, ``foil``, ``pair``, ``metric_position`` (where the metric is read) and,
  for encoders, ``mask`` (that token becomes ``[MASK]``, the original is the default target and
  the position the metric position); ``roles``, an object {name: token index} (BOS counted as 0)
  naming positions, stored as ``role_position`` when a run patches by position.
- ``induction``: ``repeated`` (BOS + a random segment + the same segment again) vs ``random``
  (BOS + as many distinct random tokens, no repetition).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import RESERVED_KEYS
from jaxdiag.sweep.masked import mask_token

SOURCES = ("ioi-blog", "ioi", "jsonl", "induction")

MetadataValue = str | int | float | bool


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: its condition, token ids (BOS included when the run prepends it), text, metadata,
    and what the causal effects need: the task's ``target`` and ``foil`` token ids (-1: none), the
    ``pair`` that names its counterpart in the other condition (None: unpaired), and the
    ``position`` the metric is read at (a token index, BOS / [CLS] counted as 0; -1: the last);
    ``roles``: named token positions (the ioi source's IO, S1, S1+1, S2, END; JSONL ``roles``)."""

    condition: str
    tokens: tuple[int, ...]
    text: str = ""
    metadata: dict[str, MetadataValue] = dataclasses.field(default_factory=dict)
    target: int = -1
    foil: int = -1
    pair: str | None = None
    position: int = -1
    roles: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def metric_position(self) -> int:
        """The absolute position the task metric is read at."""
        return len(self.tokens) - 1 if self.position < 0 else self.position


Encoder = Callable[[str], list[int]]


def single_token(encode: Encoder, word: str, where: str) -> int:
    """The one token id of ``word`` as the tokenizer gives it, without BOS; an error if it is several."""
    before = len(encode("x")) - 1  # 0 or 1: what the tokenizer puts before any text (BOS)
    ids = encode(word)[before:]
    if len(ids) != 1:
        raise JaxdiagError(f"{where}: {word!r} is {len(ids)} tokens, not one")
    return ids[0]

# ---------------------------------------------------------------------------------------------
# The posts' sets (docs/REFERENCE.md), exactly.

BLOG_NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Emma", "James", "Lisa", "David", "Kate", "Mark")
BLOG_ABBA = (
    "When {A} and {B} went to the store, {B} gave a drink to",
    "When {A} and {B} went to the park, {B} handed a ball to",
    "When {A} and {B} arrived at the office, {B} passed a note to",
    "When {A} and {B} got to the restaurant, {B} offered a menu to",
    "When {A} and {B} walked into the room, {B} showed a book to",
    "After {A} and {B} met at the cafe, {B} sent a message to",
    "After {A} and {B} sat down for dinner, {B} gave a gift to",
)
BLOG_BABA = tuple(t.replace("{A} and {B}", "{B} and {A}", 1) for t in BLOG_ABBA)
BLOG_NON_IOI = tuple("{C}".join(t.rsplit("{B}", 1)) for t in BLOG_ABBA)  # second-clause subject -> {C}
BLOG_N_PROMPTS = 50


def ioi_blog_texts(n_prompts: int = BLOG_N_PROMPTS) -> Iterator[tuple[str, str, dict[str, MetadataValue]]]:
    """(condition, text, metadata) of the posts' IOI then non-IOI prompts, in their sampling order."""
    rng = random.Random(42)
    templates = BLOG_ABBA + BLOG_BABA
    seen: set[str] = set()
    while len(seen) < n_prompts:
        template = rng.choice(templates)
        a, b = rng.sample(BLOG_NAMES, 2)
        text = template.format(A=a, B=b)
        if text in seen:
            continue
        seen.add(text)
        index = templates.index(template)
        yield "ioi", text, {"template": f"{'abba' if index < 7 else 'baba'}-{index % 7 + 1}",
                            "io_name": a, "s_name": b, "c_name": ""}
    rng = random.Random(43)
    seen = set()
    while len(seen) < n_prompts:
        template = rng.choice(BLOG_NON_IOI)
        a, b, c = rng.sample(BLOG_NAMES, 3)
        text = template.format(A=a, B=b, C=c)
        if text in seen:
            continue
        seen.add(text)
        yield "non_ioi", text, {"template": f"non_ioi-{BLOG_NON_IOI.index(template) + 1}",
                                "io_name": a, "s_name": b, "c_name": c}


def ioi_blog_prompts(encode: Encoder, n_prompts: int = BLOG_N_PROMPTS) -> Iterator[Prompt]:
    """The posts' prompts, tokenised, with the IOI task's target and foil (see :func:`ioi_task`)."""
    for condition, text, metadata in ioi_blog_texts(n_prompts):
        yield Prompt(condition, tuple(encode(text)), text, metadata,
                     **ioi_task(encode, condition, str(metadata["io_name"]), str(metadata["s_name"])))


def ioi_task(encode: Encoder, condition: str, io_name: str, s_name: str) -> dict[str, int]:
    """IOI's metric: logit(IO) - logit(S) at the final " to"; a non-IOI prompt has no IO (no target)."""
    if condition != "ioi":
        return {}
    return {"target": single_token(encode, " " + io_name, "ioi target"),
            "foil": single_token(encode, " " + s_name, "ioi foil")}


# ---------------------------------------------------------------------------------------------
# The scalable IOI generator.

IOI_NAMES = (
    "Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Emma", "James", "Lisa", "David", "Kate", "Mark",
    "Michael", "Paul", "Peter", "Daniel", "Steve", "Chris", "Jack", "Ryan", "Adam", "Kevin", "Brian",
    "Jason", "Eric", "Anna", "Laura", "Jessica", "Rachel", "Amy", "Jennifer", "Karen", "Susan", "Helen",
    "George", "Henry", "Frank", "Joe", "Mike", "Dan", "Sam", "Ben", "Alex", "Andrew", "Richard", "Robert",
    "Thomas", "William", "Charles", "Edward", "Jane", "Elizabeth", "Julia", "Maria", "Linda", "Nancy",
)
IOI_PLACES = (
    "store", "park", "office", "restaurant", "cafe", "library", "beach", "market", "school", "museum",
    "hospital", "station", "gym", "bank", "church", "theater", "mall", "airport", "hotel", "zoo",
    "garden", "kitchen", "bar", "farm", "lake", "party", "club", "river", "castle", "shop",
)
IOI_OBJECTS = (
    "drink", "ball", "note", "book", "gift", "letter", "key", "card", "bag", "pen", "cake", "hat",
    "phone", "box", "flower", "ticket", "map", "coin", "cup", "toy", "shirt", "bottle", "ring",
    "picture", "bowl", "basket", "knife", "camera", "watch", "present",
)
# {A} is the indirect object, {B} the subject (ABBA); BABA swaps the first clause; non-IOI puts a
# third name {C} in the second clause.
IOI_ABBA = (
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "When {A} and {B} got to the {P}, {B} handed a {O} to",
    "When {A} and {B} arrived at the {P}, {B} passed a {O} to",
    "After {A} and {B} met at the {P}, {B} sent a {O} to",
    "When {A} and {B} walked into the {P}, {B} showed a {O} to",
    "While {A} and {B} were at the {P}, {B} offered a {O} to",
    "Then {A} and {B} went to the {P}, and {B} gave a {O} to",
    "After {A} and {B} sat down at the {P}, {B} gave a {O} to",
)
IOI_BABA = tuple(t.replace("{A} and {B}", "{B} and {A}", 1) for t in IOI_ABBA)
IOI_NON_IOI = tuple("{C}".join(t.rsplit("{B}", 1)) for t in IOI_ABBA)


IOI_ROLES: tuple[str, ...] = ("IO", "S1", "S1+1", "S2", "END")


def ioi_roles(tokens: Sequence[int], encode: Encoder, io_name: str, s_name: str, c_name: str = "") -> dict[str, int]:
    """The IOI roles' token positions: the indirect object, the subject's first occurrence and the token after it,
    its second occurrence (the third name's position in a non-IOI prompt, where it stands in for S2), the end."""
    token = lambda name: encode(" " + name)[-1]  # single-token names, mid-sentence
    tokens = list(tokens)
    io, s = token(io_name), token(s_name)
    s1 = tokens.index(s)
    second = [i for i, t in enumerate(tokens) if i > s1 and (t == s or (c_name and t == token(c_name)))]
    roles = {"IO": tokens.index(io), "S1": s1, "S1+1": s1 + 1, "END": len(tokens) - 1}
    if second:
        roles["S2"] = second[0]
    return {name: roles[name] for name in IOI_ROLES if name in roles}


def _single_token_words(words: Sequence[str], encode: Encoder, bos: list[int]) -> list[str]:
    """The words that are one token after a space (as they appear mid-sentence)."""
    return [w for w in words if len(encode(" " + w)) == len(bos) + 1]


def ioi_prompts(encode: Encoder, *, n_prompts: int, n_tokens: int, seed: int,
                pairs: bool = False) -> Iterator[Prompt]:
    """``n_prompts`` unique IOI prompts then ``n_prompts`` unique non-IOI prompts of exactly ``n_tokens``.

    ``encode`` is the run's tokenizer (BOS included when the run prepends it). IOI prompts alternate
    ABBA and BABA, so the two orders are balanced to within one prompt.

    With ``pairs``, the i-th non-IOI prompt is the i-th IOI prompt's ABC counterfactual (Wang et al.
    2022): the same template, names, place and object, with the second occurrence of the subject
    replaced by a third name, so the two have the same token count and share the ``pair`` id
    ``str(i)``. Without ``pairs`` the non-IOI prompts are drawn independently (and the walk is
    exactly what earlier versions produced).
    """
    bos = encode("x")[:-1]  # [] or [bos]: what the tokenizer puts before the text
    names = _single_token_words(IOI_NAMES, encode, bos)
    places = _single_token_words(IOI_PLACES, encode, bos)
    objects = _single_token_words(IOI_OBJECTS, encode, bos)
    if len(names) < 3 or not places or not objects:
        raise JaxdiagError("the ioi generator needs single-token names, places and objects: this tokenizer has too few")

    def fitting(templates: Sequence[str], condition: str) -> list[tuple[int, str]]:
        ok = [(i, t) for i, t in enumerate(templates)
              if len(encode(t.format(A=names[0], B=names[1], C=names[2], P=places[0], O=objects[0]))) == n_tokens]
        if not ok:
            lengths = sorted({len(encode(t.format(A=names[0], B=names[1], C=names[2], P=places[0], O=objects[0])))
                              for t in templates})
            raise JaxdiagError(f"no {condition} template has {n_tokens} tokens (available: {', '.join(map(str, lengths))})")
        return ok

    abba, baba, non_ioi = fitting(IOI_ABBA, "ioi"), fitting(IOI_BABA, "ioi"), fitting(IOI_NON_IOI, "non_ioi")
    fills = len(names) * (len(names) - 1) * len(places) * len(objects)
    # rejection sampling of unique prompts slows down near capacity: ask for at most half of it
    capacity = min(len(abba) + len(baba), len(non_ioi) * (len(names) - 2)) * fills
    if n_prompts > capacity // 2:
        raise JaxdiagError(f"the ioi generator makes at most {capacity // 2} unique prompts of this length per condition; {n_prompts} asked")

    def draw(condition: str, pools: list[list[tuple[int, str]]], n_names: int, rng: random.Random) -> Iterator[Prompt]:
        seen: set[bytes] = set()
        rejected = 0
        while len(seen) < n_prompts:
            order = len(seen) % len(pools)  # ABBA, BABA, ABBA, ...: balanced by construction
            index, template = rng.choice(pools[order])
            picked = rng.sample(names, n_names)
            place, obj = rng.choice(places), rng.choice(objects)
            fill = dict(zip("ABC", picked), P=place, O=obj)
            text = template.format(**fill)
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()  # bounded memory per prompt
            if key in seen:
                continue
            tokens = encode(text)
            if len(tokens) != n_tokens:  # never truncate: a prompt of the wrong length is dropped
                rejected += 1
                if rejected > 100 * n_prompts:
                    raise JaxdiagError(f"the ioi generator cannot find {n_prompts} prompts of {n_tokens} tokens")
                continue
            seen.add(key)
            label = {"ioi": ("abba", "baba")[order], "non_ioi": "non_ioi"}[condition]
            c_name = picked[2] if n_names == 3 else ""
            yield Prompt(condition, tuple(tokens), text, {
                "template": f"{label}-{index + 1}", "io_name": picked[0], "s_name": picked[1],
                "c_name": c_name, "place": place, "object": obj,
            }, **ioi_task(encode, condition, picked[0], picked[1]),
                roles=ioi_roles(tokens, encode, picked[0], picked[1], c_name))

    if not pairs:
        yield from draw("ioi", [abba, baba], 2, random.Random(f"jaxdiag-ioi-{seed}"))
        yield from draw("non_ioi", [non_ioi], 3, random.Random(f"jaxdiag-non_ioi-{seed}"))
        return
    # the counterfactuals need the IOI prompts, so the walk keeps them: n_prompts small Prompt objects
    originals = [dataclasses.replace(p, pair=str(i))
                 for i, p in enumerate(draw("ioi", [abba, baba], 2, random.Random(f"jaxdiag-ioi-{seed}")))]
    yield from originals
    rng = random.Random(f"jaxdiag-ioi-abc-{seed}")
    for p in originals:
        order, index = p.metadata["template"].split("-")
        template = (IOI_ABBA if order == "abba" else IOI_BABA)[int(index) - 1]
        io_name, s_name = str(p.metadata["io_name"]), str(p.metadata["s_name"])
        c_name = rng.choice([n for n in names if n not in (io_name, s_name)])
        text = "{C}".join(template.rsplit("{B}", 1)).format(A=io_name, B=s_name, C=c_name,
                                                            P=p.metadata["place"], O=p.metadata["object"])
        tokens = encode(text)
        if len(tokens) != len(p.tokens):  # single-token names make this impossible; guard the invariant
            raise JaxdiagError(f"the ABC counterfactual of {p.text!r} has {len(tokens)} tokens, not {len(p.tokens)}")
        yield Prompt("non_ioi", tuple(tokens), text, {**p.metadata, "c_name": c_name},
                     **ioi_task(encode, "non_ioi", io_name, s_name), pair=p.pair,
                     roles=ioi_roles(tokens, encode, io_name, s_name, c_name))


# ---------------------------------------------------------------------------------------------
# Induction: repeated vs random token sequences.


def induction_prompts(*, n_prompts: int, segment_length: int, vocab_size: int, bos_id: int | None,
                      seed: int) -> Iterator[Prompt]:
    """``repeated``: [BOS] + S distinct random tokens + the same S again; ``random``: [BOS] + 2S distinct.

    Tokens are drawn from ``0 .. vocab_size - 1`` without ``bos_id`` and without replacement within a
    prompt, so in ``repeated`` each token of the second copy has exactly one earlier occurrence and in
    ``random`` no token repeats. ``bos_id=None`` leaves BOS out.
    """
    content = 2 * segment_length
    pool = vocab_size - (bos_id is not None and 0 <= bos_id < vocab_size)
    if segment_length < 1:
        raise JaxdiagError(f"induction segment_length must be >= 1, not {segment_length}")
    if pool < content:
        raise JaxdiagError(f"induction prompts need {content} distinct tokens; the vocabulary has {pool}")
    prefix = [] if bos_id is None else [bos_id]

    def sample(rng: random.Random, k: int) -> list[int]:
        ids = rng.sample(range(pool), k)  # range of the pool, then skip over BOS: no list of the vocab
        return [i + 1 if bos_id is not None and i >= bos_id else i for i in ids]

    for condition in ("repeated", "random"):
        rng = random.Random(f"jaxdiag-induction-{condition}-{seed}")
        for i in range(n_prompts):
            if condition == "repeated":
                segment = sample(rng, segment_length)
                tokens = prefix + segment + segment
                # the last token's earlier occurrence ends the first copy; the second copy's first token followed it
                target = segment[0]
            else:
                tokens, target = prefix + sample(rng, content), -1  # no repeat: nothing to copy
            yield Prompt(condition, tuple(tokens), "", {"segment_length": segment_length}, target=target, pair=str(i))


# ---------------------------------------------------------------------------------------------
# JSONL files.


def jsonl_prompts(path: str | Path, encode: Encoder | None, mask_id: int = -1) -> Iterator[Prompt]:
    """Prompts of a JSONL file, line by line; a bad line raises JaxdiagError naming file and line.
    ``mask_id``: the tokenizer's ``[MASK]`` id (-1: none, a decoder), for lines with ``mask``."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise JaxdiagError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    # surrogateescape: invalid UTF-8 reaches the line it is on (as lone surrogates), named there
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            if not _is_unicode(line):
                raise JaxdiagError(f"{where}: not valid UTF-8")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JaxdiagError(f"{where}: not valid JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:  # an int of > 4300 digits, nesting too deep for the parser
                raise JaxdiagError(f"{where}: not usable JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})") from None
            yield _record_to_prompt(record, encode, where, mask_id)


def _is_unicode(text: str) -> bool:
    """False if ``text`` holds a lone surrogate (invalid UTF-8 read with surrogateescape, or a JSON \\ud800 escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _check_string(value: str, where: str, what: str) -> str:
    if not _is_unicode(value):
        raise JaxdiagError(f"{where}: {what} holds a lone surrogate (\\ud800-\\udfff), which is not text")
    return value


def _record_to_prompt(record: Any, encode: Encoder | None, where: str, mask_id: int = -1) -> Prompt:
    if not isinstance(record, dict):
        raise JaxdiagError(f"{where}: a line must be a JSON object, not {type(record).__name__}")
    condition = record.get("condition")
    if not isinstance(condition, str) or not condition:
        raise JaxdiagError(f"{where}: 'condition' must be a non-empty string")
    _check_string(condition, where, "'condition'")
    has_text, has_tokens = "text" in record, "tokens" in record
    if has_text == has_tokens:
        raise JaxdiagError(f"{where}: give exactly one of 'text' and 'tokens'")
    if has_text:
        text = record["text"]
        if not isinstance(text, str) or not text:
            raise JaxdiagError(f"{where}: 'text' must be a non-empty string")
        _check_string(text, where, "'text'")
        if encode is None:
            raise JaxdiagError(f"{where}: text prompts need a tokenizer and this model has none")
        try:
            tokens = encode(text)
        except JaxdiagError as exc:
            raise JaxdiagError(f"{where}: {exc}") from None
    else:
        text = ""
        tokens = record["tokens"]
        if (not isinstance(tokens, list) or not tokens
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)):
            raise JaxdiagError(f"{where}: 'tokens' must be a non-empty list of integers")
    task = {key: _task_token(record[key], encode, f"{where}: {key!r}") for key in ("target", "foil")
            if record.get(key) is not None}
    task.update(_metric_position(record, len(tokens), where))
    if record.get("mask") is not None:
        try:
            tokens, original = mask_token(tokens, task["position"], mask_id)
        except JaxdiagError as exc:
            raise JaxdiagError(f"{where}: {exc}") from None
        task.setdefault("target", original)
    if "foil" in task and "target" not in task:
        raise JaxdiagError(f"{where}: 'foil' needs a 'target'")
    pair = record.get("pair")
    if pair is not None:
        if not isinstance(pair, (str, int)) or isinstance(pair, bool):
            raise JaxdiagError(f"{where}: 'pair' must be a string or an integer")
        task["pair"] = _check_string(str(pair), where, "'pair'")
    if record.get("roles") is not None:
        task["roles"] = _roles(record["roles"], len(tokens), where)
    metadata: dict[str, MetadataValue] = {}
    for key, value in record.items():
        if key in ("condition", "text", "tokens", "target", "foil", "pair", "metric_position", "mask", "roles"):
            continue
        if key in RESERVED_KEYS or not key.isidentifier():
            raise JaxdiagError(f"{where}: metadata key {key!r} is reserved or not an identifier")
        if value is None:
            continue
        if isinstance(value, str):
            _check_string(value, where, f"metadata {key!r}")
        elif isinstance(value, int) and not _fits_float(value):  # a numeric coordinate is float64
            raise JaxdiagError(f"{where}: metadata {key!r} is an integer too large for a float64 coordinate")
        # nested values are kept as their JSON text (ASCII: escapes for anything else): a coordinate holds scalars only
        metadata[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)
    return Prompt(condition, tuple(int(t) for t in tokens), text, metadata, **task)


def _roles(value: Any, n_tokens: int, where: str) -> dict[str, int]:
    """JSONL ``roles``: {name: token index in [0, n_tokens)} (BOS counted as 0)."""
    if not isinstance(value, dict):
        raise JaxdiagError(f"{where}: 'roles' must be an object {{name: token index}}")
    for name, index in value.items():
        _check_string(name, where, "a role name")
        if not name or not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_tokens:
            raise JaxdiagError(f"{where}: role {name!r} must be a token index in [0, {n_tokens}), not {index!r}")
    return dict(value)


def _metric_position(record: dict, n_tokens: int, where: str) -> dict[str, int]:
    """``{"position": p}`` from ``metric_position`` and/or ``mask`` (which must agree), else ``{}``."""
    given = {}
    for key in ("metric_position", "mask"):
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_tokens:
            raise JaxdiagError(f"{where}: {key!r} must be a token index in [0, {n_tokens}) (BOS / [CLS] is 0), "
                               f"not {value!r}")
        given[key] = value
    if len(set(given.values())) > 1:
        raise JaxdiagError(f"{where}: 'metric_position' {given['metric_position']} and 'mask' {given['mask']} differ")
    return {"position": next(iter(given.values()))} if given else {}


def _task_token(value: Any, encode: Encoder | None, where: str) -> int:
    """A target or foil: a token id, or text that is exactly one token (without BOS)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise JaxdiagError(f"{where} must be a token id >= 0, not {value}")
        return value
    if not isinstance(value, str) or not value:
        raise JaxdiagError(f"{where} must be a token id or a one-token string")
    if encode is None:
        raise JaxdiagError(f"{where} is text and this model has no tokenizer: give a token id")
    return single_token(encode, value, where)
