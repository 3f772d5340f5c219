"""A pulled model directory verifies with OpenSSF's model_signing (PyPI model-signing 1.1) and the publisher's PEM key."""
import os
import subprocess
import sys
from pathlib import Path

from test_interop import COFFER, ENV

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


def coffer(*args, home):
    env = dict(ENV, COFFER_HOME=str(home))
    return subprocess.run([COFFER, *map(str, args)], env=env, capture_output=True, check=True)


def verify(directory, pem):
    return subprocess.run([*MODEL_SIGNING, "verify", "key", str(directory), "--signature", str(directory / "model.sig"),
                           "--public_key", str(pem)], capture_output=True, text=True)


def test_pulled_model_verifies_with_model_signing(tmp_path):
    home = tmp_path / "home"
    coffer("init", "--home", home, home=home)
    coffer("keygen", "--out", tmp_path / "keys" / "alice", "--kdf-ops", "1", "--kdf-memory", "64", home=home)
    model = tmp_path / "fraud-detector"
    (model / "tokenizer").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(os.urandom(300_000))
    (model / "tokenizer" / "vocab.json").write_text('{"a": 1}')
    (model / "README").write_text("demo model\n")
    coffer("push", "fraud", model, "--identity", tmp_path / "keys" / "alice.key", "--epsilon", "2.5", "--delta", "1e-5", home=home)
    coffer("trust", "add", tmp_path / "keys" / "alice.pub", home=home)
    out = tmp_path / "pulled"
    coffer("pull", "fraud", "--identity", tmp_path / "keys" / "alice.key", "--out", out, home=home)
    assert (out / "model.sig").exists()

    result = verify(out, tmp_path / "keys" / "alice.pem")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout + result.stderr

    (out / "tokenizer" / "vocab.json").write_text('{"a": 2}')
    tampered = verify(out, tmp_path / "keys" / "alice.pem")
    assert tampered.returncode != 0
