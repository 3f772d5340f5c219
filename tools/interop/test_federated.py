"""Site-level privacy of DP-FedAvg (`coffer fl epsilon`, `coffer fl simulate`) against Google's dp_accounting 0.6.0.

DP-FedAvg's rounds are steps of the Poisson-subsampled Gaussian mechanism over sites (McMahan et al. 2018): sampling
rate q, noise multiplier sigma, one step per round. dp_accounting must give the same epsilon for the same
(q, sigma, rounds): RDP exactly (1e-6 relative, same optimal order), PLD never below and within 1%.

And `coffer fl serve` over TLS with `coffer fl join` sites as real processes: the coordinator's certificate is
trusted only when a site is given it (`--ca-cert`, as for every client of a Coffer server). And a site written from
docs/FORMAT.md alone (PyNaCl, hashlib) joins a live coordinator: the recipe digest and the message signatures, in
JSON and in binary bodies (a task's model after its head, the site's keys as references).
"""
import base64
import hashlib
import itertools
import json
import math
import os
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from test_interop import COFFER
import coffer_spec

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "lib"))
import cofferlib  # noqa: E402

RATES = [0.01, 0.1, 1.0]
SIGMAS = [0.7, 1.0, 5.0]
ROUNDS = [1, 50, 1000]
DELTAS = [1e-5, 1e-8]
# The recipe of every federation here: a small model, so that rounds take well under a second.
RECIPE = {"data": "unused.csv", "features": ["lncoins", "idp", "lpi", "fmde", "disea"],
          "tasks": [{"name": "limited", "kind": "binary", "column": "physlm", "threshold": 0.5}],
          "trunk": [8], "epochs": 1, "learning_rate": 0.05, "expected_batch_size": 64, "privacy": False, "seed": 1}


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
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
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


def fl_sites(tmp_path, env, sites, rows):
    """Keys for a coordinator and `sites` sites, each site's shard of the RAND data (every `sites`-th row), a recipe."""
    for name in ["coordinator"] + [f"site{i}" for i in range(sites)]:
        cofferlib.keygen(COFFER, tmp_path / name, env)
    lines = (HERE.parent.parent / "data" / "randhie.csv").read_text().splitlines()
    for i in range(sites):
        (tmp_path / f"site{i}.csv").write_text("\n".join([lines[0]] + lines[1 + i::sites][:rows]) + "\n")
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))


def fl_join(tmp_path, env, site, url, *extra):
    return subprocess.Popen([COFFER, "fl", "join", "--coordinator", url, "--coordinator-key", tmp_path / "coordinator.pub",
                             "--recipe", tmp_path / "recipe.json", "--data", tmp_path / f"site{site}.csv",
                             "--identity", tmp_path / f"site{site}.key", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fl_serve_over_tls_federates_sites_that_trust_its_certificate_and_no_other(tmp_path):
    env = cofferlib.environment(tmp_path)
    env.pop("COFFER_CA_CERT", None)
    fl_sites(tmp_path, env, 3, 300)
    cert, key = cofferlib.self_signed_certificate(tmp_path / "tls")
    other, _ = cofferlib.self_signed_certificate(tmp_path / "other")
    port = cofferlib.free_port()
    url = f"https://127.0.0.1:{port}"
    serve = subprocess.Popen([COFFER, "fl", "serve", "--recipe", tmp_path / "recipe.json", "--identity", tmp_path / "coordinator.key",
                              "--listen", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key, "--rounds", "2",
                              "--join-timeout", "120", "--json", *[a for i in range(3) for a in ("--site", tmp_path / f"site{i}.pub")]],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sites = []
    try:
        # Its status route answers over TLS, to a client that trusts the certificate.
        context = ssl.create_default_context(cafile=cert)
        status = None
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"{url}/v1/fl/status", context=context, timeout=5) as response:
                    status = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                assert serve.poll() is None, serve.communicate()[1]
                time.sleep(0.05)
        assert status and status["enrolled"] == "3" and status["joined"] == "0", status

        # An enrolled site that does not trust the certificate (the system's roots, or another CA) stops at once with
        # one line, having sent nothing: no retries for two minutes, no join.
        for extra in ([], ["--ca-cert", other]):
            start = time.monotonic()
            refused = fl_join(tmp_path, env, 0, url, *extra)
            out, err = refused.communicate(timeout=60)
            assert refused.returncode == 1, (out, err)
            assert err == f"coffer: cannot reach the coordinator: {url}: its TLS certificate is not trusted " \
                          "(give fl join the CA that issued it: --ca-cert or COFFER_CA_CERT)\n", err
            assert time.monotonic() - start < 30
        with urllib.request.urlopen(f"{url}/v1/fl/status", context=context, timeout=5) as response:
            assert json.loads(response.read())["joined"] == "0"

        # The sites that trust it (by flag, or by COFFER_CA_CERT as every other client) federate: two rounds aggregated.
        sites = [fl_join(tmp_path, env, i, url, "--ca-cert", cert, "--rounds", "2") for i in range(2)]
        sites.append(fl_join(tmp_path, dict(env, COFFER_CA_CERT=str(cert)), 2, url, "--rounds", "2"))
        out, err = serve.communicate(timeout=300)
        assert serve.returncode == 0, err
        assert f"coffer fl: coordinating 3 sites on {url} " in err, err
        report = json.loads(out)
        assert report["aggregated"] == 2 and [r["sites"] for r in report["rounds"]] == [3, 3], report
        for site in sites:
            out, err = site.communicate(timeout=60)
            assert site.returncode == 0, err
            assert "federation over: 2 rounds, 2 aggregated; this site trained in 2 rounds" in out, out
    finally:
        for process in [serve, *sites]:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_fl_serve_refuses_plain_http_beyond_loopback_and_half_a_tls_pair(tmp_path):
    env = cofferlib.environment(tmp_path)
    fl_sites(tmp_path, env, 3, 10)
    cert, _ = cofferlib.self_signed_certificate(tmp_path / "tls")
    base = [COFFER, "fl", "serve", "--recipe", tmp_path / "recipe.json", "--identity", tmp_path / "coordinator.key",
            *[a for i in range(3) for a in ("--site", tmp_path / f"site{i}.pub")]]
    for extra, line in ((["--listen", "0.0.0.0:8450"], "coffer: plain HTTP on 0.0.0.0 would expose the global model on the network: "
                         "listen on 127.0.0.1, give --tls-cert and --tls-key, or pass --insecure\n"),
                        (["--tls-cert", cert], "coffer: --tls-cert and --tls-key go together\n"),
                        (["--tls-cert", cert, "--tls-key", tmp_path / "missing.pem"], None)):
        refused = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        if line:
            assert refused.stderr == line, refused.stderr
        else:
            assert "cannot load the TLS certificate or key" in refused.stderr, refused.stderr
    # A site refuses such a coordinator too, before sending anything (no retries: at once), and before it asks for a
    # passphrase (there is none to give here: asked first, that refusal would be the line).
    no_passphrase = {k: v for k, v in env.items() if not k.startswith("COFFER_PASSPHRASE")}
    for host in ("10.1.2.3", "[fd00::1]"):
        start = time.monotonic()
        refused = subprocess.run([COFFER, "fl", "join", "--coordinator", f"http://{host}:8450", "--coordinator-key", tmp_path / "coordinator.pub",
                                  "--recipe", tmp_path / "recipe.json", "--data", tmp_path / "site0.csv", "--identity", tmp_path / "site0.key"],
                                 env=no_passphrase, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr == f"coffer: plain HTTP to {host} would expose the global model on the network: " \
                                                             "use https, or pass --insecure\n", refused.stderr
        assert time.monotonic() - start < 10


def fl_signature(seed, body, label=b"coffer/fl/v1/message-digest"):
    """Coffer-Signature's base64 Ed25519 signature over the label and BLAKE2b-512 of the body (FORMAT.md)."""
    return base64.b64encode(SigningKey(seed).sign(label + hashlib.blake2b(body, digest_size=64).digest()).signature).decode()


def fl_serve(tmp_path, env, port, *extra):
    """`coffer fl serve` of three enrolled sites on loopback, one round, once it answers /v1/fl/status."""
    serve = subprocess.Popen([COFFER, "fl", "serve", "--recipe", tmp_path / "recipe.json", "--identity", tmp_path / "coordinator.key",
                              "--listen", f"127.0.0.1:{port}", "--rounds", "1", "--join-timeout", "120", *extra,
                              *[a for i in range(3) for a in ("--site", tmp_path / f"site{i}.pub")]],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/fl/status", timeout=5).close()
            return serve
        except (urllib.error.URLError, ConnectionError):
            if serve.poll() is not None:
                raise AssertionError(serve.communicate()[1])
            time.sleep(0.05)
    serve.kill()
    raise AssertionError("coffer fl serve did not answer within 20 s")


def test_a_site_written_from_the_specification_joins_and_checks_the_coordinators_signature(tmp_path):
    env = cofferlib.environment(tmp_path)
    fl_sites(tmp_path, env, 3, 10)
    port = cofferlib.free_port()
    serve = fl_serve(tmp_path, env, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/fl"
        site = coffer_spec.read_key_file((tmp_path / "site0.key").read_bytes(), env["COFFER_PASSPHRASE"].encode())
        site_id = coffer_spec.key_id(site["ed25519"], site["x25519"], site["p256"])
        coordinator = coffer_spec.read_public_identity((tmp_path / "coordinator.pub").read_text())
        # The recipe digest: SHA-256 of the recipe with `data` emptied, keys sorted, no whitespace.
        digest = hashlib.sha256(json.dumps(dict(RECIPE, data=""), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        # The session comes from the unsigned status, and the join names it.
        with urllib.request.urlopen(f"{url}/status", timeout=30) as response:
            session = json.loads(response.read())["session"]
        body = json.dumps({"type": "coffer.fl.v1.join", "session": session, "site": site_id, "recipe_digest": digest,
                           "features": RECIPE["features"], "tasks": ["limited"]}).encode()

        def join(signature):
            request = urllib.request.Request(f"{url}/join", data=body, method="POST",
                                             headers={"Coffer-Signature": f"{site_id} {signature}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.headers.get("Coffer-Signature"), response.read()
            except urllib.error.HTTPError as refused:
                return refused.code, None, refused.read()

        # Signatures over the body itself (the old label), or over another body, are refused before anything else.
        for signature in (fl_signature(site["ed25519_seed"], body, b"coffer/fl/v1/message"),
                          fl_signature(site["ed25519_seed"], body + b" ")):
            status, _, text = join(signature)
            assert status == 401, (status, text)
        status, header, welcome = join(fl_signature(site["ed25519_seed"], body))
        assert status == 200, (status, welcome)
        signer, signature = header.split(" ")
        assert signer == coordinator["id"]
        VerifyKey(coordinator["ed25519"]).verify(
            b"coffer/fl/v1/message-digest" + hashlib.blake2b(welcome, digest_size=64).digest(), base64.b64decode(signature))
        welcome = json.loads(welcome)
        assert welcome["type"] == "coffer.fl.v1.welcome" and welcome["site"] == site_id and welcome["recipe_digest"] == digest
        assert welcome["session"] == session
    finally:
        serve.kill()
        serve.communicate()


BINARY_MEDIA_TYPE = "application/vnd.coffer.fl.v1+binary"


def binary_body(message, references=()):
    """A binary body (FORMAT.md, "Binary bodies"): the named top-level byte fields (bytes) become references to the
    data section, in order; the rest of the message is the JSON head."""
    head, data = dict(message), b""
    for name in references:
        head[name] = {"offset": len(data), "length": len(message[name])}
        data += message[name]
    head = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    return b"CFLM" + bytes([1, 0, 0, 0]) + struct.pack("<I", len(head)) + head + data


def read_binary_body(body):
    """The message of a binary body with every reference replaced by its bytes, checking that the references tile the
    data section as FORMAT.md requires."""
    assert body[:8] == b"CFLM" + bytes([1, 0, 0, 0]), body[:8]
    (count,) = struct.unpack("<I", body[8:12])
    head, data = json.loads(body[12:12 + count]), body[12 + count:]
    ranges = []

    def resolve(value):
        if isinstance(value, dict) and set(value) == {"offset", "length"}:
            ranges.append((value["offset"], value["length"]))
            return data[value["offset"]:value["offset"] + value["length"]]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    message = resolve(head)
    end = 0
    for offset, length in sorted(ranges):
        assert offset == end and length >= 1, ranges
        end = offset + length
    assert end == len(data), (ranges, len(data))
    return message


def test_a_site_written_from_the_specification_speaks_binary_bodies(tmp_path):
    """The Python site joins with a binary body, gets its welcome and its first task (whose model is raw f32 after the
    head) as binary bodies, and submits its keys as references into the data section; two `coffer fl join` sites make
    up the round. With a public standardisation the first round is an update round, whose task carries the model."""
    env = cofferlib.environment(tmp_path)
    fl_sites(tmp_path, env, 3, 40)
    # A model of 1,441 parameters (5.6 KB): over the 4,096 bytes from which Coffer writes a byte field as a reference.
    recipe = dict(RECIPE, trunk=[64, 16])
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "standardisation.json").write_text(json.dumps({"means": [0.0] * 5, "standard_deviations": [1.0] * 5}))
    port = cofferlib.free_port()
    serve = fl_serve(tmp_path, env, port, "--stage-timeout", "5", "--standardisation", tmp_path / "standardisation.json")
    url = f"http://127.0.0.1:{port}/v1/fl"
    others = []
    try:
        site = coffer_spec.read_key_file((tmp_path / "site0.key").read_bytes(), env["COFFER_PASSPHRASE"].encode())
        site_id = coffer_spec.key_id(site["ed25519"], site["x25519"], site["p256"])
        coordinator = VerifyKey(coffer_spec.read_public_identity((tmp_path / "coordinator.pub").read_text())["ed25519"])

        def post(route, body):
            request = urllib.request.Request(f"{url}/{route}", data=body, method="POST", headers={
                "Coffer-Signature": f"{site_id} {fl_signature(site['ed25519_seed'], body)}", "Content-Type": BINARY_MEDIA_TYPE})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = response.read()
                if response.status == 204:  # no task within 20 s: poll again
                    return 204, None
                assert response.headers["Content-Type"] == BINARY_MEDIA_TYPE, response.headers["Content-Type"]
                signer, signature = response.headers["Coffer-Signature"].split(" ")
                coordinator.verify(b"coffer/fl/v1/message-digest" + hashlib.blake2b(answer, digest_size=64).digest(),
                                   base64.b64decode(signature))
                return response.status, read_binary_body(answer)

        digest = hashlib.sha256(json.dumps(dict(recipe, data=""), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/fl/status", timeout=30) as response:
            session = json.loads(response.read())["session"]
        status, welcome = post("join", binary_body({"type": "coffer.fl.v1.join", "session": session, "site": site_id,
                                                    "recipe_digest": digest, "features": RECIPE["features"], "tasks": ["limited"]}))
        assert status == 200 and welcome["type"] == "coffer.fl.v1.welcome" and welcome["site"] == site_id
        assert welcome["session"] == session
        others = [fl_join(tmp_path, env, i, f"http://127.0.0.1:{port}") for i in (1, 2)]
        status = 204
        while status == 204:
            status, task = post("poll", binary_body({"type": "coffer.fl.v1.poll", "session": session, "site": site_id, "after": 0}))
        assert status == 200 and task["stage"] == "advertise" and task["round"] == 1 and task["site"] == site_id
        # The model went after the head as raw little-endian f32: 5 inputs -> 64 -> 16 -> 1 output, weights then biases.
        parameters = 5 * 64 + 64 + 64 * 16 + 16 + 16 * 1 + 1
        assert isinstance(task["model"], bytes) and len(task["model"]) == 4 * parameters
        model = struct.unpack(f"<{parameters}f", task["model"])
        assert all(math.isfinite(x) for x in model) and any(x != 0 for x in model)
        index = next(entry["index"] for entry in task["roster"] if entry["site"] == site_id)
        channel, mask = PrivateKey.generate().public_key.encode(), PrivateKey.generate().public_key.encode()
        signed = (b"coffer/fl/v1/keys" + bytes.fromhex(session) + struct.pack("<II", 1, index) + site_id.encode() + channel + mask)
        key_signature = base64.b64encode(SigningKey(site["ed25519_seed"]).sign(signed).signature).decode()
        status, ack = post("submit", binary_body({"type": "coffer.fl.v1.submit", "session": session, "site": site_id, "round": 1,
                                                  "stage": "advertise", "encryption_key": channel, "mask_key": mask,
                                                  "key_signature": key_signature}, references=("encryption_key", "mask_key")))
        assert status == 200 and ack["type"] == "coffer.fl.v1.ack" and ack["stage"] == "advertise"
    finally:
        for process in others + [serve]:
            process.kill()
            process.communicate()
