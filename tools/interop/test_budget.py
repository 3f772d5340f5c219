"""The registry's privacy-budget ledger against Google's dp_accounting 0.6.0 composing the same events, and
histories imported with `push --privacy-from` (Opacus and segment shapes) recomputed as dp_accounting would."""
import json

from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from test_interop import coffer

HISTORIES = [
    [{"sample_rate": 0.01, "noise_multiplier": 1.1, "steps": 800}],
    [[0.9, 0.004, 3000], [1.3, 0.02, 200]],  # Opacus RDPAccountant.history: (noise_multiplier, sample_rate, steps)
    {"segments": [{"sample_rate": 0.05, "noise_multiplier": 2.0, "steps": 150}], "delta": 1e-5},
]


def stated(history):
    """The history in its object form, saying how the model's statistics and batches were made: a budget asks for both."""
    return (history if isinstance(history, dict) else {"segments": history}) | {"standardisation": "public", "batch_sampling": "secret"}


def events(history):
    items = history["segments"] if isinstance(history, dict) else history
    for item in items:
        q, sigma, steps = (item["sample_rate"], item["noise_multiplier"], item["steps"]) if isinstance(item, dict) else (item[1], item[0], item[2])
        yield dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)


def test_spent_budget_is_dp_accountings_composition_and_over_budget_pushes_are_refused(tmp_path):
    home = tmp_path / "home"
    coffer("init", "--home", home)
    coffer("keygen", "--out", tmp_path / "alice")
    coffer("trust", "add", tmp_path / "alice.pub", "--home", home)
    coffer("budget", "set", "census", "--epsilon", "8", "--delta", "1e-5", "--home", home)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x01" * 1000)
    # Opacus's history alone does not say how the statistics and batches were made: the budget refuses it.
    (tmp_path / "silent.json").write_text(json.dumps(HISTORIES[1]))
    silent = coffer("push", "m", tmp_path / "model", "--identity", tmp_path / "alice.key", "--dataset", "census", "--privacy-from",
                    tmp_path / "silent.json", "--delta", "1e-5", "--home", home, check=False)
    assert silent.returncode == 1 and b"must say how its standardisation statistics and batches were made" in silent.stderr, silent.stderr
    accountant = rdp_privacy_accountant.RdpAccountant()
    for i, history in enumerate(HISTORIES):
        (tmp_path / f"h{i}.json").write_text(json.dumps(stated(history)))
        coffer("push", "m", tmp_path / "model", "--identity", tmp_path / "alice.key", "--dataset", "census", "--privacy-from", tmp_path / f"h{i}.json",
               "--delta", "1e-5", "--home", home)
        for event in events(history):
            accountant.compose(event)
        status = json.loads(coffer("budget", "show", "census", "--json", "--home", home).stdout)
        expected = accountant.get_epsilon(1e-5)
        assert abs(status["spent"] - expected) <= 1e-6 * expected, (status["spent"], expected)
        assert abs(status["remaining"] - (8 - expected)) <= 1e-6 * 8
    assert [v["version"] for v in status["versions"]] == ["1", "2", "3"]

    # One more history that does not fit: refused with spent, requested and remaining, and nothing is added.
    (tmp_path / "big.json").write_text(json.dumps(stated([[0.7, 0.05, 3000]])))
    refused = coffer("push", "m", tmp_path / "model", "--identity", tmp_path / "alice.key", "--dataset", "census", "--privacy-from",
                     tmp_path / "big.json", "--delta", "1e-5", "--home", home, check=False)
    message = refused.stderr.decode()
    assert refused.returncode == 1 and message.count("\n") == 1, message
    assert "privacy budget exceeded: dataset census" in message and "spent" in message and "remaining" in message
    assert len(json.loads(coffer("list", "m", "--json", "--home", home).stdout)) == 3
    assert json.loads(coffer("fsck", "--json", "--home", home).stdout)["clean"]


def test_an_imported_history_is_recomputed_and_an_understated_claim_refused(tmp_path):
    home = tmp_path / "home"
    coffer("init", "--home", home)
    coffer("keygen", "--out", tmp_path / "alice")
    coffer("trust", "add", tmp_path / "alice.pub", "--home", home)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x02" * 1000)
    reference = [[1.1, 256 / 60000, 14062]]
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(next(events(reference)))
    rdp = accountant.get_epsilon(1e-5)  # 2.5966; Coffer reports the tighter PLD bound when it is lower
    (tmp_path / "honest.json").write_text(json.dumps({"history": reference, "epsilon": rdp, "delta": 1e-5}))
    coffer("push", "m", tmp_path / "model", "--identity", tmp_path / "alice.key", "--privacy-from", tmp_path / "honest.json", "--home", home)
    shown = json.loads(coffer("show", "m:1", "--json", "--home", home).stdout)
    assert shown["claimed_epsilon"] == rdp and shown["epsilon"] <= rdp and shown["accountant"] in ("rdp", "pld")
    assert shown["segments"] == [{"sample_rate": 256 / 60000, "noise_multiplier": 1.1, "steps": 14062}]
    (tmp_path / "understated.json").write_text(json.dumps({"history": reference, "epsilon": 1.5, "delta": 1e-5}))
    refused = coffer("push", "m", tmp_path / "model", "--identity", tmp_path / "alice.key", "--privacy-from", tmp_path / "understated.json",
                     "--home", home, check=False)
    assert refused.returncode == 1 and "the claim is understated" in refused.stderr.decode()
