"""Coffer's formats read and written by an independent implementation (coffer_spec.py, PyNaCl).

Drives the real `coffer` binary (COFFER_BIN) in a temporary directory.
"""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import nacl.exceptions
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

import coffer_spec as spec

HERE = Path(__file__).parent
COFFER = os.environ.get("COFFER_BIN", str(HERE.parent.parent / ".build" / "debug" / "coffer"))
PASSPHRASE = b"interop passphrase"
ENV = dict(os.environ, COFFER_PASSPHRASE=PASSPHRASE.decode())


def coffer(*args, check=True):
    return subprocess.run([COFFER, *map(str, args)], env=ENV, capture_output=True, check=check)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob"):
        coffer("keygen", "--out", d / name)  # default Argon2id cost: the reader must honour the recorded parameters
    return d


def identity(keys, name):
    return spec.read_key_file((keys / f"{name}.key").read_bytes(), PASSPHRASE)


def test_worked_example_vector():
    vector = json.loads((HERE / "vectors" / "sealed-v1-worked-example.json").read_text())
    data_key, prefix = bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["nonce_prefix"])
    sealed = spec.seal_detached(bytes.fromhex(vector["plaintext"]), data_key, prefix, vector["chunk_shift"])
    assert sealed.hex() == vector["sealed"]
    header, length = spec.parse_header(sealed)
    assert spec.open_payload(sealed, header, length, data_key).hex() == vector["plaintext"]


def test_key_file_and_public_identity(keys):
    alice = identity(keys, "alice")
    public = spec.read_public_identity((keys / "alice.pub").read_text())
    assert bytes(SigningKey(alice["ed25519_seed"]).verify_key) == public["ed25519"] == alice["ed25519"]
    assert bytes(PrivateKey(alice["x25519_secret"]).public_key) == public["x25519"] == alice["x25519"]
    assert public["p256"] == alice["p256"] and public["name"] == "alice"
    with pytest.raises(nacl.exceptions.CryptoError):
        spec.read_key_file((keys / "alice.key").read_bytes(), b"wrong")


# From 8 MiB on, Coffer loads OpenSSL's ChaCha20-Poly1305 while it seals and switches to it mid-file: (24 << 20) + 5 has
# chunks from both libraries, all of which PyNaCl (libsodium) must open.
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 65536, 65536 * 5 + 7, (1 << 20) + 3, (24 << 20) + 5])
@pytest.mark.parametrize("chunk", ["4K", "64K"])
def test_python_opens_coffer_sealed_files(keys, tmp_path, size, chunk):
    plain = os.urandom(size)
    (tmp_path / "in").write_bytes(plain)
    coffer("seal", "--chunk-size", chunk, "--to", keys / "alice.pub", "--to", keys / "bob.pub", "-o", tmp_path / "out.cfs", tmp_path / "in")
    sealed = (tmp_path / "out.cfs").read_bytes()
    assert spec.open_sealed(sealed, identity(keys, "alice")) == plain
    assert spec.open_sealed(sealed, identity(keys, "bob")) == plain


def test_python_detects_tampering(keys, tmp_path):
    (tmp_path / "in").write_bytes(os.urandom(10000))
    coffer("seal", "--chunk-size", "4K", "--to", keys / "alice.pub", "-o", tmp_path / "out.cfs", tmp_path / "in")
    sealed = bytearray((tmp_path / "out.cfs").read_bytes())
    sealed[-100] ^= 1
    with pytest.raises(nacl.exceptions.CryptoError):
        spec.open_sealed(bytes(sealed), identity(keys, "alice"))


@pytest.mark.parametrize("size", [70000, (20 << 20) + 3])
def test_coffer_opens_python_sealed_files(keys, tmp_path, size):
    alice = spec.read_public_identity((keys / "alice.pub").read_text())
    plain = os.urandom(size)
    data_key = os.urandom(32)
    sealed = spec.seal_detached(plain, data_key, os.urandom(16), 13, stanzas=[spec.x25519_stanza(data_key, alice["x25519"])])
    (tmp_path / "py.cfs").write_bytes(sealed)
    coffer("unseal", "--identity", keys / "alice.key", "-o", tmp_path / "plain", tmp_path / "py.cfs")
    assert (tmp_path / "plain").read_bytes() == plain
    result = coffer("unseal", "--identity", keys / "alice.key", "--range", "5000:9000", "-o", "-", tmp_path / "py.cfs")
    assert result.stdout == plain[5000:9000]


def test_dsse_envelope_verifies_with_pynacl(keys, tmp_path):
    files = []
    for name, size in (("a.bin", 1000), ("b.bin", 0)):
        (tmp_path / name).write_bytes(os.urandom(size))
        files.append(tmp_path / name)
    coffer("attestation", "sign", "--identity", keys / "alice.key", "-o", tmp_path / "env.json", *files)
    envelope = json.loads((tmp_path / "env.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    public = spec.read_public_identity((keys / "alice.pub").read_text())
    statement = spec.verify_dsse(envelope, public)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    digests = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    for f in files:
        assert digests[str(f)] == hashlib.sha256(f.read_bytes()).hexdigest()
    envelope["payload"] = envelope["payload"][:-4] + ("AAAA" if not envelope["payload"].endswith("AAAA") else "BBBB")
    with pytest.raises(nacl.exceptions.BadSignatureError):
        spec.verify_dsse(envelope, public)
