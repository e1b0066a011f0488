"""Reaction SMILES for the ``rxn_masked`` preset, made by RDKit from building blocks and four reaction
templates (amide coupling, esterification, Suzuki coupling, reductive amination): every product is
what the template gives, canonical SMILES as RDKit writes them (rxnmapper was trained on such
USPTO-style SMILES). Needs ``rdkit`` (``pip install rdkit``); only this script does.
"""

from __future__ import annotations

import random

ACIDS = ["CC(=O)O", "CCC(=O)O", "CC(C)C(=O)O", "CC(C)(C)C(=O)O", "O=C(O)c1ccccc1", "O=C(O)c1ccc(Cl)cc1",
         "COc1ccc(C(=O)O)cc1", "O=C(O)c1cccnc1", "O=C(O)C1CCCCC1", "O=C(O)Cc1ccccc1", "O=C(O)c1ccco1",
         "O=C(O)c1cccs1", "O=C(O)c1ccc(F)cc1", "CC(C)(C)OC(=O)NCC(=O)O", "O=C(O)c1cccc([N+](=O)[O-])c1",
         "O=C(O)c1ccc(C(F)(F)F)cc1"]
AMINES = ["CN", "NCc1ccccc1", "Nc1ccccc1", "C1COCCN1", "C1CCNCC1", "CC(C)(C)OC(=O)N1CCNCC1", "Nc1ccc(F)cc1",
          "NC1CC1", "CNC", "Nc1ccccn1", "CC(C)N", "C1CCNC1", "COc1ccc(N)cc1", "Nc1cccc(Cl)c1", "CNCc1ccccc1"]
ALCOHOLS = ["CO", "CCO", "CC(C)O", "OCc1ccccc1", "Oc1ccccc1", "OCCCl"]
ARYL_BROMIDES = ["Brc1ccccc1", "COc1ccc(Br)cc1", "Brc1ccc(C#N)cc1", "Brc1cccnc1", "Cc1ccc(Br)cc1",
                 "O=C(O)c1ccc(Br)cc1", "Brc1ccc2ccccc2c1", "FC(F)(F)c1ccc(Br)cc1", "Brc1cccs1", "CC(=O)c1ccc(Br)cc1"]
BORONIC_ACIDS = ["OB(O)c1ccccc1", "COc1ccc(B(O)O)cc1", "OB(O)c1ccc(F)cc1", "OB(O)c1cccnc1", "Cc1ccccc1B(O)O",
                 "OB(O)c1ccco1", "OB(O)c1ccc(Cl)cc1", "CC(C)c1ccc(B(O)O)cc1"]
ALDEHYDES = ["O=Cc1ccccc1", "CC=O", "O=Cc1ccc(Cl)cc1", "COc1ccc(C=O)cc1", "O=CC1CCCCC1", "O=Cc1ccccn1",
             "CC(C)C=O", "O=Cc1ccco1"]

TEMPLATES = {  # name -> (reaction SMARTS, first building blocks, second, how many to draw)
    "amide": ("[C:1](=[O:2])[OX2H1].[N;!H0;!$(N-C=O):3]>>[C:1](=[O:2])[N:3]", ACIDS,
              AMINES, 90),
    "ester": ("[C:1](=[O:2])[OX2H1].[OX2H1;$(O[#6]);!$(OC=O):3]>>[C:1](=[O:2])[O:3]", ACIDS, ALCOHOLS, 60),
    "suzuki": ("[c:1]Br.[c:2]B(O)O>>[c:1]-[c:2]", ARYL_BROMIDES, BORONIC_ACIDS, 60),
    "reductive_amination": ("[CX3H1:1](=O)[#6:4].[N;!H0;!$(N-C=O):3]>>[C:1]([#6:4])[N:3]", ALDEHYDES, AMINES, 50),
}


def reactions(seed: int = 0) -> list[tuple[str, str]]:
    """``(template name, reaction SMILES "A.B>>P")``, distinct, in a seeded order; a pair of building
    blocks is kept only when the template gives exactly one product."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for name, (smarts, firsts, seconds, n) in TEMPLATES.items():
        template = AllChem.ReactionFromSmarts(smarts)
        made = []
        for a in firsts:
            for b in seconds:
                mols = (Chem.MolFromSmiles(a), Chem.MolFromSmiles(b))
                products = set()
                for result in template.RunReactants(mols):
                    product = result[0]
                    try:
                        Chem.SanitizeMol(product)
                    except Exception:  # RDKit raises its own sanitisation errors: such a product is not made
                        continue
                    products.add(Chem.MolToSmiles(product))
                if len(products) == 1:
                    reactants = ".".join(Chem.MolToSmiles(m) for m in mols)
                    made.append(f"{reactants}>>{products.pop()}")
        rng.shuffle(made)
        out += [(name, r) for r in made[:n]]
    return out
