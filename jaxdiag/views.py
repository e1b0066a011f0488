"""``jaxdiag.show``: attention patterns as one self-contained HTML view.

    view = jaxdiag.show(jaxdiag.attention(model, prompt, layers=[1]))
    view                      # in Jupyter: displayed inline (_repr_html_)
    view.save("pattern.html") # the same view as a page that opens anywhere, offline

The page inlines its data, style and script (no network, no CDN): a head picker (and a prompt
picker for several prompts), the chosen head's query x key grid with the tokens' text on both
axes, and the value of the cell under the pointer. Nothing here imports JAX.
"""

from __future__ import annotations

import html
import json
import math
import uuid
from pathlib import Path

import numpy as np

from jaxdiag.errors import JaxdiagError

PATTERN_DIMS = ("prompt", "layer", "head", "query", "key")

_STYLE = """
.jd-view { font: 13px system-ui, sans-serif; color: #222; }
.jd-view select { margin: 0 12px 8px 4px; }
.jd-view table { border-collapse: collapse; }
.jd-view th { font-weight: normal; white-space: pre; padding: 0 4px; }
.jd-view th.key { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; height: 7em; }
.jd-view th.query { text-align: right; }
.jd-view td.cell { width: 18px; height: 18px; border: 1px solid #eee; padding: 0; }
.jd-view td.cell:hover { outline: 2px solid #d33; }
.jd-view .jd-readout { min-height: 1.5em; margin: 6px 0; font-family: ui-monospace, monospace; }
"""

# Draws the chosen head's grid into the view's root element (each view has its own id, so several
# views in one notebook do not meet).
_SCRIPT = """
(function () {
  const root = document.getElementById(%(root)s);
  const data = JSON.parse(root.querySelector("script.jd-data").textContent);
  const headPicker = root.querySelector("select.jd-head"), promptPicker = root.querySelector("select.jd-prompt");
  const grid = root.querySelector("table.jd-grid"), readout = root.querySelector(".jd-readout");
  const show = (text) => text.replace(/\\n/g, "\\u21b5");
  function colour(v) {
    if (v === null) return "#f4f4f4";
    const t = Math.max(0, Math.min(1, v));
    return "rgb(" + Math.round(255 - 222 * t) + "," + Math.round(255 - 153 * t) + "," + Math.round(255 - 75 * t) + ")";
  }
  function draw() {
    const p = Number(promptPicker.value), h = Number(headPicker.value);
    const tokens = data.prompts[p].tokens, values = data.values[p][h];
    grid.replaceChildren();
    const top = grid.insertRow();
    top.appendChild(document.createElement("th"));
    tokens.forEach((t) => { const th = document.createElement("th"); th.className = "key"; th.textContent = show(t); top.appendChild(th); });
    tokens.forEach((qt, q) => {
      const row = grid.insertRow();
      const th = document.createElement("th"); th.className = "query"; th.textContent = show(qt); row.appendChild(th);
      tokens.forEach((kt, k) => {
        const cell = row.insertCell(), v = values[q][k];
        cell.className = "cell"; cell.dataset.query = q; cell.dataset.key = k;
        cell.dataset.value = v === null ? "" : v.toFixed(4);
        cell.style.background = colour(v);
        cell.title = v === null ? "masked" : v.toFixed(4);
      });
    });
  }
  grid.addEventListener("mouseover", (event) => {
    const cell = event.target.closest("td.cell");
    if (!cell) return;
    const tokens = data.prompts[Number(promptPicker.value)].tokens, q = Number(cell.dataset.query), k = Number(cell.dataset.key);
    readout.textContent = data.heads[Number(headPicker.value)].label + "  query " + q + " " + JSON.stringify(tokens[q]) +
      " -> key " + k + " " + JSON.stringify(tokens[k]) + ": " + (cell.dataset.value || "masked");
  });
  headPicker.addEventListener("change", draw);
  promptPicker.addEventListener("change", draw);
  draw();
})();
"""


class PatternView:
    """One rendered view: ``html`` (a fragment for notebooks), ``page()`` (a whole document), ``save(path)``."""

    def __init__(self, fragment: str):
        self.html = fragment

    def _repr_html_(self) -> str:
        return self.html

    def page(self, title: str = "jaxdiag attention") -> str:
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
                f"<body>\n{self.html}\n</body></html>\n")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.page(), encoding="utf-8")
        return path


def show(pattern) -> PatternView:
    """The view of a pattern from :func:`jaxdiag.attention` (an ``xr.DataArray`` with dims
    ``prompt, layer, head, query, key`` and ``query_token``/``n_tokens`` coordinates; a selection
    that dropped ``prompt``, ``layer`` or ``head`` is shown too)."""
    import xarray as xr

    if not isinstance(pattern, xr.DataArray):
        raise JaxdiagError(f"show() takes the DataArray jaxdiag.attention returns, not a {type(pattern).__name__}")
    for dim in ("prompt", "layer", "head"):
        if dim not in pattern.dims:
            pattern = pattern.expand_dims(dim)
    missing = [c for c in ("query_token", "n_tokens") if c not in pattern.coords]
    if set(pattern.dims) != set(PATTERN_DIMS) or missing:
        raise JaxdiagError(f"show() needs a pattern with dims {', '.join(PATTERN_DIMS)} and coordinates query_token "
                           f"and n_tokens (what jaxdiag.attention returns); this one has dims {', '.join(pattern.dims)}")
    pattern = pattern.transpose(*PATTERN_DIMS)
    return PatternView(render(pattern))


def render(pattern) -> str:
    """The HTML fragment of a ``[prompt, layer, head, query, key]`` pattern."""
    values = np.asarray(pattern.values, dtype=np.float64)
    lengths = np.asarray(pattern["n_tokens"].values).reshape(-1)
    strings = np.asarray(pattern["query_token"].values).reshape(values.shape[0], -1)
    layers = np.asarray(pattern["layer"].values).reshape(-1)
    heads = np.asarray(pattern["head"].values).reshape(-1)
    data = {
        "prompts": [{"tokens": [str(t) for t in strings[p, : lengths[p]]]} for p in range(values.shape[0])],
        "heads": [{"label": f"L{int(l)}.H{int(h)}"} for l in layers for h in heads],
        "values": [[_rows(values[p, li, hi, : lengths[p], : lengths[p]]) for li in range(len(layers))
                    for hi in range(len(heads))] for p in range(values.shape[0])],
    }
    root = f"jd-{uuid.uuid4().hex[:12]}"
    head_options = "".join(f"<option value=\"{i}\">{html.escape(h['label'])}</option>" for i, h in enumerate(data["heads"]))
    texts = np.asarray(pattern["text"].values).reshape(-1) if "text" in pattern.coords else [""] * values.shape[0]
    prompt_options = "".join(f"<option value=\"{p}\">prompt {p}{': ' + html.escape(_short(str(t))) if t else ''}</option>"
                             for p, t in enumerate(texts))
    hidden = " hidden" if values.shape[0] == 1 else ""
    # "</" never appears inside the data script (it would end the element early)
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (f"<div class=\"jd-view\" id=\"{root}\"><style>{_STYLE}</style>"
            f"<label>head<select class=\"jd-head\">{head_options}</select></label>"
            f"<label{hidden}>prompt<select class=\"jd-prompt\">{prompt_options}</select></label>"
            f"<div class=\"jd-readout\">hover a cell for its value</div><table class=\"jd-grid\"></table>"
            f"<script type=\"application/json\" class=\"jd-data\">{payload}</script>"
            f"<script>{_SCRIPT % {'root': json.dumps(root)}}</script></div>")


def _rows(block: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in block.tolist()]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
