"""Do the carried wheels cover what the GPU run imports? ``python benchmarks/gpu_wheels_check.py [KINDS.md]``

Imports every module ``python -m benchmarks.gpu`` and the ``jaxdiag run`` it starts load, here,
with each distribution hidden that neither the device image has (the package list in the device
tool's KINDS.md) nor ``.whl/`` carries. Only imports made by jaxdiag, the benchmarks and the carried
packages are checked: a package the image has resolves its own imports with its own versions there.
Prints the hidden distributions that were asked for (optional ones, imported under ``try``), and
fails where a needed one is missing.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OURS = {"jaxdiag", "benchmarks", "analysis", "__main__"}
IMPORT_MACHINERY = {"importlib", "_frozen_importlib", "_frozen_importlib_external"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(kinds_md: Path) -> set[str]:
    """The image's packages: KINDS.md's line ``Packages: a, b, ...``."""
    listed = kinds_md.read_text().split("Packages: ", 1)[1].split("\n")[0]
    return {normalise(name.strip().rstrip(".")) for name in listed.split(",")}


class HideMissing(importlib.abc.MetaPathFinder):
    """Refuses an import, made by our code or a carried package, of a distribution the device lacks."""

    def __init__(self, present: set[str], carried: set[str]):
        self.present, self.dists = present | carried, md.packages_distributions()
        self.checked_importers = OURS | {top for top, ds in self.dists.items() if {normalise(d) for d in ds} & carried}
        self.asked: set[str] = set()

    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        owners = self.dists.get(top)
        if top in sys.modules or top in sys.stdlib_module_names or top in OURS or not owners:
            return None
        frame = sys._getframe(1)
        while frame and frame.f_globals.get("__name__", "").split(".")[0] in IMPORT_MACHINERY:
            frame = frame.f_back
        importer = (frame.f_globals.get("__name__", "") if frame else "").split(".")[0]
        if importer in self.checked_importers and not {normalise(o) for o in owners} & self.present:
            self.asked.add(top)
            raise ModuleNotFoundError(f"not on the device and not carried: {name}")
        return None


def main(argv: list[str]) -> None:
    kinds_md = Path(argv[0] if argv else "/work/.library/device/KINDS.md")
    carried = {normalise(os.path.basename(w).split("-")[0]) for w in glob.glob(str(REPO / ".whl" / "*.whl"))}
    # dask asks for importlib_metadata on Python < 3.12 only; the device runs 3.12
    present = device_packages(kinds_md) | ({"importlib-metadata"} if sys.version_info < (3, 12) else set())
    finder = HideMissing(present, carried)
    sys.path.insert(0, str(REPO))  # this checkout's jaxdiag and benchmarks, as on the device
    sys.meta_path.insert(0, finder)
    import dask.array  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401
    from transformer_lens import patching  # noqa: F401
    from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    from transformers import GPT2Model, PreTrainedTokenizerFast  # noqa: F401

    import benchmarks.effects  # noqa: F401
    import benchmarks.gpu  # noqa: F401
    import benchmarks.gpu_workers  # noqa: F401
    import jaxdiag.cli  # noqa: F401
    import jaxdiag.causal.effects  # noqa: F401
    import jaxdiag.sweep  # noqa: F401
    import jaxdiag.tokenizer

    jaxdiag.tokenizer.bundled_gpt2_files()
    print(f"imports OK with {len(carried)} carried wheels; optional modules not there: {sorted(finder.asked) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:])
