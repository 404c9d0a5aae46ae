"""Independent float64 oracles for the sparse smooth top-k operators, written from the math of
docs/design.md §2 with numpy/scipy and sharing no code with smoothprune.

* `pav_oracle`: textbook stack-based PAV for an arbitrary weight vector w (it does not use the
  fact that w = 1_k), each block value found by scipy's brentq on the block equation.
* `threshold_oracle`: the dual view. All partially selected coordinates share one threshold
  gamma; given gamma every coordinate's output is explicit, and gamma is the root (brentq) of
  "outputs' selection weights sum to k". No sorting, no pooling.
* `qp_bruteforce_p2`: p = 2 only, n <= 6: enumerates every active set (each coordinate's dual
  weight at 0, at 1, or free), solves the KKT equations exactly and keeps the KKT point.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import brentq

XTOL = 1e-300  # let brentq stop on its relative tolerance alone
RTOL = 4 * np.finfo(float).eps


def _psi_tilde(z, q):
    return np.sign(z) * np.abs(z) ** (q - 1)


def _psi(z, lam, q):
    return np.sign(z) * (np.abs(z) / lam) ** (q - 1)


# ------------------------------------------------------------------------------------------------
# 1. PAV from the isotonic formulation
# ------------------------------------------------------------------------------------------------
def _kept_value(s, lam, p):
    """Magnitude, selection weight 1: v solves s = v + lam v^(p-1)."""
    if s == 0:
        return 0.0
    return brentq(lambda v: v + lam * v ** (p - 1) - s, 0.0, s, xtol=XTOL, rtol=RTOL, maxiter=2000)


def _block_value(s, w, lam, p, magnitude):
    q = p / (p - 1)
    lq = lam ** (q - 1)
    W = w.sum()
    if len(s) == 1:  # singletons in closed form: the block equation is singular at z = 0 for p > 2
        if W == 0:
            return s[0]
        return _kept_value(s[0], lam, p) if magnitude else s[0] - lam
    if p == 2:
        return s.sum() / (len(s) + lam * W) if magnitude else (s - lam * w).sum() / len(s)

    def eq(g):
        return _psi_tilde(s - g, q).sum() - lq * W * (g if magnitude else 1.0)

    # generous brackets: eq(lo) > 0 > eq(hi) (or eq(0) == 0 for an all-zero magnitude block)
    lo = 0.0 if magnitude else s.min() - lam - 1.0
    hi = s.max() + 1.0
    if eq(lo) == 0:
        return lo
    return brentq(eq, lo, hi, xtol=XTOL, rtol=RTOL, maxiter=2000)


def pav_oracle(x, k, lam, p, magnitude=False, debias=True):
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    q = p / (p - 1)
    key = np.abs(x) if magnitude else x
    order = np.argsort(-key, kind="stable")
    s = key[order]
    w = (np.arange(n) < k).astype(np.float64)
    blocks = []  # [start, end, value]
    for i in range(n):
        blocks.append([i, i + 1, _block_value(s[i : i + 1], w[i : i + 1], lam, p, magnitude)])
        while len(blocks) > 1 and blocks[-2][2] < blocks[-1][2]:
            start = blocks[-2][0]
            end = blocks[-1][1]
            blocks.pop()
            blocks.pop()
            blocks.append([start, end, _block_value(s[start:end], w[start:end], lam, p, magnitude)])
    v = np.empty(n)
    for start, end, val in blocks:
        v[start:end] = val
    if magnitude:
        v = np.maximum(v, 0.0)
    z = s - v
    y_sorted = _psi(z, lam, q) + (z if (magnitude and debias) else 0.0)
    y = np.empty(n)
    y[order] = y_sorted
    return np.sign(x) * y if magnitude else y


# ------------------------------------------------------------------------------------------------
# 2. threshold (dual) oracle
# ------------------------------------------------------------------------------------------------
def threshold_oracle(x, k, lam, p, magnitude=False, debias=True):
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    q = p / (p - 1)
    lq = lam ** (q - 1)
    if k == 0:
        return np.zeros(n)
    if magnitude:
        s = np.abs(x)
        kept = np.array([_kept_value(si, lam, p) for si in s])
    else:
        s = x
        kept = s - lam

    def selection(g):
        # selection weight of each coordinate in [0, 1] when the shared threshold is g
        sel = np.where(kept >= g, 1.0, 0.0)
        free = (kept < g) & (s > g)
        if magnitude:
            sel[free] = _psi_tilde(s[free] - g, q) / (lq * g)
        else:
            sel[free] = _psi_tilde(s[free] - g, q) / lq
        return sel

    if k == n:
        g = min(kept.min(), s.min()) - 1.0
        if magnitude:
            g = 0.0
    else:
        lo = min(kept.min(), s.min()) - 1.0
        if magnitude:
            lo = max(lo, np.finfo(float).tiny)
        hi = s.max() + 1.0
        f = lambda g: selection(g).sum() - k  # noqa: E731  (decreasing in g)
        if f(lo) <= 0:
            g = lo
        else:
            g = brentq(f, lo, hi, xtol=XTOL, rtol=RTOL, maxiter=2000)
    v = np.where(kept >= g, kept, np.where(s > g, g, s))
    z = s - v
    y = _psi(z, lam, q) + (z if (magnitude and debias) else 0.0)
    return np.sign(x) * y if magnitude else y


# ------------------------------------------------------------------------------------------------
# 3. brute-force active-set QP, p = 2, n <= 6
# ------------------------------------------------------------------------------------------------
def qp_bruteforce_p2(x, k, lam, magnitude=False, debias=True, tol=1e-12):
    """max <x, y> - lam/2 |y|^2 over the capped simplex (mask), or its magnitude analogue:
    max over the capped simplex of sum x_i^2 y_i / (2 (1 + lam y_i)) (the dual of
    min_u sum_{top-k |u|} u^2/2 + |x - u|^2 / (2 lam)), by enumerating active sets."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    assert n <= 6
    a = np.abs(x)
    solutions = []
    for labels in itertools.product((0, 1, 2), repeat=n):  # 0: at 0, 1: at 1, 2: free
        labels = np.array(labels)
        ones, free = labels == 1, labels == 2
        n1, nf = ones.sum(), free.sum()
        y = ones.astype(float)
        if nf == 0:
            if n1 != k:
                continue
            if magnitude:  # need max_{0} |x| <= g <= min_{1} |x| / (1 + lam)
                lo = a[labels == 0].max(initial=0.0)
                hi = (a[ones] / (1 + lam)).min(initial=np.inf)
            else:  # need max_{0} x <= tau <= min_{1} x - lam
                lo = x[labels == 0].max(initial=-np.inf)
                hi = (x[ones] - lam).min(initial=np.inf)
            if lo > hi + tol:
                continue
        elif magnitude:
            if a[free].sum() <= 0:
                continue
            c = (lam * (k - n1) + nf) / a[free].sum()  # c = 1 / gamma
            y[free] = (a[free] * c - 1) / lam
            g = 1 / c
            if (a[labels == 0] > g + tol).any() or (a[ones] / (1 + lam) < g - tol).any():
                continue
        else:
            tau = (x[free].sum() - lam * (k - n1)) / nf
            y[free] = (x[free] - tau) / lam
            if (x[labels == 0] > tau + tol).any() or (x[ones] - lam < tau - tol).any():
                continue
        if (y < -tol).any() or (y > 1 + tol).any():
            continue
        solutions.append(y)
    assert solutions, "no KKT point found"
    y = solutions[0]
    for other in solutions[1:]:  # strictly concave objective: every KKT point is the same y
        assert np.allclose(other, y, atol=1e-9)
    if not magnitude:
        return y
    raw = x * y / (1 + lam * y)
    return raw * (1 + lam) if debias else raw


# ------------------------------------------------------------------------------------------------
# 4. arbitrary-precision threshold oracle (mpmath): any p > 1, any lam, any float64 keys
# ------------------------------------------------------------------------------------------------
def mp_threshold_oracle(x, k, lam, p, magnitude=False, debias=True, prec=2400, rel_tol=1e-40):
    """The dual view of `threshold_oracle` in 2400-bit arithmetic: every float64 input, lam and
    difference of keys is exact there, and no power over- or underflows, so it stays the
    mathematical answer for lam from 1e-300 to 1e300 and keys near the float64 extremes.

    gamma is found by bisection on "selection weights sum to k" within the bracket that must
    hold it: (value of the k-th largest key's kept singleton, (k+1)-th largest key). Returns the
    outputs as float64 and the function y(gamma) for conditioning bounds."""
    import mpmath

    with mpmath.workprec(prec):
        xs = [mpmath.mpf(float(v)) for v in np.asarray(x, dtype=np.float64)]
        lam_m = lam if isinstance(lam, mpmath.mpf) else mpmath.mpf(float(lam))  # (an mpf may exceed float64)
        p_m = mpmath.mpf(float(p))
        q1 = p_m / (p_m - 1) - 1
        s = [abs(v) for v in xs] if magnitude else xs
        n = len(s)

        def _midpoint(lo, hi):  # geometric across decades: bisection then takes O(log) steps
            return mpmath.sqrt(lo * hi) if lo > 0 and hi > 4 * lo else (lo + hi) / 2

        def psi(z):
            return (z / lam_m) ** q1 if z > 0 else mpmath.mpf(0)

        kept_cache = {}

        def kept_value(t):
            if t not in kept_cache:
                kept_cache[t] = _kept_value(t)
            return kept_cache[t]

        def _kept_value(t):  # magnitude: v + lam v^(p-1) = t, by bisection
            if t == 0:
                return mpmath.mpf(0)
            lo, hi = t * mpmath.mpf(2) ** (-2 * prec), t
            for _ in range(4 * prec):  # to rel_tol of v and of the shrink t - v
                mid = _midpoint(lo, hi)
                if mid + lam_m * mid ** (p_m - 1) > t:
                    hi = mid
                else:
                    lo = mid
                if hi - lo <= rel_tol * min(t - hi, hi):
                    break
            return (lo + hi) / 2

        def selection(g):
            total = mpmath.mpf(0)
            for t in s:
                if t <= g:
                    continue
                w = psi(t - g) / (g if magnitude else 1)
                total += min(w, mpmath.mpf(1))
            return total

        def outputs(g):
            y = []
            for v, t in zip(xs, s):
                if magnitude:
                    if t <= g or g <= 0 and t == 0:
                        y.append(mpmath.mpf(0))
                        continue
                    kv = kept_value(t)
                    if kv >= g:  # kept singleton
                        out = t if debias else kv
                    else:
                        z = t - g
                        out = psi(z) + (z if debias else 0)
                    y.append(out if v >= 0 else -out)
                else:
                    y.append(min(max(psi(t - g), mpmath.mpf(0)), mpmath.mpf(1)) if t > g else mpmath.mpf(0))
            return y

        def unit(g):  # a member's z lies below lam (mask) or lam g^(p-1) and g (magnitude)
            return min(lam_m * g ** (p_m - 1), g) if magnitude else lam_m

        order = sorted(s, reverse=True)
        if k == 0:
            g = order[0] + 1
        elif k == n:
            g = mpmath.mpf(0) if magnitude else order[-1] - lam_m - 1
        else:
            sk, sk1 = order[k - 1], order[k]
            lo = kept_value(sk) if magnitude else sk - lam_m
            hi = sk1
            if lo >= hi and not (sk == sk1 and (not magnitude or sk > 0)):
                g = hi if lo == hi else (lo + hi) / 2  # nothing pools: any threshold between
            else:
                lo = min(lo, hi)
                for _ in range(4 * prec):  # to rel_tol of the scales that matter: see `unit`
                    mid = _midpoint(lo, hi)
                    if selection(mid) > k:
                        lo = mid
                    else:
                        hi = mid
                    if hi - lo <= rel_tol * unit(hi):
                        break
                g = (lo + hi) / 2
        y = [float(v) for v in outputs(g)]
        return np.array(y), g, (lambda gg: [float(v) for v in outputs(gg)])
