"""docs/FORMAT.md's "OCI layout of a version" against real OCI tools: Debian's docker-registry (distribution 2.8) and
skopeo, and PyPI's oras.

The version is written by cofferlib's implementation of the layout, written from the document; the Swift tests check
Coffer's own writer (OCIVersionLayout) against the same vector, byte for byte, and push, copy and read back versions
with the store itself. Until `coffer` has OCI backends on its command line (`coffer init --blobs oci+http://...`,
`coffer import oci://...`), these tests cannot drive the binary: see the end of this file for what they will do then."""
import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import oras.client
import pytest
from nacl.signing import SigningKey

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "lib"))
import cofferlib  # noqa: E402

VECTOR = json.loads((HERE / "vectors" / "oci-layout-v1.json").read_text())


def vector_version():
    version = dict(VECTOR["input"])
    version["envelope"] = base64.b64decode(version["envelope"])
    version["bundle"] = base64.b64decode(version["bundle"])
    sealed = {path: base64.b64decode(data) for path, data in version.pop("sealed").items()}
    return version, sealed


def skopeo(*args):
    binary = shutil.which("skopeo")
    if binary is None:
        raise RuntimeError("skopeo not found: apt-get install skopeo")
    result = subprocess.run([binary, *args], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-500:]
    return result.stdout


def test_layout_vector():
    """The layout's documents are a pure function of the version: the vector's outputs follow from its inputs."""
    version, sealed = vector_version()
    for f in version["files"]:
        assert hashlib.sha256(sealed[f["path"]]).hexdigest() == f["sealed_sha256"]
    documents = cofferlib.oci_version_documents(version)
    for name, expected in VECTOR["output"].items():
        value = documents[name]
        assert (value.decode() if isinstance(value, bytes) else value) == expected, name
    assert len(documents["tag"]) <= 128 and documents["tag"].startswith("Team_Fraud-Detector_3-")


def test_tag_scheme_separates_slash_and_case():
    tags = [cofferlib.oci_version_tag(m, v) for m, v in [("team/a-b", "1"), ("team-a/b", "1"), ("Team/a-b", "1"), ("team/a-b", "1.0")]]
    assert len({t.lower() for t in tags}) == len(tags)
    assert cofferlib.oci_version_tag("team/fraud", "3") == "team_fraud_3-66ffc51dc25c0229f73f079ec18b6da4"  # docs/FORMAT.md's example


def test_skopeo_copy_and_oras_pull():
    """Publish as FORMAT.md says, copy the version and its referrers tag to another registry with skopeo, and pull the
    sealed files, the DSSE envelope and the model-signing bundle back with oras, as a mirror or an air-gapped site would."""
    version, sealed = vector_version()
    with cofferlib.oci_registry() as source, cofferlib.oci_registry() as mirror:
        documents = cofferlib.oci_publish(source, "coffer", version, sealed)
        tag, digest = documents["tag"], documents["manifest_digest"]
        assert skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{source}/coffer:{tag}") == documents["manifest"]

        skopeo("copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{source}/coffer:{tag}", f"docker://{mirror}/mirror/coffer:{tag}")
        skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{source}/coffer:sha256-{digest}", f"docker://{mirror}/mirror/coffer:sha256-{digest}")

        client = oras.client.OrasClient(hostname=mirror, insecure=True)
        # The version's manifest kept its digest, so its referrers tag still names it.
        _, copied = cofferlib.oci_get_manifest(mirror, "mirror/coffer", tag, cofferlib.OCI_MANIFEST)
        assert copied == documents["manifest"]
        # oras writes each sealed layer under its org.opencontainers.image.title, the file's path.
        out = Path(cofferlib.tempfile.mkdtemp(prefix="coffer-oras-"))
        try:
            pulled = client.pull(target=f"{mirror}/mirror/coffer:{tag}", outdir=str(out))
            assert sorted(Path(p).relative_to(out).as_posix() for p in pulled) == sorted(sealed)
            for path, data in sealed.items():
                assert (out / path).read_bytes() == data

            # The referrers, found through the tag schema (distribution 2.8 has no referrers API). skopeo rewrote the
            # index without artifactType, so each listed manifest's own artifactType says which is which.
            index = client.get_manifest(f"{mirror}/mirror/coffer:sha256-{digest}", allowed_media_type=[cofferlib.OCI_INDEX])
            found = {}
            for entry in index["manifests"]:
                manifest = client.get_manifest(f"{mirror}/mirror/coffer@{entry['digest']}")
                assert manifest["subject"]["digest"] == f"sha256:{digest}"
                files = client.pull(target=f"{mirror}/mirror/coffer@{entry['digest']}", outdir=str(out / entry["digest"].replace(":", "-")))
                assert len(files) == 1
                found[manifest["artifactType"]] = Path(files[0]).read_bytes()
        finally:
            shutil.rmtree(out, ignore_errors=True)

        assert found["application/vnd.dsse.envelope.v1+json"] == version["envelope"]
        assert found["application/vnd.dev.sigstore.bundle.v0.3+json"] == version["bundle"]
        # What an importer checks first: the envelope's statement is the version's, and its signature verifies.
        envelope = json.loads(found["application/vnd.dsse.envelope.v1+json"])
        statement = base64.b64decode(envelope["payload"])
        assert hashlib.sha256(statement).hexdigest() == version["digest"]
        pae = b"DSSEv1 %d %s %d " % (len(envelope["payloadType"]), envelope["payloadType"].encode(), len(statement)) + statement
        SigningKey(bytes(range(32))).verify_key.verify(pae, base64.b64decode(envelope["signatures"][0]["sig"]))


def test_registry_refuses_a_wrong_digest():
    """What Coffer's store relies on to refuse a swapped upload: the registry checks `?digest=` itself."""
    with cofferlib.oci_registry() as registry:
        response, _ = cofferlib._oci_request(registry, "POST", "/v2/coffer/blobs/uploads/", headers={"Content-Length": "0"})
        location = response.getheader("Location").split("://", 1)[1].split("/", 1)[1]
        wrong = hashlib.sha256(b"other").hexdigest()
        response, body = cofferlib._oci_request(registry, "PUT", f"/{location}&digest=sha256:{wrong}", body=b"bytes",
                                                headers={"Content-Type": "application/octet-stream", "Content-Length": "5"})
        assert response.status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"


# Once the CLI is wired (issue 16), the same checks run on versions coffer itself pushed and imports:
#   coffer init --home H --blobs oci+http://A/coffer ; coffer push team/fraud ... (the store publishes the manifest)
#   skopeo inspect --raw docker://A/coffer:$(tag) == the manifest cofferlib.oci_version_documents derives from `coffer show --json`
#   skopeo copy (as above) to B, then coffer import oci+http://B/mirror/coffer:TAG --trust alice.pub into another home,
#   and coffer pull / verify there; and coffer import of the version cofferlib.oci_publish wrote (signed by the vector's
#   key), which must be refused as untrusted unless that key is trusted.
