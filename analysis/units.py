"""Per-unit sufficient statistics: what the streamed report keeps of the prompts, and every resampling engine
run on it.

A *unit* is a block of `size` consecutive prompts of one condition (or of pairs, in a paired design). The store
is reduced, chunk by chunk, to per-unit statistics of every head: the finite count C, the mean m, the centred
second and third moments M2 = sum (x - m)^2 and M3 = sum (x - m)^3 (and, for the cross-head structure, the
centred cross-product matrix sum (x - m)(x - m)^T). Units never straddle a chunk, so each unit's numbers are
fixed by the data alone, whatever the chunking or the scheduler; every later sum runs over units in their
order, on the client, in numpy: results are bit for bit the same for a seed (analysis.pipeline).

Point estimates are exact (means, variances, Welch SE and df, t, d, C_a, C_b, the third moments of the BCa
acceleration): the units' moments combine exactly into the prompts' moments. Resampling runs on units:
bootstrap = multinomial counts over units, permutations = label shuffles of whole units (sign flips of whole
units of pairs), with the draws of analysis.resampling. With size 1 (up to G_MAX prompts per condition; GC_MAX
for the cross-head null) a unit is a prompt and every draw is exactly the in-memory report's. With size s > 1 the
bootstrap is the bootstrap of blocks of s prompts and the permutation null permutes blocks: under the permutation
test's own assumption (exchangeable prompts) equal-sized blocks are exchangeable, so the test stays valid; its
null has the prompt-level null's mean and variance to first order (checked in tests/test_analysis_scale.py).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from analysis._util import quiet

G_MAX = 2048  # units per condition for the per-head statistics (bootstrap, permutation nulls)
GC_MAX = 512  # units per condition for the cross-head cross-products (C_diff null, C_diff intervals)


def unit_size(n: int, g_max: int | None) -> int:
    """Prompts per unit so that n prompts make at most g_max units (None: units of one prompt, the in-memory
    report's)."""
    return 1 if g_max is None else max(1, -(-int(n) // int(g_max)))


@dataclasses.dataclass
class Units:
    """Per-unit moments of k columns: count, mean (0 where count is 0), M2, M3 -- each [G, k] float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    size: int

    @property
    def n_units(self) -> int:
        return self.count.shape[0]

    def subset(self, keep: np.ndarray) -> Units:
        return Units(self.count[keep], self.mean[keep], self.m2[keep], self.m3[keep], self.size)

    def centre(self) -> np.ndarray:
        """The mean of every column over all prompts (as np.nanmean of the prompts when units are prompts)."""
        with quiet():
            if self.size == 1:
                return np.nanmean(np.where(self.count > 0, self.mean, np.nan), axis=0)
            return (self.count * self.mean).sum(axis=0) / self.count.sum(axis=0)

    def totals(self, third: bool = False) -> dict[str, np.ndarray]:
        """Exact n, mean, variance (ddof 1) and M2 of every column over all prompts, and M3 when third (only
        BCa's acceleration needs it; for the mean alone, `centre`)."""
        n = self.count.sum(axis=0)
        mean = self.centre()
        d = np.where(self.count > 0, self.mean - np.nan_to_num(mean), 0.0)
        # units of one prompt hold no within-unit M2 (and count * d is d): the same sums with two passes fewer
        m2 = (d * d).sum(axis=0) if self.size == 1 else self.m2.sum(axis=0) + (self.count * d * d).sum(axis=0)
        with quiet():
            var = m2 / (n - 1.0)
        out = {"n": n, "mean": mean, "var": np.where(n > 1, var, np.nan), "m2": m2}
        if third:
            out["m3"] = self.m3.sum(axis=0) + 3.0 * (d * self.m2).sum(axis=0) + (self.count * d**3).sum(axis=0)
        return out

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """The counts to weight by: [G, 1] when every column has the same counts (no NaN), so a resample's count is
        one matrix-vector product instead of one per column (exact either way: sums of integers), else [G, k]."""
        return self.count[:, :1] if np.array_equal(self.count, np.broadcast_to(self.count[:, :1], self.count.shape)) \
            else self.count

    def centred(self, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C, C (m - centre), C (m - centre)^2 + M2): per-unit count (`counts`), sum and sum of squares about
        centre."""
        d = np.where(self.count > 0, self.mean - np.nan_to_num(centre), 0.0)
        s1 = self.count * d
        s2 = s1 * d
        if self.size > 1:
            s2 = s2 + self.m2
        return self.counts, s1, s2

    @staticmethod
    def concat(parts: list[Units]) -> Units:
        return Units(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("count", "mean", "m2", "m3")),
                     parts[0].size)


def unit_moments(x: np.ndarray, size: int) -> Units:
    """Units of `size` consecutive rows of x [r, k] (the last one shorter when r is not a multiple)."""
    x = np.asarray(x, dtype=np.float64)
    r, k = x.shape
    g = -(-r // size)
    if g * size != r:
        x = np.concatenate([x, np.full((g * size - r, k), np.nan)])
    x = x.reshape(g, size, k)
    finite = np.isfinite(x)
    count = finite.sum(axis=1).astype(np.float64)
    if size == 1:
        mean = np.where(finite[:, 0], x[:, 0], 0.0)
        zero = np.zeros_like(mean)
        return Units(count, mean, zero, zero, 1)
    x0 = np.where(finite, x, 0.0)
    with quiet():
        mean = np.where(count > 0, x0.sum(axis=1) / count, 0.0)
    d = np.where(finite, x - mean[:, None, :], 0.0)
    d2 = d * d
    return Units(count, mean, d2.sum(axis=1), (d2 * d).sum(axis=1), size)


@dataclasses.dataclass
class CrossUnits:
    """Per-unit cross-head moments over complete rows: count [G], mean [G, k], centred X^T X [G, k, k] (None for
    units of one prompt, whose centred cross-products are all 0: a [G, k, k] array of zeros would be the largest
    thing the in-memory report holds)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray | None
    size: int

    @staticmethod
    def concat(parts: list[CrossUnits]) -> CrossUnits:
        m2 = None if parts[0].m2 is None else np.concatenate([p.m2 for p in parts])
        return CrossUnits(np.concatenate([p.count for p in parts]), np.concatenate([p.mean for p in parts]), m2,
                          parts[0].size)

    def nonempty(self) -> CrossUnits:
        keep = self.count > 0
        return CrossUnits(self.count[keep], self.mean[keep], None if self.m2 is None else self.m2[keep], self.size)

    def m2_at(self, i: np.ndarray, j: np.ndarray) -> np.ndarray | float:
        """Entries (i, j) of every unit's centred cross-products, [len(i), G] (0.0 for units of one prompt)."""
        return 0.0 if self.m2 is None else self.m2[:, i, j].T

    def covariance_sums(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(n, mean [k], centred cross-product matrix [k, k]) over every complete row."""
        n = float(self.count.sum())
        mean = (self.count[:, None] * self.mean).sum(axis=0) / n
        d = self.mean - mean
        between = (d * self.count[:, None]).T @ d
        return n, mean, between if self.m2 is None else self.m2.sum(axis=0) + between

    def correlation(self) -> np.ndarray:
        _, _, m2 = self.covariance_sums()
        sd = np.sqrt(np.diagonal(m2))
        with quiet():
            return m2 / (sd[:, None] * sd[None, :])


def cross_moments(x: np.ndarray, size: int, active: np.ndarray) -> CrossUnits:
    """Cross units of x [r, k]: rows finite on every active head count (inactive heads are set to 0)."""
    x = np.where(active, np.asarray(x, dtype=np.float64), 0.0)
    r, k = x.shape
    g = -(-r // size)
    complete = np.isfinite(x).all(axis=1)
    x = np.where(complete[:, None], x, 0.0)
    count = np.add.reduceat(complete.astype(np.float64), np.arange(0, r, size)) if r else np.zeros(0)
    if g * size != r:
        x = np.concatenate([x, np.zeros((g * size - r, k))])
        complete = np.concatenate([complete, np.zeros(g * size - r, dtype=bool)])
    xs = x.reshape(g, size, k)
    if size == 1:
        return CrossUnits(count, xs[:, 0], None, 1)
    with quiet():
        mean = np.where(count[:, None] > 0, xs.sum(axis=1) / count[:, None], 0.0)
    d = np.where(complete.reshape(g, size)[:, :, None], xs - mean[:, None, :], 0.0)
    return CrossUnits(count, mean, np.stack([u.T @ u for u in d]), size)  # one GEMM per unit


@dataclasses.dataclass
class PointUnits:
    """Per-unit moments of the (x, y) points of every head (for a Pearson r over all prompt x head points):
    count, mean x, mean y, centred Sxx, Syy, Sxy -- each [G]."""

    count: np.ndarray
    mx: np.ndarray
    my: np.ndarray
    sxx: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray

    @staticmethod
    def concat(parts: list[PointUnits]) -> PointUnits:
        return PointUnits(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(PointUnits)))

    def pearson_r(self) -> tuple[float, int]:
        n = self.count.sum()
        if n < 1:
            return float("nan"), 0
        mx, my = (self.count * self.mx).sum() / n, (self.count * self.my).sum() / n
        dx, dy = self.mx - mx, self.my - my
        sxx = self.sxx.sum() + (self.count * dx * dx).sum()
        syy = self.syy.sum() + (self.count * dy * dy).sum()
        sxy = self.sxy.sum() + (self.count * dx * dy).sum()
        with quiet():
            return float(sxy / np.sqrt(sxx * syy)), int(n)


def point_moments(x: np.ndarray, y: np.ndarray, size: int) -> PointUnits:
    r = x.shape[0]
    starts = np.arange(0, r, size)
    out = []
    for s in starts:
        a, b = x[s:s + size].ravel(), y[s:s + size].ravel()
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep].astype(np.float64), b[keep].astype(np.float64)
        n = a.size
        if n == 0:
            out.append((0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        ma, mb = a.mean(), b.mean()
        da, db = a - ma, b - mb
        out.append((float(n), ma, mb, float(da @ da), float(db @ db), float(da @ db)))
    cols = np.asarray(out, dtype=np.float64).reshape(-1, 6)
    return PointUnits(*cols.T.copy())
