"""jaxdiag.show's pattern view and `jaxdiag report`'s report.html, opened in a real headless chromium:
no console errors, nothing fetched, the expected heads and cells in the DOM, the hovered cell's value
shown, a screenshot that is not blank."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

import jaxdiag
from analysis.report import write_report
from analysis.synthetic import make_dataset, write_store
from tests.browser import Browser, chromium_or_skip

# Texts that must survive the page's escaping: markup, a script end tag, quotes, a newline.
TOKENS = [["<|endoftext|>", "When", " <b>Mary", "</script>", ' "and"', "\n"], ["A", " B", " C", " A"]]


def synthetic_pattern(n_layers: int = 2, n_heads: int = 3) -> xr.DataArray:
    """A pattern as jaxdiag.attention returns it: two prompts of 6 and 4 tokens, causal, NaN past the end."""
    rng = np.random.default_rng(0)
    width = max(map(len, TOKENS))
    values = np.full((len(TOKENS), n_layers, n_heads, width, width), np.nan, np.float32)
    strings = np.full((len(TOKENS), width), "", dtype=object)
    for p, tokens in enumerate(TOKENS):
        n = len(tokens)
        scores = np.where(np.tril(np.ones((n, n), bool)), rng.random((n_layers, n_heads, n, n)), 0)
        values[p, :, :, :n, :n] = scores / scores.sum(-1, keepdims=True)
        strings[p, :n] = tokens
    strings = strings.astype(str)
    return xr.DataArray(values, dims=("prompt", "layer", "head", "query", "key"), coords={
        "layer": np.arange(n_layers), "head": np.arange(n_heads), "text": ("prompt", ["first", "second"]),
        "n_tokens": ("prompt", [len(t) for t in TOKENS]),
        "query_token": (("prompt", "query"), strings), "key_token": (("prompt", "key"), strings)})


@pytest.fixture(scope="module")
def browser():
    page = Browser(chromium_or_skip())
    yield page
    page.close()


def _only_local(browser: Browser) -> None:
    fetched = [url for url in browser.requests if not url.startswith(("file:", "data:", "about:"))]
    assert not fetched, f"the page fetched {fetched}"


def test_pattern_view_in_chromium(browser, tmp_path):
    pattern = synthetic_pattern()
    view = jaxdiag.show(pattern)
    assert view._repr_html_() == view.html  # what Jupyter displays inline
    page = view.save(tmp_path / "pattern.html")
    browser.errors.clear()
    browser.requests.clear()
    browser.open(page)
    root = "document.querySelector('.jd-view')"
    assert browser.evaluate(f"{root}.querySelectorAll('select.jd-head option').length") == 6  # 2 layers x 3 heads
    assert browser.evaluate(f"{root}.querySelectorAll('td.cell').length") == 36  # prompt 0: 6 x 6
    assert browser.evaluate(f"[...{root}.querySelectorAll('th.key')].map(t => t.textContent)") == \
        [t.replace("\n", "\u21b5") for t in TOKENS[0]]  # token labels on the key axis ...
    assert len(browser.evaluate(f"[...{root}.querySelectorAll('th.query')]")) == 6  # ... and the query axis

    # pick layer 1 head 2 (option 5) of prompt 1, then hover query 3 / key 1
    browser.evaluate(f"(() => {{ const r = {root}; r.querySelector('select.jd-head').value = '5';"
                     f"r.querySelector('select.jd-prompt').value = '1';"
                     f"r.querySelector('select.jd-prompt').dispatchEvent(new Event('change')); }})()")
    assert browser.evaluate(f"{root}.querySelectorAll('td.cell').length") == 16
    box = browser.evaluate(f"(() => {{ const b = {root}.querySelector('td.cell[data-query=\"3\"][data-key=\"1\"]')"
                           ".getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
    browser.hover(*box)
    readout = browser.evaluate(f"{root}.querySelector('.jd-readout').textContent")
    expected = f"{float(pattern.values[1, 1, 2, 3, 1]):.4f}"
    assert readout.startswith("L1.H2") and readout.endswith(f": {expected}"), readout
    assert browser.screenshot_spread() > 5
    assert browser.errors == []
    _only_local(browser)


def test_one_head_of_one_prompt_is_shown_too():
    view = jaxdiag.show(synthetic_pattern().isel(prompt=0, layer=1, head=0))
    assert view.html.count("<option") == 1 + 1  # one head, one (hidden) prompt
    assert "&lt;/script&gt;" not in view.html and "<\\/script>" in view.html  # the data cannot end its script


def test_show_refuses_what_is_not_a_pattern():
    with pytest.raises(jaxdiag.JaxdiagError, match="show\\(\\) needs a pattern with dims"):
        jaxdiag.show(synthetic_pattern().rename(key="position"))
    with pytest.raises(jaxdiag.JaxdiagError, match="takes the DataArray"):
        jaxdiag.show(np.zeros((2, 2)))


def test_report_html_in_chromium(browser, tmp_path):
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=15, shifts={"kl_norm": {(1, 1): 0.1}},
                             circuit={"name": "c", "roles": {"Induction": ["1.1"]}}), tmp_path / "s.zarr")
    write_report(str(tmp_path / "s.zarr"), str(tmp_path / "out"), n_boot=50, n_perm=50)
    page = tmp_path / "out" / "report.html"
    markdown = (tmp_path / "out" / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert figures and page.read_text().count("data:image/png;base64,") == len(figures)
    (tmp_path / "out" / figures[0]).unlink()  # the page stands alone: nothing beside it is read
    browser.errors.clear()
    browser.requests.clear()
    browser.open(page)
    images = browser.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
    assert len(images) == len(figures) and all(done and width > 100 for done, width in images)
    assert browser.evaluate("document.querySelectorAll('h2').length") == markdown.count("\n## ")
    assert browser.evaluate("document.querySelectorAll('table').length") == len(re.findall(r"^\|[-: |]+\|$", markdown, re.M))
    assert browser.screenshot_spread() > 5
    assert browser.errors == []
    _only_local(browser)
