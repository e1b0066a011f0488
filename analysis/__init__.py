"""jaxdiag's analysis package (no JAX): reads stores, writes reports. `analysis.classify` labels heads by role."""


def __getattr__(name: str):
    # lazy, so `import analysis.<module>` stays as light as the module itself
    if name == "classify":
        from analysis.taxonomy import classify

        return classify
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
