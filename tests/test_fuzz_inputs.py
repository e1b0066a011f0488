"""Property-based fuzzing of the two readers of user files: any input either loads or fails with a
one-line JaxdiagError (the CLI's ``jaxdiag: error: ...``), never another exception (a traceback).

Each test draws 2,000 examples (model configs: 400); an example is one small file written and read (no model loads).
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxdiag.errors import JaxdiagError
from jaxdiag.sweep.prompts import Prompt, jsonl_prompts
from jaxdiag.sweep.prompts import _is_unicode as is_text  # no lone surrogate: a string the store can hold
from jaxdiag.sweep.runconfig import RunConfig, load_config

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def fake_encode(text: str) -> list[int]:
    """A tokenizer stand-in: BOS 0, then one id per character."""
    return [0] + [ord(c) % 50 for c in text]


def assert_one_line(exc: JaxdiagError) -> None:
    message = str(exc)
    assert message and message.splitlines() == [message], f"not one line: {message!r}"


# ---------------------------------------------------------------------------------------------
# JSONL prompt files.

# every character, lone surrogates included (they reach a file as \ud800 escapes or invalid UTF-8)
any_text = st.text(st.characters(blacklist_categories=()), max_size=12)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
           | st.floats() | any_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=10)
token_lists = st.lists(st.integers(min_value=-(2 ** 70), max_value=2 ** 70), max_size=6)
KNOWN = {
    "condition": st.sampled_from(["a", "b", ""]) | json_values,
    "text": any_text | json_values,
    "tokens": token_lists | json_values,
    "target": st.integers(min_value=-3, max_value=60) | st.sampled_from(["x", " x", "xy"]) | json_values,
    "foil": st.integers(min_value=-3, max_value=60) | st.sampled_from(["y", "yz"]) | json_values,
    "pair": st.integers() | any_text | json_values,
}
metadata_keys = st.sampled_from(["source_id", "difficulty", "n_tokens", "tokens", "kl", "2x", "a-b", "é", ""]) | any_text
records = st.fixed_dictionaries({}, optional=KNOWN).flatmap(
    lambda known: st.dictionaries(metadata_keys, json_values, max_size=3).map(lambda extra: {**extra, **known}))


@st.composite
def json_lines(draw) -> bytes:
    value = draw(records | json_values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))  # NaN, Infinity: as Python's json writes them
    return text.encode("utf-8", "surrogatepass")  # a raw lone surrogate: invalid UTF-8


raw_lines = st.sampled_from([b"", b"   ", b"\t", b"{", b"}", b"[]", b"null", b"\xff\xfe", b"\xed\xa0\x80",
                             b'{"condition": "a", "tokens": [1, 2]', b"[" * 5000, b"1" * 5000,
                             b'{"condition": "a", "tokens": [' + b"7" * 5000 + b"]}"]) | st.binary(max_size=30)
files = st.lists(json_lines() | raw_lines, max_size=5).map(
    lambda lines: b"\n".join(lines)) | st.binary(max_size=80)


def check_prompts(prompts: list) -> None:
    """What the sweep relies on in every prompt the reader yields."""
    for prompt in prompts:
        assert isinstance(prompt, Prompt)
        assert isinstance(prompt.condition, str) and prompt.condition and is_text(prompt.condition)
        assert prompt.tokens and all(type(t) is int for t in prompt.tokens)
        assert isinstance(prompt.text, str) and is_text(prompt.text)
        assert type(prompt.target) is int and type(prompt.foil) is int
        assert prompt.pair is None or (isinstance(prompt.pair, str) and is_text(prompt.pair))
        for key, value in prompt.metadata.items():
            assert key.isidentifier() and isinstance(value, (str, int, float, bool))
            if isinstance(value, str):
                assert is_text(value)
            else:
                float(value)  # a float64 coordinate holds it


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-jsonl") / "prompts.jsonl"


@pytest.mark.parametrize("encode", [None, fake_encode], ids=["token-ids", "tokenizer"])
@FUZZ
@given(content=files)
def test_jsonl_reader_yields_prompts_or_one_line_error(prompt_file, encode, content):
    prompt_file.write_bytes(content)
    try:
        prompts = list(jsonl_prompts(prompt_file, encode))
    except JaxdiagError as exc:
        assert_one_line(exc)
    else:
        check_prompts(prompts)


# The smallest inputs that made the reader raise something else than JaxdiagError (tracebacks in
# `jaxdiag run --prompts FILE`), or yield prompts the store cannot hold.
@pytest.mark.parametrize("content, message", [
    (b"\xff\n", "line 1: not valid UTF-8"),  # UnicodeDecodeError
    (b'{"condition": "a", "tokens": [1]}\n\x80\n', "line 2: not valid UTF-8"),  # line named
    (b"1" * 5000, "line 1: not usable JSON"),  # ValueError: int of > 4300 digits
    (b"[" * 5000, "line 1: not usable JSON"),  # RecursionError
    (b'{"condition": "\\ud800", "tokens": [1]}', "'condition' holds a lone surrogate"),  # TypeError writing the store
    (b'{"condition": "a", "text": "\\udfff"}', "'text' holds a lone surrogate"),
    (b'{"condition": "a", "tokens": [1], "pair": "\\ud800"}', "'pair' holds a lone surrogate"),
    (b'{"condition": "a", "tokens": [1], "note": "\\ud800"}', "metadata 'note' holds a lone surrogate"),
    (b'{"condition": "a", "tokens": [1], "size": 1' + b"0" * 400 + b"}", "too large for a float64"),  # OverflowError
])
def test_jsonl_reader_regressions(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(JaxdiagError, match=message.replace("(", r"\(")) as caught:
        list(jsonl_prompts(path, fake_encode))
    assert_one_line(caught.value)


def test_jsonl_reader_still_reads_nested_and_non_ascii(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"condition": "ä", "text": "héllo", "tags": ["\\ud83d\\ude00"], "n": 12, "pair": 3}\n', "utf-8")
    (prompt,) = jsonl_prompts(path, fake_encode)
    assert (prompt.condition, prompt.text, prompt.pair) == ("ä", "héllo", "3")
    assert prompt.metadata == {"tags": '["\\ud83d\\ude00"]', "n": 12}


# ---------------------------------------------------------------------------------------------
# Run configs: random TOML documents plus the CLI's overrides.

# Strings for the config fuzz: no line breaks. The loader quotes paths and models as given (e.g. "prompt
# file /cwd/a\nb does not exist"), so a path with a line break makes a message of two lines; the CLI
# joins them (main() collapses whitespace), so what a user sees is still one line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
config_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=LINE_BREAKS), max_size=12)
paths = st.sampled_from(["p.jsonl", "nowhere/none.jsonl", "/nonexistent/p.jsonl", "~/nonexistent.jsonl",
                         "~jaxdiag_no_such_user/p.jsonl", "", ".", "builtin:nope", "a\x00b"]) | config_text
models = st.sampled_from(["builtin:induction-3l8h", "builtin:nope", "/nonexistent/model", "./no-model",
                          "~jaxdiag_no_such_user/model", "gpt2"]) | config_text
toml_scalars = (st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1) | st.floats() | config_text)
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text("abc_", min_size=1, max_size=3), inner, max_size=3), max_leaves=6)


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """A value of the right kind four times in five, else any TOML value: examples reach the later checks."""
    return st.one_of(good, good, good, good, toml_values)


TOP = {
    "model": mostly(models),
    "revision": mostly(config_text),
    "precision": mostly(st.sampled_from(["highest", "default", "bf16", "fp8"])),
    "query": mostly(st.sampled_from(["last", "all", "first"])),
    "prepend_bos": mostly(st.booleans()),
    "batch_size": mostly(st.integers(min_value=-2, max_value=64)),
    "chunk_size": mostly(st.integers(min_value=-2, max_value=64)),
    "seed": mostly(st.integers()),
    "circuit": mostly(st.sampled_from(["ioi23", "ioi26", "effects:zero", "effects:nope", "bad_circuit.toml",
                                        "empty_circuit.json"]) | paths),
    "conditions": mostly(st.lists(st.sampled_from(["ioi", "non_ioi", ""]), max_size=3)),
    "effects": mostly(st.lists(st.sampled_from(["zero", "mean", "patch", "atp_zero", "atpstar_patch", "nope"]), max_size=3)),
    "effects_reference": mostly(st.sampled_from(["ioi", "non_ioi"])),
}
PROMPT_TABLE = {
    "source": mostly(st.sampled_from(["ioi-blog", "ioi", "jsonl", "induction", "csv"])),
    "n_prompts": mostly(st.integers(min_value=-2, max_value=100)),
    "n_tokens": mostly(st.integers(min_value=-2, max_value=20)),
    "segment_length": mostly(st.integers(min_value=-2, max_value=20)),
    "path": mostly(paths),
}
OVERRIDES = {  # what the CLI passes (argparse types), or None: not given
    "model": models, "prompts": paths, "n_prompts": st.integers(), "query": st.sampled_from(["last", "all"]),
    "prepend_bos": st.just(False), "batch_size": st.integers(), "chunk_size": st.integers(),
    "precision": st.sampled_from(["highest", "default", "bf16"]), "seed": st.integers(),
    "effects": st.sampled_from(["zero", "zero,mean", "patch, atp_patch", ",", "nope"]) | config_text,
}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def config_documents(draw) -> bytes:
    # a model and a prompt source nine times in ten: most examples get past the first checks
    usual = draw(st.integers(0, 9)) > 0
    top = draw(st.fixed_dictionaries({"model": TOP["model"]} if usual else {},
                                     optional={k: v for k, v in TOP.items() if not usual or k != "model"}))
    extra = draw(st.dictionaries(st.text("abcz_", min_size=1, max_size=4), toml_values, max_size=1)) if draw(
        st.integers(0, 3)) == 0 else {}
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in {**extra, **top}.items()]
    if usual or draw(st.booleans()):
        table = draw(st.fixed_dictionaries({"source": PROMPT_TABLE["source"]} if usual else {},
                                           optional={k: v for k, v in PROMPT_TABLE.items() if not usual or k != "source"}))
        lines += ["[prompts]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    elif draw(st.booleans()):
        lines.append(f"prompts = {toml_value(draw(toml_values))}")
    text = "\n".join(lines)
    return text.encode("utf-8", "surrogatepass")


not_configs = (st.text(max_size=60).map(str.encode) | st.binary(max_size=40)
               | st.sampled_from([b"a = [" * 2000, b"model = 'gpt2'\n[prompts]\nsource = 'ioi'\n\xff"]))
# built documents four times in five (one_of would draw each branch about as often)
config_files = st.integers(0, 4).flatmap(lambda i: config_documents() if i else not_configs)
overrides = st.fixed_dictionaries({}, optional=OVERRIDES)

@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """The configs' directory, holding the files relative paths may name: a prompt file, two bad circuits."""
    folder = tmp_path_factory.mktemp("fuzz-config")
    (folder / "p.jsonl").write_text('{"condition": "a", "tokens": [1, 2]}\n')
    (folder / "bad_circuit.toml").write_text("heads = 3\n")
    (folder / "empty_circuit.json").write_text("{}")
    return folder


@FUZZ
@given(document=config_files, given_overrides=overrides)
def test_config_loader_loads_or_fails_with_one_line(config_dir, monkeypatch, document, given_overrides):
    monkeypatch.chdir(config_dir)  # --prompts is relative to where the user is
    path = config_dir / "run.toml"
    path.write_bytes(document)
    try:
        config = load_config(str(path), overrides=given_overrides)
    except JaxdiagError as exc:
        assert_one_line(exc)
        event(str(exc).partition(": ")[2][:20])  # where examples end (pytest --hypothesis-show-statistics)
    else:
        assert isinstance(config, RunConfig)
        event("loaded")
        config.to_json()  # what the store records


@pytest.mark.parametrize("content, overrides, message", [
    (b"\x80", {}, "is not UTF-8 text"),
    (b'model = "gpt2"\n[prompts]\nsource = "ioi"\nn_prompts = true\n', {}, "n_prompts must be int or NoneType, not True"),
    (b'model = "gpt2"\n[prompts]\nsource = "ioi"\n', {"model": "~jaxdiag_no_such_user/model"}, "no such user's home directory"),
])
def test_config_loader_regressions(tmp_path, content, overrides, message):
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    with pytest.raises(JaxdiagError, match=message):
        load_config(str(path), overrides=overrides)


# ---------------------------------------------------------------------------------------------
# Model config.json files: every family's, mutated. read_config is what `run`, `diagnose`, `effects`
# and `jaxdiag.load` call first, before any weight is read or any step compiled: what it accepts must
# then be a model jaxdiag can build (positive sizes, finite numbers); what it refuses, one line.

def _base_configs() -> dict[str, dict]:
    """One valid config.json body per registered model_type, made by transformers at test size."""
    import transformers

    from jaxdiag.models.registry import FAMILIES
    from tests.families import CASES, SMALL

    bodies = {case: getattr(transformers, name)(**(SMALL | extra)).to_dict() for case, (name, _, extra, _) in CASES.items()}
    bodies["gpt2"] = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=97, n_positions=64).to_dict()
    bodies["bert"] = transformers.BertConfig(**SMALL).to_dict()
    bodies["albert"] = transformers.AlbertConfig(**SMALL, embedding_size=16).to_dict()
    text = transformers.Gemma3TextConfig(**(SMALL | CASES["gemma3"][2]))
    bodies["gemma3-multimodal"] = transformers.Gemma3Config(text_config=text.to_dict()).to_dict()
    assert {body["model_type"] for body in bodies.values()} == set(FAMILIES), "a family without a fuzzed config"
    return bodies


BASE_CONFIGS = _base_configs()
numbers = (st.integers(min_value=-3, max_value=3) | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats() | st.sampled_from([0, 1, 2, 0.5, 1e300]))
config_values = numbers | json_values | st.sampled_from(["gpt2", "llama", "silu", "gelu", "three", "", "default",
                                                        "llama3", "yarn", "linear", "dynamic", "sliding_attention"])


@st.composite
def model_config_files(draw) -> bytes:
    """A family's config.json with up to four keys (nested ones included) replaced, removed or added, then
    serialised as JSON, maybe truncated or in another encoding; or any bytes at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()))
    body = json.loads(json.dumps(BASE_CONFIGS[draw(st.sampled_from(sorted(BASE_CONFIGS)))]))
    for _ in range(draw(st.integers(1, 4))):
        holder = body
        nested = [k for k, v in holder.items() if isinstance(v, dict)]
        while nested and draw(st.integers(0, 3)) == 0:  # into rope_parameters, text_config, ...
            holder = holder[draw(st.sampled_from(sorted(nested)))]
            nested = [k for k, v in holder.items() if isinstance(v, dict)]
        key = draw(st.sampled_from(sorted(holder)) if holder and draw(st.integers(0, 4)) else metadata_keys)
        if draw(st.integers(0, 4)) == 0:
            holder.pop(key, None)
        else:
            holder[key] = draw(config_values)
    text = json.dumps(body, allow_nan=True)
    form = draw(st.integers(0, 9))
    if form == 0:
        return text.encode()[:draw(st.integers(0, len(text)))]
    if form == 1:
        return text.encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1"])), "replace")
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(document=model_config_files())
def test_model_config_reads_or_fails_with_one_line(tmp_path_factory, document):
    import dataclasses

    from jaxdiag.models.load import read_config

    folder = tmp_path_factory.mktemp("config", numbered=True)
    (folder / "config.json").write_bytes(document)
    try:
        config = read_config(folder)
    except JaxdiagError as exc:
        assert_one_line(exc)
        event(str(exc).partition(": ")[2][:24])
        return
    event(f"read {config.model_type}")

    def buildable(value, name: str) -> None:  # what building the model assumes of what was read
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                buildable(getattr(value, field.name), field.name)
        elif isinstance(value, tuple):
            for item in value:
                buildable(item, name)
        elif isinstance(value, float):
            assert math.isfinite(value), (name, value)
        elif isinstance(value, int) and not isinstance(value, bool) and not name.endswith("_id"):
            assert value >= 0, (name, value)

    buildable(config, "config")
