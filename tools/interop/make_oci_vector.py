"""Writes the OCI layout vector (vectors/oci-layout-v1.json) from docs/FORMAT.md's "OCI layout of a version", as
implemented in tools/lib/cofferlib.py, not from Coffer. The Swift tests check Coffer's OCIVersionLayout against it."""
import base64
import hashlib
import json
import sys
from pathlib import Path

from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
import cofferlib  # noqa: E402


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


files = [("config/labels.json", b'{"labels": ["a", "b"]}'), ("données/poids.bin", bytes(range(256)) * 4), ("model.safetensors", b"\x00" * 1000)]
entries = []
sealed = {}
for path, plaintext in files:
    # Stand-ins for sealed files: the layout never looks inside them.
    blob = b"\x89CFR\r\n\x1a\n" + hashlib.sha256(plaintext).digest() + path.encode()
    sealed[path] = blob
    entries.append(dict(path=path, size=len(plaintext), sha256=hashlib.sha256(plaintext).hexdigest(),
                        sealed_sha256=hashlib.sha256(blob).hexdigest(), sealed_size=len(blob)))

model, version, created = "Team/Fraud-Detector", "3", "2026-11-30T10:00:00.000Z"
statement = canonical({"_type": "https://in-toto.io/Statement/v1",
                       "predicate": {"model": model, "version": version, "created": created},
                       "predicateType": "https://coffer.dev/attestation/model/v1",
                       "subject": [{"digest": {"sha256": e["sha256"]}, "name": e["path"]} for e in entries]})
key = SigningKey(bytes(range(32)))
pae = b"DSSEv1 28 application/vnd.in-toto+json %d " % len(statement) + statement
envelope = canonical({"payload": base64.b64encode(statement).decode(), "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"keyid": "c0ffee00c0ffee00", "sig": base64.b64encode(key.sign(pae).signature).decode()}]})
bundle = canonical({"dsseEnvelope": {"payload": base64.b64encode(statement).decode(), "payloadType": "application/vnd.in-toto+json",
                                     "signatures": [{"keyid": "", "sig": "MEUCIQ=="}]},
                    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "verificationMaterial": {"publicKey": {"hint": "00" * 32}, "tlogEntries": []}})
version_input = dict(model=model, version=version, digest=hashlib.sha256(statement).hexdigest(), created=created,
                     publisher_key_id="c0ffee00c0ffee00", files=entries, envelope=envelope, bundle=bundle)
documents = cofferlib.oci_version_documents(version_input)
vector = dict(
    input=dict(version_input, envelope=base64.b64encode(envelope).decode(), bundle=base64.b64encode(bundle).decode(),
               sealed={path: base64.b64encode(blob).decode() for path, blob in sealed.items()}),
    output={name: (value.decode() if isinstance(value, bytes) else value) for name, value in documents.items()},
)
json.dump(vector, sys.stdout, indent=1, ensure_ascii=False)
print()
