"""Per-head patch effects on rxn_masked (restoring and removing), with 95% bootstrap intervals by reaction, and
AtP / AtP* Spearman with exact patching: python scripts/rxn_masked_summary.py STORE.zarr (README numbers)."""
import sys
import numpy as np, xarray as xr
from scipy.stats import spearmanr
ds = xr.open_zarr(sys.argv[1], chunks=None)
rng = np.random.default_rng(0)
real = ds.sel(condition="real")
print("metric real: mean %.3f  shuffled: mean %.3f" % (np.nanmean(real.metric), np.nanmean(ds.sel(condition="shuffled").metric)))
pairs = real.sizes["prompt"]
# real: the shuffled twin's head output patched into the reaction (removing the evidence);
# shuffled: the reaction's head output patched into the twin (restoring it)
for condition in ("real", "shuffled"):
    e = ds["effect_patch"].sel(condition=condition).values  # [n, L, H]
    boot = np.stack([e[rng.integers(0, pairs, pairs)].mean(0) for _ in range(2000)])
    mean = e.mean(0); lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    order = np.argsort(np.abs(mean).ravel())[::-1]
    L, H = mean.shape
    print(f"{condition}: top heads by |mean patch effect| (layer.head: mean [95% CI by reaction]):")
    for i in order[:10]:
        l, h = divmod(int(i), H)
        print(f"  {l}.{h}: {mean[l,h]:+.3f} [{lo[l,h]:+.3f}, {hi[l,h]:+.3f}]")
    print("  head index 5, every layer:", " ".join(f"{l}.5:{mean[l,5]:+.3f}" for l in range(L)))
    rank = np.empty(L*H, int); rank[order] = np.arange(1, L*H+1)
    print("  ranks of the head-5s by layer:", [int(rank[l*H+5]) for l in range(L)])
exact = np.abs(np.concatenate([ds["effect_patch"].sel(condition=c).values for c in ("real","shuffled")])).mean(0).ravel()
def boot_rho(est):
    x = np.concatenate([ds[est].sel(condition=c).values for c in ("real","shuffled")])  # [2n, L, H]
    y = np.concatenate([ds["effect_patch"].sel(condition=c).values for c in ("real","shuffled")])
    n = real.sizes["prompt"]
    point = spearmanr(np.abs(x).mean(0).ravel(), np.abs(y).mean(0).ravel())[0]
    rs = []
    for _ in range(1000):
        idx = rng.integers(0, n, n); idx = np.concatenate([idx, idx + n])  # resample reactions (both prompts)
        rs.append(spearmanr(np.abs(x[idx]).mean(0).ravel(), np.abs(y[idx]).mean(0).ravel())[0])
    return point, *np.percentile(rs, [2.5, 97.5])
for est in ("effect_atp_patch", "effect_atpstar_patch"):
    print(est, "Spearman with |exact patch| over heads: %.2f [%.2f, %.2f]" % boot_rho(est))
