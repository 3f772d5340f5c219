"""docs/FORMAT.md's "OCI layout of a version" against real OCI tools: Debian's docker-registry (distribution 2.8) and
skopeo, and PyPI's oras.

The version is written by cofferlib's implementation of the layout, written from the document; the Swift tests check
Coffer's own writer (OCIVersionLayout) against the same vector, byte for byte, and push, copy and read back versions
with the store itself; the last test drives the `coffer` binary over OCI backends, export and import."""
import base64
import hashlib
import json
import os
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


def test_coffer_on_oci_export_copy_import(tmp_path):
    """The binary end to end: a registry whose blobs are in docker-registry publishes each version as the layout above
    (skopeo reads it); `coffer export` copies a version with a stanza for a second registry, skopeo mirrors it, `coffer
    import` adopts it there and `coffer pull` opens it; oras pulls the same sealed bytes; an import of the vector's
    version, signed by a key nobody trusts, is refused in one line."""
    coffer = cofferlib.coffer_binary()
    env = cofferlib.environment(tmp_path)
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    with cofferlib.oci_registry() as source, cofferlib.oci_registry() as mirror:
        cofferlib.check(coffer, "init", "--home", a, "--blobs", f"oci+http://{source}/coffer-a", env=env)
        cofferlib.check(coffer, "init", "--home", b, env=env)
        cofferlib.keygen(coffer, tmp_path / "alice", env=env)
        for home in (a, b):
            cofferlib.check(coffer, "trust", "add", tmp_path / "alice.pub", "--home", home, env=env)
        model = tmp_path / "model"
        model.mkdir()
        (model / "weights.bin").write_bytes(bytes(range(256)) * 4096)
        (model / "config.json").write_text('{"layers": 2}')
        pushed = cofferlib.check(coffer, "push", "team/fraud", model, "--home", a, "--identity", tmp_path / "alice.key", env=env)
        digest = pushed.split("sha256:")[1].split()[0]
        assert not (a / "blobs").exists()

        tag = cofferlib.oci_version_tag("team/fraud", "1")
        manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{source}/coffer-a:{tag}"))
        assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        assert manifest["annotations"]["dev.coffer.statement.digest"] == f"sha256:{digest}"
        shown = json.loads(cofferlib.check(coffer, "show", "team/fraud:1", "--json", "--home", a, env=env))
        assert sorted(layer["digest"] for layer in manifest["layers"]) == sorted(f"sha256:{f['sealed_sha256']}" for f in shown["files"])

        exported = cofferlib.check(coffer, "export", "team/fraud:1", "--to", f"oci+http://{source}/xfer", "--recipient", b / "registry.pub",
                                   "--identity", tmp_path / "alice.key", "--home", a, env=env)
        assert f":{tag}" in exported and "1 blobs sent" not in exported
        manifest_digest = exported.split("manifest sha256:")[1].split(",")[0]
        skopeo("copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{source}/xfer:{tag}", f"docker://{mirror}/xfer:{tag}")
        skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{source}/xfer:sha256-{manifest_digest}", f"docker://{mirror}/xfer:sha256-{manifest_digest}")
        imported = cofferlib.check(coffer, "import", f"oci+http://{mirror}/xfer:{tag}", "--home", b, env=env)
        assert f"imported team/fraud:1 sha256:{digest}" in imported
        cofferlib.check(coffer, "pull", "team/fraud:1", "--identity", b / "registry.key", "--out", out, "--home", b, env=env)
        assert (out / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
        assert "clean" in cofferlib.check(coffer, "fsck", "--home", b, env=env)

        # oras pulls the sealed files by path: the very blobs registry b now holds.
        sealed = tmp_path / "sealed"
        oras.client.OrasClient(hostname=mirror, insecure=True).pull(target=f"{mirror}/xfer:{tag}", outdir=str(sealed))
        for f in shown["files"]:
            data = (sealed / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sealed_sha256"]
            assert (b / "blobs" / "sha256" / f["sealed_sha256"][:2] / f["sealed_sha256"]).read_bytes() == data

        # The vector's version is well formed but signed by a key registry b does not trust.
        version, sealed_vector = vector_version()
        documents = cofferlib.oci_publish(mirror, "vector", version, sealed_vector)
        refused = cofferlib.run(coffer, "import", f"oci+http://{mirror}/vector:{documents['tag']}", "--home", b, env=env)
        message = refused.stderr.decode().strip()
        assert refused.returncode == 1 and "not a trusted signer" in message and "\n" not in message, message


def test_server_survives_an_upload_the_registry_refuses(tmp_path):
    """A PATCH the OCI registry refuses before reading its body (its upload session is gone) answers 409 (the server
    opened a new session: the upload starts again at byte 0), and `coffer serve` goes on: the HTTP client's body sender, left waiting on the request body, used to meet the server's own drain
    of that body inside NIO, which traps (found by the crash campaign, where a killed server leaves stale sessions)."""
    import http.client
    import sqlite3
    import urllib.parse

    coffer = cofferlib.coffer_binary()
    env = cofferlib.environment(tmp_path)
    home = tmp_path / "home"
    cofferlib.keygen(coffer, tmp_path / "alice", env=env)
    with cofferlib.oci_registry() as registry:
        cofferlib.check(coffer, "init", "--home", home, "--owner", tmp_path / "alice.pub", "--blobs", f"oci+http://{registry}/refused",
                        env=env)
        token = cofferlib.check(coffer, "token", "create", "--principal", "alice", "--scope", "publish", "--ttl", "1h", "--home", home,
                                "--identity", tmp_path / "alice.key", env=env).strip()
        process, base, log = cofferlib.start_server(coffer, home, env, tmp_path / "serve.log")
        try:
            host, port = base.removeprefix("http://").split(":")
            for attempt in range(8):
                status, upload, _ = cofferlib.http_json(base, "POST", "/v1/uploads", token=token)
                assert status == 201, upload
                with sqlite3.connect(home / "registry.sqlite") as db:
                    (location,) = db.execute("SELECT location FROM uploads WHERE id = ?", (upload["id"],)).fetchone()
                gone = urllib.parse.urlsplit(location)
                connection = http.client.HTTPConnection(gone.hostname, gone.port)
                connection.request("DELETE", f"{gone.path}?{gone.query}")
                assert connection.getresponse().status == 204
                connection.close()

                size, piece = 32 << 20, bytes(1 << 20)
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                connection.putrequest("PATCH", f"/v1/uploads/{upload['id']}")
                for name, value in (("Authorization", f"Bearer {token}"), ("Upload-Offset", "0"), ("Content-Length", str(size))):
                    connection.putheader(name, value)
                connection.endheaders()
                try:
                    for _ in range(size // len(piece)):
                        connection.send(piece)
                    status = connection.getresponse().status
                except (BrokenPipeError, ConnectionResetError):
                    status = None  # the server answered and closed while the body was still being sent
                connection.close()
                assert status in (409, None), status
                assert process.poll() is None, f"coffer serve died on attempt {attempt}"
                assert cofferlib.http_json(base, "GET", "/v1/uploads/" + upload["id"], token=token)[1]["offset"] == 0
            # The upload goes on in its new session, as the client sends it again.
            body = os.urandom(70_000)
            status, _, _ = cofferlib.http_json(base, "PATCH", "/v1/uploads/" + upload["id"], token=token, body=body,
                                               headers={"Upload-Offset": "0", "Content-Type": "application/octet-stream"})
            assert status == 200
            digest = hashlib.sha256(body).hexdigest()
            status, _, _ = cofferlib.http_json(base, "PUT", f"/v1/uploads/{upload['id']}?digest={digest}", token=token)
            assert status == 201
        finally:
            process.terminate()
            process.wait()
        log.seek(0)
        assert b"Fatal error" not in log.read()


def test_migrate_an_embedded_registry_onto_postgres_and_oci(tmp_path):
    """`coffer migrate --to` with the binary: an embedded registry copied onto PostgreSQL and docker-registry is the
    same registry (fsck clean, audit verified, bob pulls from the copy) and skopeo reads the versions it published;
    bad invocations are one line, leave no destination and change nothing."""
    database = cofferlib.postgres_database("migrate")
    if database is None:
        pytest.skip("COFFER_PG_URL names no PostgreSQL cluster (tools/test starts one)")
    coffer = cofferlib.coffer_binary()
    env = cofferlib.environment(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("alice", "bob"):
        cofferlib.keygen(coffer, tmp_path / name, env=env)
    cofferlib.check(coffer, "init", "--home", a, "--owner", tmp_path / "alice.pub", env=env)
    admin = ["--identity", tmp_path / "alice.key", "--home", a]
    cofferlib.check(coffer, "principal", "add", "bob", tmp_path / "bob.pub", "--role", "reader", "--role", "decrypt", *admin, env=env)
    model = tmp_path / "model"
    model.mkdir()
    for version in (1, 2):
        (model / "weights.bin").write_bytes(bytes([version]) * 70_000)
        cofferlib.check(coffer, "push", "team/fraud", model, "--recipient", tmp_path / "bob.pub", *admin, env=env)
    cofferlib.check(coffer, "alias", "set", "team/fraud@prod", "1", *admin, env=env)

    refused = cofferlib.run(coffer, "migrate", "--home", a, "--to", b, env=env)
    assert refused.returncode == 1 and refused.stderr.decode().strip() == "coffer: migrate --to needs --metadata postgres://...", refused.stderr
    refused = cofferlib.run(coffer, "migrate", "--home", a, "--to", b, "--metadata", "sqlite", env=env)
    message = refused.stderr.decode().strip()
    assert refused.returncode == 1 and "must be a postgres:// URL" in message and "\n" not in message, message
    assert not b.exists()

    with cofferlib.oci_registry() as registry:
        copied = cofferlib.check(coffer, "migrate", "--home", a, "--to", b, "--metadata", database, "--blobs", f"oci+http://{registry}/moved",
                                 env=env)
        assert "2 blobs sent" in copied and "2 versions published" in copied, copied
        assert json.loads((b / "backends.json").read_text())["metadata"] == database
        assert not (b / "registry.sqlite").exists() and not (b / "blobs").exists()
        assert "clean" in cofferlib.check(coffer, "fsck", "--home", b, env=env)
        assert "audit log ok" in cofferlib.check(coffer, "audit", "verify", "--home", b, env=env)
        shown = json.loads(cofferlib.check(coffer, "show", "team/fraud@prod", "--json", "--home", b, env=env))
        assert shown["version"] == "1"
        cofferlib.check(coffer, "pull", "team/fraud:2", "--identity", tmp_path / "bob.key", "--out", tmp_path / "out", "--home", b, env=env)
        assert (tmp_path / "out" / "weights.bin").read_bytes() == bytes([2]) * 70_000
        second = json.loads(cofferlib.check(coffer, "show", "team/fraud:2", "--json", "--home", b, env=env))
        manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                     f"docker://{registry}/moved:{cofferlib.oci_version_tag('team/fraud', '2')}"))
        assert manifest["annotations"]["dev.coffer.statement.digest"] == f"sha256:{second['digest']}"
        assert [layer["digest"] for layer in manifest["layers"]] == [f"sha256:{f['sealed_sha256']}" for f in second["files"]]
        # The source is left as it was, and a second copy into the same database is refused.
        assert "clean" in cofferlib.check(coffer, "fsck", "--home", a, env=dict(env, COFFER_STATE_DIR=str(tmp_path / "fresh-client")))
        again = cofferlib.run(coffer, "migrate", "--home", a, "--to", tmp_path / "c", "--metadata", database, env=env)
        assert again.returncode == 1 and "holds rows already" in again.stderr.decode(), again.stderr
        assert not (tmp_path / "c").exists()
