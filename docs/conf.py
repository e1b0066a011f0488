"""Sphinx configuration of jaxdiag's documentation site.

Build it (offline: no intersphinx, no link checking, notebooks not executed) with the one command

    python -m sphinx -W --keep-going -j 1 -b html docs docs/_build/html

(``tests/test_docs.py`` runs exactly this). ``docs/_ext/jaxdiag_docs.py`` copies the recorded benchmark
results (benchmarks/*.md) and the executed IOI notebook (examples/ioi.ipynb) into the source tree at
build time and provides the ``jaxdiag-cli`` directive that renders the command line from the argparse
parser itself.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's jaxdiag and analysis, whatever is installed
sys.path.insert(0, str(DOCS / "_ext"))

project = "jaxdiag"
author = "the jaxdiag developers"
copyright = "jaxdiag developers"
release = version = __import__("jaxdiag").__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "jaxdiag_docs"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# offline and reproducible: stored notebook outputs are shown, never recomputed
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 4
# the copied benchmark pages and moved sections skip heading levels (### under #); that is style, not a
# broken reference, so only that one check is silenced
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_mock_imports = []

html_theme = "pydata_sphinx_theme"
html_title = "jaxdiag"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []
