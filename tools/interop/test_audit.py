"""Coffer's one-run privacy audit against an implementation written from the paper (audit_reference.py, scipy):
the p-value and the bound on a grid of canaries, guesses, right guesses and delta (`coffer privacy audit-bound`), and a
real audited training run recounted from its audit report (`coffer train --audit-canaries --audit-report`)."""
import json
import subprocess

import pytest

from audit_reference import epsilon_lower_bound, guess_grid, p_value
from test_interop import COFFER

EPSILONS = [0.0, 0.5, 1.0, 2.0, 4.0]
CASES = [(m, r, v, delta)
         for m in (100, 1000, 5000)
         for r in sorted({max(2, m // 10), m})
         for v in sorted({r // 2, int(0.6 * r), int(0.75 * r), int(0.9 * r), r})
         for delta in (0.0, 1e-5)]


def bound(m, r, v, delta, significance=0.05):
    args = [COFFER, "privacy", "audit-bound", "--canaries", m, "--guesses", r, "--correct", v, "--delta", delta,
            "--significance", significance, "--json"]
    for eps in EPSILONS:
        args += ["--epsilon", eps]
    return json.loads(subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("m,r,v,delta", CASES)
def test_p_values_and_bound_agree_with_the_paper(m, r, v, delta):
    ours = bound(m, r, v, delta)
    for eps, p in zip(EPSILONS, ours["p_values"]):
        expected = p_value(m, r, v, eps, delta)
        assert abs(p - expected) <= 1e-9 + 1e-7 * expected, f"m={m} r={r} v={v} delta={delta} eps={eps}: {p} vs {expected}"
    expected = epsilon_lower_bound(m, r, v, 0.05, delta)
    # Coffer bisects to 1e-6 and keeps the lower (rejected) end: never above the reference, at most 1e-6 below.
    assert expected - 2e-6 <= ours["epsilon_lower_bound"] <= expected + 1e-9, f"m={m} r={r} v={v} delta={delta}"


def test_bad_counts_are_refused_with_one_line():
    out = subprocess.run([COFFER, "privacy", "audit-bound", "--canaries", "10", "--guesses", "20", "--correct", "5", "--delta", "0"],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["coffer: invalid parameter: guesses must be in 0...10 (the canaries), got 20"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    work = tmp_path_factory.mktemp("audit")
    subprocess.run([COFFER, "synth", "--rows", "1500", "--features", "4", "--classes", "3", "--seed", "4", "--out", work],
                   check=True, capture_output=True)
    recipe = json.loads((work / "recipe.json").read_text())
    recipe.update(epochs=2, trunk=[16], noise_multiplier=0.7, expected_batch_size=60)
    (work / "recipe.json").write_text(json.dumps(recipe))
    subprocess.run([COFFER, "train", "--config", work / "recipe.json", "--out", work / "ckpt", "--audit-canaries", "300",
                    "--audit-report", work / "audit.json"], check=True, capture_output=True)
    return json.loads((work / "audit.json").read_text()), json.loads((work / "ckpt" / "privacy.json").read_text())


def test_the_audit_report_recounts_to_the_recorded_bound(audited):
    report, privacy = audited
    audit = privacy["evidence"]["audit"]
    m = report["canaries"]
    assert m == audit["canaries"] == 300 == len(report["scores"]) == len(report["included"]) == len(report["features"])
    grid = guess_grid(m)
    assert [tuple(g) for g in report["grid"]] == grid
    assert report["significance"] == pytest.approx(0.05 / len(grid))
    # Highest score first, ties by index; guess "in" for the top k+, "out" for the bottom k-.
    ranking = sorted(range(m), key=lambda i: (-report["scores"][i], i))
    best = (0.0, None)
    for k_plus, k_minus in grid:
        correct = sum(report["included"][i] for i in ranking[:k_plus]) + sum(not report["included"][i] for i in ranking[m - k_minus:])
        eps = epsilon_lower_bound(m, k_plus + k_minus, correct, report["significance"], report["delta"])
        if eps > best[0]:
            best = (eps, (k_plus, k_minus, correct))
    assert abs(audit["epsilon_lower_bound"] - best[0]) <= 2e-6
    if best[1]:
        assert (audit["k_plus"], audit["k_minus"], audit["correct"]) == best[1]
    assert audit["epsilon_lower_bound"] <= privacy["epsilon"], "the audit must never show more than the accountant proves"
    assert "included" not in json.dumps(privacy), "inclusion bits stay out of the checkpoint"


def test_an_audit_without_dp_is_refused(tmp_path):
    subprocess.run([COFFER, "synth", "--rows", "300", "--features", "3", "--out", tmp_path], check=True, capture_output=True)
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    recipe.update(privacy=False, noise_multiplier=None)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = subprocess.run([COFFER, "train", "--config", tmp_path / "recipe.json", "--out", tmp_path / "o", "--audit-canaries", "500"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "audit_canaries needs differential privacy" in out.stderr
