"""Site-level privacy of DP-FedAvg (`coffer fl epsilon`, `coffer fl simulate`) against Google's dp_accounting 0.6.0.

DP-FedAvg's rounds are steps of the Poisson-subsampled Gaussian mechanism over sites (McMahan et al. 2018): sampling
rate q, noise multiplier sigma, one step per round. dp_accounting must give the same epsilon for the same
(q, sigma, rounds): RDP exactly (1e-6 relative, same optimal order), PLD never below and within 1%.
"""
import itertools
import json
import math
import subprocess
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from test_interop import COFFER

HERE = Path(__file__).parent
RATES = [0.01, 0.1, 1.0]
SIGMAS = [0.7, 1.0, 5.0]
ROUNDS = [1, 50, 1000]
DELTAS = [1e-5, 1e-8]


def rdp_reference(q, sigma, rounds, delta):
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds))
    return accountant.get_epsilon_and_optimal_order(delta)


def pld_reference(q, sigma, rounds, delta):
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds)
    return accountant.get_epsilon(delta)


def fl_epsilon(q, sigma, rounds, delta, accountant):
    out = subprocess.run([COFFER, "fl", "epsilon", "--sample-rate", str(q), "--noise-multiplier", str(sigma), "--rounds", str(rounds),
                          "--delta", str(delta), "--accountant", accountant, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("q,sigma", list(itertools.product(RATES, SIGMAS)))
def test_site_level_rdp_epsilon_equals_dp_accounting(q, sigma):
    for rounds, delta in itertools.product(ROUNDS, DELTAS):
        ours = fl_epsilon(q, sigma, rounds, delta, "rdp")
        expected, order = rdp_reference(q, sigma, rounds, delta)
        label = f"q={q} sigma={sigma} rounds={rounds} delta={delta}: coffer {ours['epsilon_rdp']}, dp_accounting {expected}"
        assert abs(ours["epsilon_rdp"] - expected) <= 1e-6 * max(expected, 1e-12), label
        assert ours["order"] == order, label


# PLD grids grow with epsilon, and test_accountant.py already checks the same PLD code over a grid: two cases here
# (a few seconds each in a debug build) show the site-level path reaches it.
PLD_CASES = [(0.1, 1.0, 100), (1.0, 5.0, 100)]


@pytest.mark.parametrize("q,sigma,rounds", PLD_CASES)
def test_site_level_pld_epsilon_is_never_below_dp_accounting_and_within_1_percent(q, sigma, rounds):
    ours = fl_epsilon(q, sigma, rounds, 1e-5, "pld")["epsilon"]
    expected = pld_reference(q, sigma, rounds, 1e-5)
    label = f"q={q} sigma={sigma} rounds={rounds}: coffer {ours}, dp_accounting {expected}"
    assert expected <= ours <= expected * 1.01, label


def test_a_simulated_dp_federation_accounts_its_rounds_as_dp_accounting_does(tmp_path):
    """The coordinator's own accounting (not just the command): 6 sites sampled with q = 0.7 for 4 rounds."""
    recipe = {"data": "unused.csv", "features": ["lncoins", "idp", "lpi", "fmde", "disea"],
              "tasks": [{"name": "limited", "kind": "binary", "column": "physlm", "threshold": 0.5}],
              "trunk": [8], "epochs": 1, "learning_rate": 0.05, "expected_batch_size": 64, "privacy": False, "seed": 1}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    lines = (HERE.parent.parent / "data" / "randhie.csv").read_text().splitlines()
    (tmp_path / "small.csv").write_text("\n".join(lines[:1801]) + "\n")
    out = subprocess.run([COFFER, "fl", "simulate", "--recipe", tmp_path / "recipe.json", "--data", tmp_path / "small.csv", "--sites", "6",
                          "--rounds", "4", "--sample-rate", "0.7", "--clip-norm", "0.5", "--noise-multiplier", "1.5",
                          "--nonprivate-statistics", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    privacy = report["privacy"]
    assert privacy["rounds_accounted"] == 4  # skipped rounds (too few sampled) are accounted too
    expected, order = rdp_reference(0.7, 1.5, 4, 1e-5)
    assert abs(privacy["epsilon_rdp"] - expected) <= 1e-6 * expected
    pld = pld_reference(0.7, 1.5, 4, 1e-5)
    assert pld <= privacy["epsilon_pld"] <= pld * 1.01
    assert privacy["epsilon"] == min(privacy["epsilon_rdp"], privacy["epsilon_pld"])
    assert not math.isnan(report["seconds"])
