"""The sweep: prompts -> units (padded batches) -> the compiled step on every device -> store regions.

``prompts`` (sources and their validation), ``runconfig`` (run configs and presets), ``runner`` (units
and devices), ``steps`` (the compiled diagnostics and effects steps), ``store`` (the Zarr schema,
template and chunk writes), ``run`` (ordering, resume and the writer: ``jaxdiag run``), ``verify``
(``jaxdiag verify``: exact patching of the heads a cheap estimate ranks first), ``compile_cache``.
"""
