"""Throughput and memory benchmarks: jaxdiag vs transformers vs TransformerLens (see RESULTS.md)."""
