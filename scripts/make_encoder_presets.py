"""Write the prompt files of the encoder presets (jaxdiag/presets/*_shuffled.jsonl, rxn_masked.jsonl).

*_shuffled: real: each sentence (or reaction SMILES) as text, tokenised at run time by the model's
own tokenizer ([CLS] ... [SEP]); shuffled: the same tokens with everything between [CLS] and [SEP]
permuted (seeded), as token ids, paired with its real prompt (same length).

rxn_masked (scripts/reactions.py's RDKit-made reactions, needs rdkit): real: the reaction as text
with one product-side atom token masked (``mask``: the target is the atom that was there, the
metric log p(atom) at that position); shuffled: its tokens with the reactant side (between [CLS]
and ``>>``) permuted and the same atom masked, paired with it. The masked atom is drawn among the
product's non-carbon atoms when it has any (their element is what the reactants' atoms decide;
almost any carbon is a good guess), else among all its atoms.

    python scripts/make_encoder_presets.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import jaxdiag
from jaxdiag.sweep.masked import product_atoms, shuffle_reactants

SENTENCES = [
    "The cat sat on the warm mat by the kitchen door.",
    "Paris has been the capital of France for centuries.",
    "She opened the window because the room was too hot.",
    "The committee will announce its decision next Tuesday morning.",
    "Water boils at a lower temperature on high mountains.",
    "He forgot his umbrella and walked home in the rain.",
    "The old library closes early on public holidays.",
    "Most birds build their nests in the spring.",
    "The train to Berlin was delayed by two hours.",
    "Children learn languages faster than most adults do.",
    "The recipe calls for two cups of flour and an egg.",
    "Our neighbours painted their fence a bright shade of blue.",
    "The museum displays paintings from the seventeenth century.",
    "A strong wind blew the leaves across the empty street.",
    "The doctor asked him to come back in a week.",
    "Scientists measured the speed of the glacier for ten years.",
    "The band played their new song at the end of the concert.",
    "I usually drink coffee before I start working.",
    "The river floods the valley almost every winter.",
    "She wrote a long letter to her grandmother in Spain.",
    "The software update fixed several security problems.",
    "They planted tomatoes, beans and carrots in the garden.",
    "The bakery on the corner sells fresh bread every morning.",
    "His brother works as an engineer at a large company.",
    "The students finished the exam before the bell rang.",
    "A small boat drifted slowly towards the harbour.",
    "The mayor promised to repair the bridge this summer.",
    "Heavy snow closed the mountain pass for three days.",
    "The children laughed at the clown in the park.",
    "The company hired twenty new workers last month.",
    "Bees carry pollen from one flower to another.",
    "The guide showed us the ruins of an ancient temple.",
    "My phone battery died in the middle of the call.",
    "The orchestra rehearsed the symphony for many weeks.",
    "The farmer sold his apples at the weekly market.",
    "Light travels much faster than sound through air.",
    "The hotel room had a beautiful view of the sea.",
    "She finally found her keys under the sofa cushion.",
    "The team celebrated their victory late into the night.",
    "Tall trees shade the path that leads to the lake.",
]

REACTIONS = [
    "CC(=O)O.OCC>>CC(=O)OCC.O",
    "c1ccccc1Br.OB(O)c1ccccc1>>c1ccc(-c2ccccc2)cc1",
    "CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1",
    "C=CC(=O)OC>>CCC(=O)OC",
    "CCO>>CC=O",
    "CC(C)=O.[BH4-].[Na+]>>CC(C)O",
    "c1ccccc1.O=[N+]([O-])O>>O=[N+]([O-])c1ccccc1",
    "CCBr.[OH-].[Na+]>>CCO",
    "CC(=O)OC(C)=O.Oc1ccccc1C(=O)O>>CC(=O)Oc1ccccc1C(=O)O",
    "O=C(O)c1ccccc1.OC>>COC(=O)c1ccccc1",
    "CCN.O=C(Cl)c1ccccc1>>CCNC(=O)c1ccccc1",
    "C=C.BrBr>>BrCCBr",
    "CC#N.O>>CC(N)=O",
    "Nc1ccccc1.O=C1CCCC1>>C1CCC(Nc2ccccc2)C1",
    "COc1ccc(Br)cc1.C#CC1CC1>>COc1ccc(C#CC2CC2)cc1",
    "O=Cc1ccccc1.CC(C)=O>>CC(=O)C=Cc1ccccc1",
    "CC(C)(C)OC(=O)NCC(=O)O.Cl>>NCC(=O)O",
    "OCc1ccccc1.O=S(Cl)Cl>>ClCc1ccccc1",
    "CI.Oc1ccccc1>>COc1ccccc1",
    "O=C(O)CCC(=O)O.OCCO>>O=C1CCC(=O)OCCO1",
    "Brc1ccccn1.C1COCCN1>>c1ccc(N2CCOCC2)nc1",
    "CC(=O)c1ccccc1.NO>>CC(=NO)c1ccccc1",
    "N#Cc1ccccc1.[LiH]>>NCc1ccccc1",
    "C1=CCC=C1.C=CC(=O)OC>>COC(=O)C1CC2C=CC1C2",
    "CCOC(=O)CC(=O)OCC.CCBr>>CCOC(=O)C(CC)C(=O)OCC",
    "O=C(Cl)CCl.NCc1ccccc1>>O=C(CCl)NCc1ccccc1",
    "Clc1ccc(I)cc1.OB(O)c1ccncc1>>Clc1ccc(-c2ccncc2)cc1",
    "CC(C)O.O=[Cr](=O)=O>>CC(C)=O",
    "O=C(O)c1ccc(N)cc1.CCO>>CCOC(=O)c1ccc(N)cc1",
    "CSc1ccccc1.OO>>CS(=O)c1ccccc1",
]


def write(model: str, texts: list[str], out: Path, *, seed: int = 0) -> None:
    loaded = jaxdiag.load(model)
    rng = np.random.default_rng(seed)
    lines = []
    for i, text in enumerate(texts):
        tokens = loaded.encode(text)
        inner = tokens[1:-1]
        shuffled = [tokens[0], *rng.permutation(inner).tolist(), tokens[-1]]
        lines.append({"condition": "real", "text": text, "pair": i})
        lines.append({"condition": "shuffled", "tokens": [int(t) for t in shuffled], "pair": i})
    lines.sort(key=lambda r: r["condition"] != "real")
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_masked_reactions(model: str, reactions: list[tuple[str, str]], out: Path, *, seed: int = 0) -> None:
    loaded = jaxdiag.load(model)
    unknown = loaded.tokenizer.backend.token_to_id("[UNK]")
    rng = np.random.default_rng(seed)
    real, shuffled = [], []
    for i, (kind, reaction) in enumerate(reactions):
        tokens = loaded.encode(reaction)
        if unknown in tokens:
            raise SystemExit(f"{reaction}: a token is not in the model's vocabulary")
        strings = loaded.tokenizer.token_strings(tokens)
        atoms = product_atoms(strings)
        hetero = [a for a in atoms if strings[a] not in ("C", "c")]
        mask = int(rng.choice(hetero or atoms))
        meta = {"reaction_type": kind, "masked_atom": strings[mask], "pair": i, "mask": mask}
        real.append({"condition": "real", "text": reaction, **meta})
        shuffled.append({"condition": "shuffled", "tokens": [int(t) for t in shuffle_reactants(tokens, strings, rng)],
                         **meta})
    out.write_text("".join(json.dumps(r) + "\n" for r in real + shuffled))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reactions import reactions

    presets = Path(__file__).resolve().parents[1] / "jaxdiag" / "presets"
    write("wheel:all-minilm-l6-v2", SENTENCES, presets / "minilm_shuffled.jsonl")
    write("wheel:rxnmapper", REACTIONS, presets / "rxn_shuffled.jsonl")
    write_masked_reactions("wheel:rxnmapper", reactions(), presets / "rxn_masked.jsonl")
