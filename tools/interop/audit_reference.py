"""The one-run audit's bound written from the paper alone (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1)
Training Run", arXiv 2305.08846, Theorem 5.2 and its Algorithm 2), on scipy's binomial distribution: an implementation
independent of Coffer's Swift code, to check it against.

Theorem 5.2: if the training algorithm is (eps, delta)-DP in each of the m canaries, the number W of right guesses out
of r satisfies, for every v,

    P[W >= v] <= f(v) + 2 m delta max_{i = 1..v} (f(v - i) - f(v)) / i,    f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u],

so a run with v right guesses rejects (eps, delta) at significance alpha when that right-hand side (capped at 1) is below
alpha. The lower bound is the largest rejected eps.
"""
import math

from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom


def p_value(m, r, v, eps, delta):
    if v == 0:
        return 1.0
    q = expit(eps)

    def f(u):  # P[Binomial(r, q) >= u]
        return binom.sf(u - 1, r, q)

    tail = f(v)
    if delta == 0:
        return min(1.0, tail)
    # f(v - i) - f(v) = P[v - i <= B <= v - 1], summed from the pmf so that no near-equal tails are subtracted.
    pmf = binom.pmf(range(v), r, q)
    best, running = 0.0, 0.0
    for i in range(1, v + 1):
        running += pmf[v - i]
        best = max(best, running / i)
    return min(1.0, tail + 2 * m * delta * best)


def epsilon_lower_bound(m, r, v, significance, delta):
    def objective(eps):
        return significance - p_value(m, r, v, eps, delta)

    if objective(0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while objective(high) > 0:
        low, high = high, 2 * high
    return brentq(objective, low, high, xtol=1e-9)


def guess_grid(m):
    """The (k+, k-) pairs Coffer's audit tries: k = floor(f m) for f in 1, 2, 5, 10, 20, 30, 40, 50 %, without repeats or 0."""
    ks = []
    for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        k = math.floor(f * m)
        if k >= 1 and k not in ks:
            ks.append(k)
    return [(k, k) for k in ks]
