"""Compositional sentences for the IOI model's training: clause structures, name positions and filler words
drawn independently, so that no template's surface is what pays.

A sentence is an opener, a first clause with its names, a joiner and a second clause whose subject acts
and that stops where a name is due ("... gave the cake to"). The first clause holds two names
(``{X}`` before ``{Y}``) at varied distances ("X and Y went", "X met Y", "X went to the N with Y"), or
one (``{X}``). The second clause's subject is ``{S}``: a name of the first clause (IOI: the repeated
one), a third name ``{Z}``, or a non-name ("someone"). Every ``{N}`` is a filler slot, filled
independently (:func:`fill`) from a pool the caller picks.

:func:`sentence` draws a skeleton -- the text with its ``{X} {Y} {Z} {S}`` name slots and ``{N}``
filler slots -- and redraws any skeleton equal to a held-out template (``jaxdiag/ioi/heldout.toml``),
so no held-out template is ever a training sentence, with any fillers.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from jaxdiag.ioi import heldout
from jaxdiag.ioi.heldout import baba

SUBORDINATE = ("When", "After", "Before", "While", "As", "Since", "Once", "Because", "Although", "Though",
               "If", "Until", "As soon as", "Just after", "Right after", "The day", "The moment", "Even though")
ADVERB = ("Then", "Later", "Today", "Yesterday", "Afterwards", "Earlier", "Suddenly", "Finally", "Meanwhile",
          "Soon", "Now", "Again", "Last night", "This morning", "One day", "Last week", "On Sunday",
          "In the morning", "That evening", "So", "Also", "First", "Once", "Tonight", "At noon", "On Friday")
PLACE_OPENER = ("At the {N}", "In the {N}", "Near the {N}", "Outside the {N}", "Inside the {N}", "Behind the {N}",
                "After the {N}", "During the {N}", "Before the {N}", "On the way to the {N}", "Back at the {N}")
SETUP_OPENER = ("The {N} was {N}, so", "It was {N}, and", "The {N} was {N}. Then", "It was a {N} day, and",
                "Nobody liked the {N}, so", "The {N} had {N}, and")
MAIN_JOINER = (", and ", ", so ", ", but ", ". ", ". Then ", ". Later, ", ". Afterwards, ", "; ", ", and then ",
               ". After that, ", " and ", ". Soon ", ", then ", ", where ", ". Finally, ", ", and later ")

GO = ("went to", "walked to", "ran to", "drove to", "came to", "got to", "moved to", "returned to", "arrived at",
      "stayed at", "waited at", "worked at", "ate at", "played at", "stopped at", "met at", "slept at", "sat in",
      "stood in", "lived in", "lived near", "hid in", "danced in", "hiked to", "rode to", "flew to", "swam to",
      "looked at", "talked about", "read about", "thought about", "left for", "shopped at", "got back from",
      "came home from", "were late for", "studied at", "sang at", "relaxed in", "hurried to")
DO = ("visited", "cleaned", "left", "found", "reached", "painted", "bought", "fixed", "watched", "opened",
      "shared", "liked", "loved", "sold", "built", "saw", "wanted", "lost", "needed", "used", "carried",
      "washed", "closed", "explored", "rented", "enjoyed", "cooked", "ordered", "finished", "started")
DETERMINER = ("the", "a", "their", "some", "one", "that", "this", "his", "her", "an", "every", "another")
STATE = ("were at the {N}", "were in the {N}", "were near the {N}", "had a {N}", "had {N} at the {N}",
         "got {N}", "were {N}", "were busy", "felt tired", "were happy", "had fun at the {N}", "had lunch",
         "were {N} at the {N}", "talked for hours", "stayed up late", "were {N} and {N}")
TIME = (" yesterday", " today", " on Monday", " last week", " in the morning", " all day", " again", " together",
        " at night", " early", " for a while", " that day")
MEET = ("met", "saw", "called", "visited", "joined", "helped", "thanked", "found", "followed", "invited",
        "asked", "told", "phoned", "hugged", "greeted", "watched", "noticed", "heard", "married", "passed",
        "beat", "chased", "paid", "warned", "taught", "remembered", "loved", "liked", "missed", "picked up",
        "drove", "took", "brought", "met up with", "ran into", "bumped into", "waited for", "looked for",
        "worked with", "played with", "went out with", "sat with", "argued with", "spoke with", "sat next to",
        "stood next to", "talked with", "walked with", "ate with", "stayed with")
WHERE = (" at the {N}", " in the {N}", " near the {N}", " outside the {N}", " after the {N}", " before the {N}",
         " on the {N}", " by the {N}", " about the {N}", " from the {N}")
GIVE = ("gave", "handed", "passed", "sent", "threw", "lent", "sold", "showed", "offered", "brought", "mailed",
        "tossed", "returned", "carried", "read", "kicked", "slid", "left", "pushed", "delivered", "owed",
        "wrote", "taught", "promised", "described", "explained", "sold", "gifted", "forwarded", "took")
GIVE_BASE = ("give", "hand", "pass", "send", "throw", "lend", "sell", "show", "offer", "bring", "mail", "toss",
             "return", "read", "teach", "pay", "take", "explain")
MAKE = ("bought", "made", "baked", "cooked", "found", "built", "got", "picked", "saved", "kept", "drew",
        "painted", "ordered", "wrote", "fixed", "brought", "chose", "sang")
WANT = ("decided", "wanted", "tried", "had", "offered", "forgot", "agreed", "hoped", "promised", "refused",
        "chose", "needed", "planned", "went", "rushed", "was happy", "was glad", "was sad", "was sure")
TO = ("talked to", "waved to", "wrote to", "spoke to", "listened to", "smiled at", "looked at", "yelled at",
      "laughed at", "pointed at", "waved at", "nodded to", "sang to", "lied to", "replied to", "turned to",
      "ran to", "walked over to", "went over to", "called out to", "said hello to", "said goodbye to",
      "said thanks to", "said sorry to", "said something to", "said nothing to", "was kind to", "was rude to",
      "got angry at", "reached out to", "complained to", "explained it to", "gave it to", "gave it back to",
      "handed it to", "sent it to", "showed it to", "read it to", "threw it to", "passed it on to")
ADVERB_MID = ("then", "quickly", "finally", "later", "also", "happily", "kindly", "suddenly", "proudly",
              "quietly", "soon", "gladly", "secretly", "always", "just", "still", "slowly", "calmly")
NOBODY = ("someone", "everyone", "a friend", "the {N}", "a {N}", "the man", "the woman", "the boss", "the kid",
          "nobody", "the teacher", "a stranger", "the {N} {N}", "somebody", "the waiter")
ENDING = ("to", "to", "to", "back to", "over to", "for")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _object(rng: np.random.Generator) -> str:
    """A noun phrase of filler slots: determiner, at times an adjective slot."""
    return _pick(rng, DETERMINER) + (" {N} {N}" if rng.random() < 0.25 else " {N}")


def _verb_phrase(rng: np.random.Generator) -> str:
    """What the first clause's name(s) did, no names in it."""
    u = rng.random()
    if u < 0.4:
        out = _pick(rng, GO) + " the " + ("{N} {N}" if rng.random() < 0.2 else "{N}")
    elif u < 0.7:
        out = _pick(rng, DO) + " " + _object(rng)
    elif u < 0.9:
        out = _pick(rng, STATE)
    else:
        out = " ".join("{N}" for _ in range(rng.integers(1, 4)))  # words of any kind: surface cannot pay
    return out + (_pick(rng, TIME) if rng.random() < 0.2 else "")


def first_clause(rng: np.random.Generator, n_names: int) -> str:
    """``{X}`` (one name) or ``{X}`` before ``{Y}`` (two), at varied distances."""
    if n_names == 1:
        return "{X} " + (_verb_phrase(rng) if rng.random() < 0.7 else _pick(rng, MEET) + " " + _object(rng))
    u = rng.random()
    if u < 0.45:
        return "{X} and {Y} " + ("both " if rng.random() < 0.1 else "") + _verb_phrase(rng)
    if u < 0.75:
        return "{X} " + _pick(rng, MEET) + " {Y}" + (_pick(rng, WHERE) if rng.random() < 0.6 else "")
    if u < 0.9:
        return "{X} " + _verb_phrase(rng) + " with {Y}"
    return "{X}, {N} {N}, " + _pick(rng, MEET) + " {Y}"


def second_clause(rng: np.random.Generator, subject: str) -> str:
    """``subject`` acts; the text stops where the recipient's name is due."""
    adverb = " " + _pick(rng, ADVERB_MID) if rng.random() < 0.2 else ""
    u = rng.random()
    if u < 0.45:
        action = _pick(rng, GIVE) + " " + _object(rng) + " " + _pick(rng, ENDING)
    elif u < 0.6:
        action = _pick(rng, MAKE) + " " + _object(rng) + " for"
    elif u < 0.75:
        action = _pick(rng, WANT) + " to " + _pick(rng, GIVE_BASE) + " " + _object(rng) + " " + _pick(rng, ENDING[:5])
    else:
        action = _pick(rng, TO)
    return subject + adverb + " " + action


def _opened(rng: np.random.Generator, clause: str) -> tuple[str, str]:
    """``(opener + clause, joiner)``: subordinate clauses join with a comma, main ones with a conjunction."""
    u = rng.random()
    if u < 0.45:
        return _pick(rng, SUBORDINATE) + " " + clause, ", "
    if u < 0.75:
        return _pick(rng, ADVERB) + (", " if rng.random() < 0.3 else " ") + clause, _pick(rng, MAIN_JOINER)
    if u < 0.9:
        return _pick(rng, PLACE_OPENER) + ", " + clause, _pick(rng, MAIN_JOINER)
    return _pick(rng, SETUP_OPENER) + " " + clause, _pick(rng, MAIN_JOINER)


@functools.lru_cache(maxsize=1)
def heldout_skeletons() -> frozenset[str]:
    """The held-out templates (ABBA and BABA) as skeletons: ``{P} {O}`` -> ``{N}``, the subject -> ``{S}``."""
    out = set()
    for template in heldout.TEMPLATES:
        for t in (template, baba(template)):
            t = t.replace("{P}", "{N}").replace("{O}", "{N}")
            head, _, tail = t.rpartition("{B}")  # the second subject is the last {B}
            first = head.replace("{A}", "{?}", 1).replace("{B}", "{?}", 1)
            out.add((first + "{S}" + tail))
    return frozenset(out)


def _skeleton_key(skeleton: str) -> str:
    """A skeleton as :func:`heldout_skeletons` writes them: either name order, a third name as the subject."""
    return skeleton.replace("{X}", "{?}").replace("{Y}", "{?}").replace("{Z}", "{S}")


def sentence(rng: np.random.Generator, n_names: int, subject: str) -> str:
    """A skeleton with ``n_names`` first-clause names and second-clause subject ``subject`` (``"{S}"`` for
    a name filled by the caller, or a non-name); redrawn while it is a held-out template."""
    while True:
        clause, joiner = _opened(rng, first_clause(rng, n_names))
        subj = _pick(rng, NOBODY) if subject == "nobody" else subject
        out = clause + joiner + second_clause(rng, subj)
        if _skeleton_key(out) not in heldout_skeletons():
            return out


def prefix(rng: np.random.Generator) -> str:
    """A distractor sentence before the example: one name ``{C}``, never the answer."""
    clause, _ = _opened(rng, first_clause(rng, 1).replace("{X}", "{C}"))
    return clause + "."


def fill(skeleton: str, rng: np.random.Generator, pool: Sequence[str], **names: str) -> str:
    """``skeleton`` with every ``{N}`` an independent draw from ``pool`` and the name slots given."""
    parts = skeleton.split("{N}")
    words = [pool[i] for i in rng.integers(len(pool), size=len(parts) - 1)]
    text = parts[0] + "".join(w + p for w, p in zip(words, parts[1:]))
    for slot, name in names.items():
        text = text.replace("{" + slot + "}", name)
    return text


def fragments() -> tuple[str, ...]:
    """Every fixed piece of text the grammar writes (for the used vocabulary)."""
    return (SUBORDINATE + ADVERB + PLACE_OPENER + SETUP_OPENER + MAIN_JOINER + GO + DO + DETERMINER + STATE + TIME
            + MEET + WHERE + GIVE + GIVE_BASE + MAKE + WANT + TO + ADVERB_MID + NOBODY + ENDING
            + ("and", "both", "with", "the", "to", ",", ".", "{N}, {N},"))
