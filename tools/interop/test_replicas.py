"""Several `coffer serve` replicas over one registry behave as one (docs/FORMAT.md, "Replicas"): an inference session
opened on one replica predicts through another and a revocation on one is honoured by the other; a resumable upload
started on one continues on another; a session's rate bucket is shared; pushes through nginx in front of them never
give two versions one number; a web page signed in on one replica is signed in on the others, and a sign-out on one
ends it on all; afterwards `fsck` and `audit verify` are clean.

The blobs are in docker-registry; the metadata in PostgreSQL when COFFER_PG_URL names a cluster (tools/test starts
one), else in the home's SQLite database, which replicas on one machine can share."""
import hashlib
import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "lib"))
import cofferlib  # noqa: E402


def message(answer):
    """The one-line message of an error answer (Hummingbird's `{"error": {"message": ...}}`)."""
    return answer["error"]["message"] if isinstance(answer, dict) and isinstance(answer.get("error"), dict) else str(answer)


class Replicas:
    def __init__(self, work, registry):
        self.coffer = cofferlib.coffer_binary()
        self.work = work
        self.env = cofferlib.environment(work)
        self.home = work / "home"
        backends = ["--blobs", f"oci+http://{registry}/replicas"]
        if os.environ.get("COFFER_PG_URL"):
            backends += ["--metadata", cofferlib.postgres_database("replicas")]
        for name in ("alice", "bob"):
            cofferlib.keygen(self.coffer, work / name, env=self.env)
        self.check("init", "--home", self.home, "--owner", work / "alice.pub", *backends)
        self.admin = ["--identity", work / "alice.key", "--home", self.home]
        self.check("trust", "add", work / "alice.pub", *self.admin)
        self.check("principal", "add", "bob", work / "bob.pub", "--role", "reader", "--role", "decrypt", "--role", "inference", *self.admin)
        self.check("synth", "--rows", "300", "--features", "3", "--out", work / "data")
        self.check("train", "--config", work / "data" / "recipe.json", "--out", work / "ckpt")
        self.check("push", "rep/model", work / "ckpt", "--alias", "prod", "--recipient", work / "bob.pub", *self.admin)
        (work / "rows.csv").write_text("x0,x1,x2\n0.5,-1.0,0.25\n-0.75,0.1,1.5\n")
        self.rows = [{"x0": 0.5, "x1": -1.0, "x2": 0.25}, {"x0": -0.75, "x1": 0.1, "x2": 1.5}]
        self.expected = json.loads(self.check("predict", "--checkpoint", work / "ckpt", "--input", work / "rows.csv", "--json"))
        token = lambda who, scope: self.check("token", "create", "--principal", who, "--scope", scope, "--ttl", "2h", *self.admin).strip()
        self.tokens = {"infer": token("bob", "infer"), "publish": token("alice", "publish"), "admin": token("alice", "admin")}
        self.servers = []

    def check(self, *args):
        return cofferlib.check(self.coffer, *args, env=self.env)

    def start(self, count, *flags):
        for n in range(count):
            process, base, log = cofferlib.start_server(self.coffer, self.home, self.env, self.work / f"serve-{len(self.servers)}.log", *flags)
            self.servers.append((process, base, log))
        return [base for _, base, _ in self.servers[-count:]]

    def stop(self):
        for process, _, _ in self.servers:
            process.terminate()
            process.wait(timeout=60)
        self.servers = []


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    with cofferlib.oci_registry() as registry:
        r = Replicas(tmp_path_factory.mktemp("replicas"), registry)
        try:
            yield r
        finally:
            r.stop()


def test_a_session_opened_on_one_replica_predicts_on_another_and_revocation_reaches_it(replicas):
    a, b = replicas.start(2, "--predict-rate", "1000", "--predict-burst", "1000")
    infer = replicas.tokens["infer"]
    status, opened, _ = cofferlib.http_json(a, "POST", "/v1/sessions", infer, {"ref": "rep/model@prod", "ttl_seconds": 600})
    assert status == 201, opened
    session, secret = opened["id"], opened["token"]
    path = f"/v1/sessions/{session}/predict"
    status, answer, _ = cofferlib.http_json(b, "POST", path, infer, {"rows": replicas.rows})
    assert status == 404 and "send its token in Coffer-Session-Token" in message(answer)
    for base in (b, a, b):
        status, answer, _ = cofferlib.http_json(base, "POST", path, infer, {"rows": replicas.rows}, headers={"Coffer-Session-Token": secret})
        assert status == 200, answer
        assert answer["predictions"] == replicas.expected
    # Someone else's token for the session id is not enough: the token must be the session's own.
    forged = "cfs_" + os.urandom(32).hex()
    status, answer, _ = cofferlib.http_json(replicas.start(1, "--predict-rate", "1000", "--predict-burst", "1000")[0], "POST", path, infer,
                                            {"rows": replicas.rows}, headers={"Coffer-Session-Token": forged})
    assert status in (403, 404) and "error" in answer
    status, _, _ = cofferlib.http_json(a, "DELETE", f"/v1/sessions/{session}", infer)
    assert status in (200, 204)
    status, answer, _ = cofferlib.http_json(b, "POST", path, infer, {"rows": replicas.rows})
    assert status == 403 and "revoked" in message(answer), answer
    replicas.stop()


def test_a_web_sign_in_on_one_replica_holds_on_another_and_a_sign_out_ends_it_everywhere(replicas):
    """Web sessions are rows of the registry, not one server's memory: no sticky sessions are needed."""
    a, b = replicas.start(2)
    status, html, cookies = cofferlib.web_sign_in(a, replicas.tokens["admin"])
    assert status == 303, html
    session = next(c.split(";")[0] for c in cookies if c.startswith(cofferlib.WEB_SESSION_COOKIE + "="))

    def page(base, path):
        request = urllib.request.Request(base + path, headers={"Cookie": session})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    status, html = page(b, "/tokens")
    assert status == 200 and "Signed in as alice" in html, html
    # A form from replica a's page, posted to replica b (its own origin), with the CSRF token a's page carried.
    csrf = page(a, "/models")[1].split('name="csrf" value="', 1)[1].split('"', 1)[0]
    data = urllib.parse.urlencode({"csrf": csrf}).encode()
    request = urllib.request.Request(b + "/signout", data=data, method="POST", headers={"Cookie": session, "Origin": b})
    try:
        urllib.request.build_opener(NoRedirect).open(request, timeout=30)
    except urllib.error.HTTPError as error:
        assert error.code == 303 and error.headers["Location"] == "/signin", error.read()
    for base in (a, b):
        status, _ = page(base, "/models")
        assert status == 303, "signed out on every replica"
    replicas.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def test_a_rate_bucket_is_shared_by_the_replicas(replicas):
    a, b = replicas.start(2, "--predict-rate", "0.2", "--predict-burst", "3")
    infer = replicas.tokens["infer"]
    status, opened, _ = cofferlib.http_json(a, "POST", "/v1/sessions", infer, {"ref": "rep/model@prod", "ttl_seconds": 600})
    assert status == 201
    path, header = f"/v1/sessions/{opened['id']}/predict", {"Coffer-Session-Token": opened["token"]}
    statuses = [cofferlib.http_json(base, "POST", path, infer, {"rows": replicas.rows}, headers=header)[0] for base in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429], statuses
    replicas.stop()


def test_an_upload_started_on_one_replica_finishes_on_another(replicas):
    a, b = replicas.start(2)
    publish = replicas.tokens["publish"]
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    status, upload, _ = cofferlib.http_json(a, "POST", "/v1/uploads", publish)
    assert status == 201, upload
    uid = upload["id"]
    half = len(data) // 2
    status, _, _ = cofferlib.http_json(a, "PATCH", f"/v1/uploads/{uid}", publish, data[:half],
                                       headers={"Upload-Offset": "0", "Content-Type": "application/octet-stream"})
    assert status in (200, 202, 204)
    status, state, _ = cofferlib.http_json(b, "GET", f"/v1/uploads/{uid}", publish)
    assert status == 200 and state["offset"] == half
    status, answer, _ = cofferlib.http_json(b, "PATCH", f"/v1/uploads/{uid}", publish, data[half + 1:],
                                            headers={"Upload-Offset": str(half + 1), "Content-Type": "application/octet-stream"})
    assert status == 409, answer
    status, _, _ = cofferlib.http_json(b, "PATCH", f"/v1/uploads/{uid}", publish, data[half:],
                                       headers={"Upload-Offset": str(half), "Content-Type": "application/octet-stream"})
    assert status in (200, 202, 204)
    status, answer, _ = cofferlib.http_json(a, "PUT", f"/v1/uploads/{uid}?digest={digest}", publish)
    assert status in (200, 201, 204), answer
    replicas.stop()


def test_pushes_through_nginx_get_distinct_numbers_and_the_registry_stays_whole(replicas):
    bases = replicas.start(3)
    upstreams = [base.split("//", 1)[1] for base in bases]
    failures = []
    pushed = []
    with cofferlib.nginx(upstreams) as front:
        def pusher(n):
            for i in range(3):
                directory = replicas.work / f"push-{n}-{i}"
                directory.mkdir()
                (directory / "w.bin").write_bytes(os.urandom(200_000))
                result = cofferlib.run(replicas.coffer, "push", "rep/raced", directory, "--registry", front, "--token", replicas.tokens["publish"],
                                       "--registry-key", replicas.home / "registry.pub", "--identity", replicas.work / "alice.key", env=replicas.env)
                if result.returncode:
                    failures.append(result.stderr.decode().strip())
                else:
                    pushed.append(result.stdout.decode().split()[1])
        threads = [threading.Thread(target=pusher, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    replicas.stop()
    assert not failures, failures
    assert sorted(pushed) == sorted(f"rep/raced:{n}" for n in range(1, 10)), pushed
    fsck = json.loads(replicas.check("fsck", "--json", "--home", replicas.home))
    assert fsck["clean"], fsck["problems"]
    assert replicas.check("audit", "verify", "--home", replicas.home).startswith("audit log ok:")
