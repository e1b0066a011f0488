"""jaxdiag's analysis package (no JAX): reads stores, writes reports. `analysis.classify` labels heads by role.

One path at any scale: analysis.streaming reduces a store (lazy or loaded) to per-unit sufficient statistics
(analysis.units), every statistic has one implementation over units (shifts, standardised, circuit_tests,
correlation, causal, cheap, taxonomy, prompt_curve), and analysis.pipeline runs the report's sections on them
(units of one prompt in memory, blocks of prompts when streamed). The report's sections are plug-ins: see
analysis.sections for the interface (a new section is one module there plus one line in SECTIONS).
"""


__all__ = ["classify"]


def __getattr__(name: str):
    # lazy, so `import analysis.<module>` stays as light as the module itself
    if name == "classify":
        from analysis.taxonomy import classify

        return classify
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
