"""Coffer's RDP and PLD accountants (`coffer privacy epsilon`) against Google's dp_accounting 0.6.0, over grids."""
import itertools
import json
import math
import subprocess

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from test_interop import COFFER

RATES = [1e-4, 1e-3, 0.01, 0.1]
SIGMAS = [0.5, 1.0, 2.0, 5.0]
STEPS = [1, 100, 10_000, 100_000]
DELTAS = [1e-5, 1e-8]


def reference(q, sigma, steps, delta):
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon_and_optimal_order(delta)


@pytest.mark.parametrize("q,sigma", list(itertools.product(RATES, SIGMAS)))
def test_epsilon_agrees_with_dp_accounting(q, sigma):
    for steps, delta in itertools.product(STEPS, DELTAS):
        out = subprocess.run([COFFER, "privacy", "epsilon", "--sample-rate", str(q), "--noise-multiplier", str(sigma),
                              "--steps", str(steps), "--delta", str(delta), "--json"], capture_output=True, text=True, check=True)
        ours = json.loads(out.stdout)
        expected, order = reference(q, sigma, steps, delta)
        label = f"q={q} sigma={sigma} steps={steps} delta={delta}"
        if math.isinf(expected):
            assert ours["epsilon"] is None or math.isinf(ours["epsilon"]), label
            continue
        assert abs(ours["epsilon"] - expected) <= 1e-6 * max(expected, 1e-12), f"{label}: {ours['epsilon']} vs {expected}"
        assert ours["order"] == order, label


def test_sigma_calibration_is_tight():
    out = subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "3", "--sample-rate", str(256 / 60000), "--steps", "14062",
                          "--delta", "1e-5", "--json"], capture_output=True, text=True, check=True)
    sigma = json.loads(out.stdout)["noise_multiplier"]
    assert reference(256 / 60000, sigma, 14062, 1e-5)[0] <= 3
    assert reference(256 / 60000, sigma * (1 - 1e-5), 14062, 1e-5)[0] > 3


def test_pld_sigma_calibration_spends_the_target_within_one_percent():
    out = subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "3", "--sample-rate", str(256 / 16152), "--steps", "567",
                          "--delta", "1e-5", "--accountant", "pld", "--json"], capture_output=True, text=True, check=True)
    sigma = json.loads(out.stdout)["noise_multiplier"]
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_event.PoissonSampledDpEvent(256 / 16152, dp_event.GaussianDpEvent(sigma)), 567)
    assert 0.99 * 3 <= accountant.get_epsilon(1e-5) <= 3
    assert reference(256 / 16152, sigma, 567, 1e-5)[0] > 3, "RDP, the cross-check, is looser at this sigma"


def test_sigma_after_a_release_keeps_the_whole_history_at_the_target():
    """`--after` composes a release made before the steps (coffer train's DP standardisation statistics, 1:SIGMA:1):
    the noise chosen keeps the whole history at the target, by dp_accounting's own composition, and `privacy epsilon
    --after` reports that history's epsilon."""
    q, steps, release = 256 / 16152, 567, 4.0
    for accountant in ("rdp", "pld"):
        out = subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "3", "--sample-rate", str(q), "--steps", str(steps),
                              "--delta", "1e-5", "--accountant", accountant, "--after", f"1:{release}:1", "--json"],
                             capture_output=True, text=True, check=True)
        answer = json.loads(out.stdout)
        def whole(sigma):
            events = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(release),
                                               dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)])
            reference_accountant = rdp_privacy_accountant.RdpAccountant() if accountant == "rdp" else pld_privacy_accountant.PLDAccountant()
            reference_accountant.compose(events)
            return reference_accountant.get_epsilon(1e-5)
        spent = whole(answer["noise_multiplier"])
        if accountant == "rdp":  # the same orders as dp_accounting's: equal to 1e-6, and the smallest such sigma
            assert spent <= 3 and abs(answer["epsilon"] - spent) <= 1e-6 * spent, f"{answer} vs {spent}"
            assert whole(answer["noise_multiplier"] * (1 - 1e-5)) > 3
        else:  # within 0.5% below the target, as coffer train calibrates
            assert 0.99 * 3 <= spent <= 3 * (1 + 1e-4) and abs(answer["epsilon"] - spent) <= 0.01 * spent, f"{answer} vs {spent}"
        alone = json.loads(subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "3", "--sample-rate", str(q), "--steps", str(steps),
                                           "--delta", "1e-5", "--accountant", accountant, "--json"], capture_output=True, text=True,
                                          check=True).stdout)["noise_multiplier"]
        assert answer["noise_multiplier"] > alone, f"{accountant}: the release leaves less to the steps"
        # `privacy epsilon --after` composes the same history: it reports what dp_accounting does for the sigma chosen.
        composed = json.loads(subprocess.run([COFFER, "privacy", "epsilon", "--sample-rate", str(q), "--noise-multiplier",
                                              repr(answer["noise_multiplier"]), "--steps", str(steps), "--delta", "1e-5",
                                              "--accountant", accountant, "--after", f"1:{release}:1", "--json"],
                                             capture_output=True, text=True, check=True).stdout)["epsilon"]
        if accountant == "rdp":
            assert abs(composed - spent) <= 1e-6 * spent, f"epsilon --after {composed} vs {spent}"
        else:  # PLD: never below dp_accounting, within its safety margin and the FFT's round-off
            assert spent <= composed <= spent * (1 + 2e-4) + 1e-12, f"epsilon --after {composed} vs {spent}"
    refused = subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "3", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5",
                              "--after", "1:0:1"], capture_output=True, text=True)
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0 and "RATE:SIGMA:STEPS" in refused.stderr, refused.stderr
    refused = subprocess.run([COFFER, "privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5",
                              "--after", "0.01:1"], capture_output=True, text=True)
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0 and "RATE:SIGMA:STEPS" in refused.stderr, refused.stderr
    # A release that spends the target alone is named as the cause.
    spent = subprocess.run([COFFER, "privacy", "sigma", "--target-epsilon", "1", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5",
                            "--after", "1:0.5:1"], capture_output=True, text=True)
    assert spent.returncode != 0 and spent.stderr.strip().count("\n") == 0, spent.stderr
    assert "the releases given with --after alone are epsilon" in spent.stderr, spent.stderr


# PLD: the grids dp_accounting needs grow with epsilon, so the PLD grid stops where both sides stay under a second.
PLD_CASES = [(q, sigma, steps) for q, sigma, steps in itertools.product([1e-3, 0.01, 0.1], [0.8, 2.0, 5.0], [1, 100, 3000])
             if not (q == 0.1 and sigma == 0.8 and steps == 3000)] + [(256 / 60000, 1.1, 14062)]


@pytest.mark.parametrize("q,sigma,steps", PLD_CASES)
def test_pld_epsilon_is_within_1_percent_of_dp_accounting_and_never_below(q, sigma, steps):
    for delta in DELTAS:
        out = subprocess.run([COFFER, "privacy", "epsilon", "--sample-rate", str(q), "--noise-multiplier", str(sigma),
                              "--steps", str(steps), "--delta", str(delta), "--accountant", "pld", "--json"],
                             capture_output=True, text=True, check=True)
        ours = json.loads(out.stdout)["epsilon"]
        accountant = pld_privacy_accountant.PLDAccountant()
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        expected = accountant.get_epsilon(delta)
        label = f"q={q} sigma={sigma} steps={steps} delta={delta}: coffer {ours}, dp_accounting {expected}"
        assert ours >= expected, label
        assert ours <= expected * 1.01, label
        assert ours <= expected * (1 + 2e-4) + 1e-12, label  # in practice: the 1e-4 safety margin, and FFT round-off
