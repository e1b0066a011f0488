"""Model families, one readable file each, every one a variant of the same shared parts.

- :mod:`jaxdiag.models.family`: what every family shares: precision, the :class:`Context` of a
  forward pass (masks that define n for the diagnostics, probed rows, probes, edit), the
  :class:`Family` forward pass, and the block interface causal effects are written against
  (``attention_heads``, ``project``, ``out_weights``, ``carry``, ``resume``);
- :mod:`jaxdiag.models.attention`: the attention core (scores -> masked float32 softmax -> probes ->
  optional edit -> head outputs), direct or streaming; :mod:`jaxdiag.models.rope`: rotary
  embeddings; :mod:`jaxdiag.models.edits`: head-output edits (zero, mean, patch, shifts);
- :mod:`jaxdiag.models.gpt2`, :mod:`jaxdiag.models.llama` (Llama, Qwen2, Mistral),
  :mod:`jaxdiag.models.neox` (GPT-NeoX / Pythia), :mod:`jaxdiag.models.bert` (BERT and ALBERT):
  config, embeddings, blocks, head and mask rule of each family;
- :mod:`jaxdiag.models.registry`: the one registry, ``model_type`` -> config, model, weight names;
- :mod:`jaxdiag.models.load`: how a family's model is built from a checkpoint directory.

Adding a family: one file with a config (``from_dict``; ``model_type n_layer n_head n_embd d_head
n_positions vocab_size bos_token_id``), a :class:`~jaxdiag.models.family.Family` subclass whose nnx
attribute names mirror the HF weight names and whose blocks implement the interface, its
``WEIGHT_NAMES``, and one line in :data:`jaxdiag.models.registry.FAMILIES`.
"""
