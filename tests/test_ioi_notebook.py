"""The IOI notebook executes top to bottom on the shipped IOI model (Python only, offline) and shows
what it says: the circuit of the model's circuit.toml, the heads' patterns as an HTML view (also
saved as a page), effects and the diagnostics against them."""

import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from jaxdiag.paths import builtin_model_dir

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "ioi.ipynb"


def test_ioi_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    roles = tomllib.loads((builtin_model_dir("builtin:ioi-4l8h") / "circuit.toml").read_text())["roles"]
    heads = sorted(tuple(map(int, h.split("."))) for names in roles.values() for h in names)
    assert "circuit heads: " + " ".join(f"{l}.{h}" for l, h in heads) in text
    assert all(f"head {l}.{h}: last token -> IO" in text for l, h in heads)
    assert "largest patching effects:" in text and "Spearman(|delta kl_norm|, |effect_patch|)" in text
    views = [o for o in outputs if "text/html" in o.get("data", {}) and "jd-view" in o["data"]["text/html"]]
    assert len(views) == 1 and (tmp_path / "ioi_patterns.html").is_file()
