"""SecAgg+ neighbours and threshold for a federation of n sites (docs/FORMAT.md, "Choosing neighbours").

The ring of k neighbours over a uniformly random order of the sites (fresh each round) is the random Harary graph of Bell
et al. 2020. With at most gamma*n sites colluding with the coordinator (chosen before the round's order is drawn) and at
most delta*n dropping out, a (k, t) is accepted when, by union bounds over exact hypergeometric tails:

  privacy      n * P[an honest site has >= t colluding neighbours]                 <= 2^-sigma / 2  (sigma = 40)
  connectivity n * P[k/2 ring-consecutive sites all colluding or dropped]          <= 2^-sigma / 2
  correctness  n * P[a site has >= k + 1 - t dropped neighbours]                   <= 2^-eta        (eta = 30)

and 2t > k + 1 (the coordinator never gets t shares of both secrets of one site), as the code requires. The first
failure lets the coordinator reconstruct both the self-mask seed and the mask key of an honest site; the second splits
the honest survivors, so that the coordinator learns partial sums; the third leaves a secret that cannot be
reconstructed, and the round aborts (no wrong result). Prints the smallest even k (and the t range) for each row, or
"complete" when only the complete graph (k = n - 1, whose guarantees hold with certainty for < t colluding sites and
<= n - t dropouts) qualifies.

Usage: python3 neighbours.py [--sites 10,50,100,1000] [--corrupt 0.05,0.1,0.2,0.33] [--dropout 0.05,0.1,0.2]
"""
import argparse
from math import comb


def tail_at_least(population, marked, draws, x0):
    """P[X >= x0] for X hypergeometric: `draws` without replacement from `population` of which `marked` are marked."""
    total = comb(population, draws)
    return sum(comb(marked, x) * comb(population - marked, draws - x) for x in range(max(x0, 0), min(marked, draws) + 1)) / total


def failures(n, k, t, corrupt, dropped):
    privacy = n * tail_at_least(n - 1, corrupt, k, t)
    run = k // 2
    removed = corrupt + dropped
    connectivity = n * comb(removed, run) / comb(n, run) if removed >= run else 0.0
    correctness = n * tail_at_least(n - 1, dropped, k, k + 1 - t)
    return privacy, connectivity, correctness


def choose(n, gamma, delta, sigma=40, eta=30):
    """Smallest even k < n - 1 with some t that meets the three bounds, as (k, [t...]); None for the complete graph."""
    corrupt, dropped = int(gamma * n), int(delta * n)
    for k in range(2, n - 1, 2):
        good = []
        for t in range(k // 2 + 1, k + 2):
            p, c, r = failures(n, k, t, corrupt, dropped)
            if p <= 2.0 ** -(sigma + 1) and c <= 2.0 ** -(sigma + 1) and r <= 2.0 ** -eta:
                good.append(t)
        if good:
            return k, good
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", default="10,20,50,100,200,500,1000")
    parser.add_argument("--corrupt", default="0.05,0.1,0.2,0.33")
    parser.add_argument("--dropout", default="0.05,0.1,0.2")
    args = parser.parse_args()
    print("| sites n | colluding gamma | dropping delta | neighbours k | threshold t |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in [int(x) for x in args.sites.split(",")]:
        for gamma in [float(x) for x in args.corrupt.split(",")]:
            for delta in [float(x) for x in args.dropout.split(",")]:
                found = choose(n, gamma, delta)
                if found is None:
                    print(f"| {n} | {gamma:g} | {delta:g} | complete ({n - 1}) | 2/3 default |")
                else:
                    k, ts = found
                    print(f"| {n} | {gamma:g} | {delta:g} | {k} | {ts[0]}..{ts[-1]} |")


if __name__ == "__main__":
    main()
