"""`coffer serve` as a real process on a loopback port, driven over HTTP with Python's urllib: bearer tokens,
metadata, ciphertext downloads with Range (checked against the blob on disk), an inference session, and a
graceful shutdown on SIGTERM with no token in any log line."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from test_interop import COFFER, ENV, coffer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
import cofferlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent


OPENAPI = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
SEEN = []  # (method, path template, status) of every call, checked against docs/openapi.yaml


def template(path):
    path = path.split("?")[0]
    parts = path.split("/")
    if path.startswith("/v1/blobs/"):
        return "/v1/blobs/{digest}"
    if path.startswith("/v1/budgets/"):
        return "/v1/budgets/{dataset}"
    if path.startswith("/v1/sessions/") and path.endswith("/predict"):
        return "/v1/sessions/{id}/predict"
    if path.startswith("/v1/sessions/"):
        return "/v1/sessions/{id}"
    return "/".join(parts)


def call(url, token=None, method="GET", body=None, headers=None):
    status, response_headers, data = _call(url, token, method, body, headers)
    SEEN.append((method.lower(), template("/" + url.split("/", 3)[3]), status))
    return status, response_headers, data


def _call(url, token=None, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def owned_registry(tmp_path, *others):
    """A registry owned (and trusted as a publisher) by alice, with keys for `others` too: (home, alice's admin args)."""
    home = tmp_path / "home"
    for name in ("alice", *others):
        coffer("keygen", "--out", tmp_path / name)
    coffer("init", "--home", home, "--owner", tmp_path / "alice.pub")
    admin = ["--identity", tmp_path / "alice.key", "--home", home]
    coffer("trust", "add", tmp_path / "alice.pub", *admin)
    return home, admin


def test_serve_end_to_end(tmp_path):
    home, admin = owned_registry(tmp_path, "bob")
    coffer("principal", "add", "bob", tmp_path / "bob.pub", "--role", "reader", "--role", "decrypt", "--role", "inference", *admin)
    coffer("synth", "--rows", "300", "--features", "3", "--out", tmp_path / "data")
    coffer("train", "--config", tmp_path / "data" / "recipe.json", "--out", tmp_path / "ckpt")
    coffer("push", "m/risk", tmp_path / "ckpt", "--alias", "prod", "--recipient", tmp_path / "bob.pub", *admin)
    read = coffer("token", "create", "--principal", "bob", "--scope", "read", "--ttl", "1h", *admin).stdout.decode().strip()
    infer = coffer("token", "create", "--principal", "bob", "--scope", "infer", "--ttl", "1h", *admin).stdout.decode().strip()
    assert read.startswith("cft_") and len(read) == 68

    port = cofferlib.free_port()
    # The server's log goes to a file: a pipe read only at the end fills up (64 KiB) and blocks its logger.
    log_file = open(tmp_path / "serve.log", "w+b")
    server = subprocess.Popen([COFFER, "serve", "--home", home, "--listen", f"127.0.0.1:{port}"], env=ENV, stdout=log_file, stderr=log_file)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if call(f"{base}/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert call(f"{base}/v1/versions")[0] == 401
        assert call(f"{base}/v1/versions", token="cft_" + "1" * 64)[0] == 401
        # The signed ledger and its head, which remote clients replay and check themselves.
        status, _, body = call(f"{base}/v1/ledger?after=0", token=read)
        assert status == 200 and [r["seq"] for r in json.loads(body)["records"]][:2] == [1, 2]
        assert call(f"{base}/v1/ledger?limit=0", token=read)[0] == 400
        status, _, body = call(f"{base}/v1/ledger/head", token=read)
        assert status == 200 and json.loads(body)["payloadType"] == "application/vnd.coffer.head.v1+json"
        status, _, body = call(f"{base}/v1/versions?model=m/risk", token=read)
        assert status == 200 and json.loads(body)[0]["version"] == "1"
        shown = json.loads(call(f"{base}/v1/version?ref=m/risk@prod", token=read)[2])
        blob = next(f for f in shown["files"] if f["path"] == "model.safetensors")["sealed_sha256"]
        on_disk = (home / "blobs" / "sha256" / blob[:2] / blob).read_bytes()
        status, headers, body = call(f"{base}/v1/blobs/{blob}", token=read)
        assert status == 200 and body == on_disk
        status, headers, body = call(f"{base}/v1/blobs/{blob}", token=read, headers={"Range": "bytes=64-4159"})
        assert status == 206 and body == on_disk[64:4160] and headers["Content-Range"] == f"bytes 64-4159/{len(on_disk)}"

        status, _, body = call(f"{base}/v1/sessions", token=read, method="POST", body={"ref": "m/risk@prod", "ttl_seconds": 60})
        assert status == 403
        status, _, body = call(f"{base}/v1/sessions", token=infer, method="POST", body={"ref": "m/risk@prod", "ttl_seconds": 60, "max_uses": 5})
        assert status == 201, body
        session = json.loads(body)["id"]
        rows = {"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.0}]}
        status, _, body = call(f"{base}/v1/sessions/{session}/predict", token=infer, method="POST", body=rows)
        assert status == 200, body
        prediction = json.loads(body)["predictions"][0]
        local = json.loads(coffer("predict", "--checkpoint", tmp_path / "ckpt", "--input", write_rows(tmp_path, rows), "--json").stdout)[0]
        assert prediction == local, "the server's in-memory model predicts as the plaintext checkpoint"
        # The remote CLI: the server is trusted for nothing; signatures are checked against the client's --trust.
        remote = ["--registry", base, "--token", read, "--identity", tmp_path / "bob.key"]
        pulled = coffer("pull", "m/risk@prod", *remote, "--trust", tmp_path / "alice.pub", "--out", tmp_path / "pulled")
        assert b"pulled m/risk:1" in pulled.stdout
        for name in ("model.safetensors", "privacy.json"):
            assert (tmp_path / "pulled" / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes()
        assert (tmp_path / "pulled" / "model.sig").exists()
        untrusted = coffer("pull", "m/risk@prod", *remote, "--trust", tmp_path / "bob.pub", "--out", tmp_path / "nope", check=False)
        assert untrusted.returncode == 1 and b"not a trusted signer" in untrusted.stderr
        SEEN.append(("get", "/v1/package", 200))
        listed = json.loads(coffer("list", "m/risk", "--registry", base, "--token", read, "--json").stdout)
        assert [v["version"] for v in listed] == ["1"] and listed[0]["model"] == "m/risk"
        shown = coffer("show", "m/risk@prod", "--registry", base, "--token", read).stdout.decode()
        assert "files:" in shown and "model.safetensors" in shown and "digest:" in shown
        verified = coffer("verify", "m/risk@prod", "--registry", base, "--token", read, "--trust", tmp_path / "alice.pub").stdout.decode()
        assert verified.startswith("ok m/risk:1") and "checked here against the ledger you replayed: reference, signature and blobs verified" in verified
        admin_token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
        remote_audit = json.loads(coffer("audit", "--registry", base, "--token", admin_token, "--json").stdout)
        assert any(e["action"] == "push" for e in remote_audit)
        coffer("budget", "set", "census", "--epsilon", "4", "--delta", "1e-5", "--registry", base, "--token", admin_token)
        refused_budget = coffer("budget", "set", "census", "--epsilon", "9", "--delta", "1e-5", "--registry", base, "--token", read, check=False)
        assert refused_budget.returncode == 1 and b"answered 403" in refused_budget.stderr
        SEEN.extend([("put", "/v1/budgets/{dataset}", 200), ("put", "/v1/budgets/{dataset}", 403)])
        budget = json.loads(coffer("budget", "show", "census", "--registry", base, "--token", read, "--json").stdout)
        assert budget["epsilon"] == 4 and budget["spent"] == 0
        # A dataset id with a slash travels as one path segment; one with a space is refused in one line.
        coffer("budget", "set", "hf:org/name@v2", "--epsilon", "2", "--delta", "1e-6", "--registry", base, "--token", admin_token)
        namespaced = json.loads(coffer("budget", "show", "hf:org/name@v2", "--registry", base, "--token", read, "--json").stdout)
        assert namespaced["dataset"] == "hf:org/name@v2" and namespaced["epsilon"] == 2
        spaced = coffer("budget", "show", "my data", "--registry", base, "--token", read, check=False)
        assert spaced.returncode == 1 and b"answered 400" in spaced.stderr and b"invalid dataset id 'my data'" in spaced.stderr
        missing = coffer("budget", "show", "nothing", "--registry", base, "--token", read, check=False)
        assert missing.returncode == 1 and b"answered 404" in missing.stderr and b"has no budget" in missing.stderr
        refused = coffer("audit", "--registry", base, "--token", read, check=False)
        assert refused.returncode == 1 and b"answered 403" in refused.stderr
        denied = coffer("list", "--registry", base, "--token", "cft_" + "2" * 64, check=False)
        assert denied.returncode == 1 and b"answered 401" in denied.stderr and denied.stderr.count(b"\n") == 1
        # A blob altered on the server is caught by the client, and nothing is written.
        blob_path = home / "blobs" / "sha256" / blob[:2] / blob
        os.chmod(blob_path, 0o600)
        data = bytearray(blob_path.read_bytes())
        data[5000] ^= 1
        blob_path.write_bytes(bytes(data))
        tampered = coffer("pull", "m/risk@prod", *remote, "--trust", tmp_path / "alice.pub", "--out", tmp_path / "tampered", check=False)
        assert tampered.returncode == 1 and b"integrity check failed" in tampered.stderr, tampered.stderr
        assert not (tmp_path / "tampered" / "model.safetensors").exists()
        caught = coffer("verify", "m/risk@prod", "--registry", base, "--token", read, "--trust", tmp_path / "alice.pub", check=False)
        assert caught.returncode == 1 and b"does not match its signed SHA-256" in caught.stderr
        metrics = call(f"{base}/metrics")[2].decode()
        assert "coffer_http_requests_total" in metrics and "coffer_blob_bytes_sent_total" in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    log = (tmp_path / "serve.log").read_text()
    assert server.returncode == 0, log[-2000:]
    assert "request" in log and read not in log and infer not in log, "no token in any log line"
    audit = json.loads(coffer("audit", "--json", "--home", home).stdout)
    assert any(e["action"] == "authenticate" and e["outcome"] == "refused" for e in audit)
    assert any(e["action"] == "pull" and e["principal"] == "bob" and "wrapped key" in e["reason"] for e in audit), "a remote pull is audited"
    signed = coffer("audit", "verify", "--home", home).stdout.decode()
    assert signed.endswith(" 0 not yet signed\n"), f"the server signs the audit head at shutdown: {signed}"
    assert_documented()
    assert len({(m, p) for m, p, _ in SEEN}) >= 7


def assert_documented():
    """Conformance with docs/openapi.yaml: every route called and every status it answered is documented there."""
    assert OPENAPI["openapi"] == "3.1.0"
    for method, path, status in SEEN:
        operation = OPENAPI["paths"].get(path, {}).get(method)
        assert operation is not None, f"{method.upper()} {path} is not in docs/openapi.yaml"
        assert str(status) in operation["responses"], f"{method.upper()} {path} answered {status}, which docs/openapi.yaml does not list"


def test_remote_alias_sessions_infer_and_predict_limits(tmp_path):
    """alias, session and infer through --registry, and the per-session limits that slow model extraction."""
    home, admin = owned_registry(tmp_path, "bob")
    coffer("principal", "add", "bob", tmp_path / "bob.pub", "--role", "reader", "--role", "inference", *admin)
    coffer("synth", "--rows", "300", "--features", "3", "--out", tmp_path / "data")
    coffer("train", "--config", tmp_path / "data" / "recipe.json", "--out", tmp_path / "ckpt")
    coffer("push", "m/risk", tmp_path / "ckpt", "--alias", "prod", *admin)
    coffer("push", "m/risk", tmp_path / "ckpt", *admin)
    token = {scope: coffer("token", "create", "--principal", principal, "--scope", scope, "--ttl", "1h", *admin).stdout.decode().strip()
             for principal, scope in (("alice", "admin"), ("bob", "infer"), ("bob", "read"))}
    port = cofferlib.free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(home, port, "--predict-rate", "0.2", "--predict-burst", "3", "--max-predict-rows", "3")

    def remote(*argv, scope, check=True):
        return coffer(*argv, "--registry", base, "--token", token[scope], check=check)

    try:
        assert remote("alias", "set", "m/risk@prod", "2", scope="admin").stdout == b"m/risk@prod -> 2\n"
        assert json.loads(coffer("show", "m/risk@prod", "--json", "--home", home).stdout)["version"] == "2"
        refused = remote("alias", "set", "m/risk@prod", "1", scope="infer", check=False)
        assert refused.returncode == 1 and b"answered 403" in refused.stderr and b"does not allow the publisher role" in refused.stderr
        missing = remote("alias", "set", "m/risk@prod", "9", scope="admin", check=False)
        assert missing.returncode == 1 and b"answered 404" in missing.stderr
        remote("alias", "set", "m/risk@staging", "1", scope="admin")
        remote("alias", "rm", "m/risk@staging", scope="admin")
        gone = remote("alias", "rm", "m/risk@staging", scope="admin", check=False)
        assert gone.returncode == 1 and b"answered 404" in gone.stderr
        for method, status in (("put", 200), ("put", 403), ("put", 404), ("delete", 204), ("delete", 404)):
            SEEN.append((method, "/v1/alias", status))

        opened = remote("session", "open", "m/risk@prod", "--ttl", "5m", "--max-uses", "10", scope="infer")
        session = opened.stdout.decode().strip()
        assert b"held by the server" in opened.stderr and not session.startswith("cfs_")
        rows = {"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.0}, {"x0": -1.0, "x1": 0.3, "x2": 0.0}]}
        csv = write_rows(tmp_path, rows)
        predicted = json.loads(remote("infer", "--session", session, "--input", csv, "--json", scope="infer").stdout)
        local = json.loads(coffer("predict", "--checkpoint", tmp_path / "ckpt", "--input", csv, "--json").stdout)
        assert predicted == local, "the remote session predicts as the plaintext checkpoint"
        text = remote("infer", "--session", session, "--input", csv, scope="infer").stdout.decode()
        assert text.startswith("row 1: ") and "row 2: " in text
        raw = remote("infer", "--session", session, "--raw", scope="infer", check=False)
        assert raw.returncode == 1 and b"a server never releases plaintext" in raw.stderr

        # Limits: at most 3 rows per request (413), and a burst of 3 requests refilled at 0.2/s (429).
        status, _, body = call(f"{base}/v1/sessions/{session}/predict", token=token["infer"], method="POST",
                               body={"rows": rows["rows"] * 2})
        assert status == 413 and b"at most 3" in body
        statuses = [call(f"{base}/v1/sessions/{session}/predict", token=token["infer"], method="POST", body=rows)[:2] for _ in range(3)]
        assert statuses[0][0] == 200 and statuses[-1][0] == 429, statuses
        assert int(statuses[-1][1]["Retry-After"]) >= 1
        limited = remote("infer", "--session", session, "--input", csv, scope="infer", check=False)
        assert limited.returncode == 1 and b"answered 429" in limited.stderr and b"predictions per second" in limited.stderr

        listed = json.loads(remote("session", "list", "--json", scope="read").stdout)
        assert [s["id"] for s in listed] == [session] and listed[0]["uses"] == 6, "a use per row: three predictions of two rows"
        status, _, body = call(f"{base}/v1/sessions", token=token["admin"])
        assert status == 200 and [s["id"] for s in json.loads(body)] == [session]

        # The session token, shown once by the server, kept in a private file and sent with predictions (any server of
        # the registry answers with it); a file that exists is never overwritten.
        token_file = tmp_path / "session.token"
        second = remote("session", "open", "m/risk@prod", "--ttl", "5m", "--save-token", token_file, scope="infer").stdout.decode().strip()
        assert token_file.read_bytes().startswith(b"cfs_") and len(token_file.read_bytes()) == 68
        assert token_file.stat().st_mode & 0o777 == 0o600
        with_token = remote("infer", "--session", second, "--session-token-file", token_file, "--input", csv, "--json", scope="infer")
        assert json.loads(with_token.stdout) == local
        again = remote("session", "open", "m/risk@prod", "--ttl", "5m", "--save-token", token_file, scope="infer", check=False)
        assert again.returncode == 1 and again.stderr.count(b"\n") == 1 and b"file exists" in again.stderr.lower(), again.stderr
        remote("session", "revoke", second, scope="infer")
        remote("session", "revoke", session, scope="infer")
        revoked = remote("infer", "--session", session, "--input", csv, scope="infer", check=False)
        assert revoked.returncode == 1 and (b"was revoked" in revoked.stderr or b"not open on this server" in revoked.stderr), revoked.stderr
        # The server counts refusals and writes them every few seconds, as one entry per reason with its count.
        for _ in range(150):
            audit = json.loads(coffer("audit", "--json", "--home", home).stdout)
            reasons = [e["reason"] for e in audit if e["action"] == "predict" and e["outcome"] == "refused"]
            if any("rate limit" in r for r in reasons) and any("rows" in r for r in reasons):
                break
            time.sleep(0.2)
        assert any("rate limit" in r for r in reasons) and any("rows" in r for r in reasons), reasons
        assert_documented()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def write_rows(tmp_path, rows):
    path = tmp_path / "rows.csv"
    columns = sorted(rows["rows"][0])
    path.write_text(",".join(columns) + "\n" + "\n".join(",".join(str(r[c]) for c in columns) for r in rows["rows"]) + "\n")
    return path


def serve(home, port, *extra):
    """`coffer serve` on `port`, once it answers /healthz (cofferlib.start_server); its log beside the registry."""
    return cofferlib.start_server(COFFER, home, ENV, Path(home).parent / f"serve-{port}.log", *extra, port=port)[0]


def test_push_over_http_resumes_after_the_client_is_killed(tmp_path):
    home, admin = owned_registry(tmp_path)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    (tmp_path / "model").mkdir()
    payload = os.urandom(192 << 20)
    (tmp_path / "model" / "weights.bin").write_bytes(payload)
    (tmp_path / "model" / "config.json").write_text('{"layers": 4}')
    port = cofferlib.free_port()
    server = serve(home, port)
    env = dict(ENV, COFFER_OUTBOX=str(tmp_path / "outbox"))
    push = [COFFER, "push", "big/model", tmp_path / "model", "--registry", f"http://127.0.0.1:{port}", "--token", token,
            "--registry-key", home / "registry.pub", "--identity", tmp_path / "alice.key", "--alias", "prod"]
    try:
        # Kill the client once part of the weights have reached the server.
        client = subprocess.Popen(push, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and client.poll() is None:
            sizes = [p.stat().st_size for p in (home / "tmp").glob("upload-*")]
            if any(8 << 20 <= size < len(payload) for size in sizes):
                client.kill()
                break
            time.sleep(0.005)
        client.wait()
        assert client.returncode == -9, "the client was killed mid-upload"
        assert json.loads(coffer("list", "--json", "--home", home).stdout) == [], "nothing is committed yet"

        resumed = subprocess.run(push, env=env, capture_output=True)
        assert resumed.returncode == 0, resumed.stderr
        assert b"resuming the upload of blob" in resumed.stderr and b"pushed big/model:1" in resumed.stdout
        assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())

        # The server never saw plaintext; a remote pull checks everything and gets the same bytes back.
        assert not any(payload[:4096] in p.read_bytes() for p in (home / "blobs").rglob("*") if p.is_file())
        coffer("pull", "big/model@prod", "--registry", f"http://127.0.0.1:{port}", "--token", token, "--trust", tmp_path / "alice.pub",
               "--identity", tmp_path / "alice.key", "--out", tmp_path / "pulled")
        assert (tmp_path / "pulled" / "weights.bin").read_bytes() == payload
        assert sorted(os.listdir(tmp_path / "pulled")) == ["config.json", "model.sig", "weights.bin"], "the ciphertext streamed: no scratch"
        assert json.loads(coffer("fsck", "--json", "--home", home).stdout)["clean"]

        # The server dies mid-download: the client says which download failed, in one line, and places nothing. The
        # pull stages into a hidden folder beside its new output directory, which appears only when everything passed.
        pull = subprocess.Popen([COFFER, "pull", "big/model@prod", "--registry", f"http://127.0.0.1:{port}", "--token", token,
                                 "--trust", tmp_path / "alice.pub", "--identity", tmp_path / "alice.key", "--out", tmp_path / "cut"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and pull.poll() is None:
            if any(p.stat().st_size >= 16 << 20 for p in tmp_path.glob(".coffer-pull-*/**/*") if p.is_file()):
                server.kill()
                break
            time.sleep(0.002)
        _, stderr = pull.communicate(timeout=120)
        assert server.poll() is not None, "the server was killed mid-download"
        assert pull.returncode == 1 and stderr.count(b"\n") == 1 and b"/v1/blobs/" in stderr and b"tampered" not in stderr, stderr
        assert not (tmp_path / "cut").exists() and not list(tmp_path.glob(".coffer-pull-*")), "nothing of the version is left"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)

    # An upload past the server's limit is refused with 413, and a clear message.
    small = serve(home, port, "--max-upload-size", "100000")
    try:
        refused = subprocess.run([*push[:3], tmp_path / "model", *push[4:-2]], env=dict(env, COFFER_OUTBOX=str(tmp_path / "outbox2")), capture_output=True)
        assert refused.returncode == 1 and b"413" in refused.stderr and b"may not exceed 100000 bytes" in refused.stderr, refused.stderr
    finally:
        small.send_signal(signal.SIGTERM)
        small.communicate(timeout=30)


def test_serve_over_tls_with_a_given_certificate(tmp_path):
    import ssl
    home, admin = owned_registry(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(os.urandom(3 << 20))
    coffer("push", "m", tmp_path / "model", *admin)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    cofferlib.self_signed_certificate(tmp_path)
    port = cofferlib.free_port()
    server = subprocess.Popen([COFFER, "serve", "--home", home, "--listen", f"127.0.0.1:{port}", "--tls-cert", tmp_path / "cert.pem",
                               "--tls-key", tmp_path / "key.pem"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    try:
        status = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as response:
                    status = response.status
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 200
        # The CLI trusts the server's certificate only when told to (--ca-cert), and then pulls over TLS.
        remote = ["--registry", f"https://127.0.0.1:{port}", "--token", token]
        untrusted = coffer("list", *remote, check=False)
        assert untrusted.returncode == 1 and untrusted.stderr.count(b"\n") == 1 and b"cannot reach" in untrusted.stderr, untrusted.stderr
        assert b"m" in coffer("list", *remote, "--ca-cert", tmp_path / "cert.pem").stdout
        coffer("pull", "m", *remote, "--ca-cert", tmp_path / "cert.pem", "--trust", tmp_path / "alice.pub", "--identity", tmp_path / "alice.key",
               "--out", tmp_path / "pulled")
        assert (tmp_path / "pulled" / "weights.bin").read_bytes() == (tmp_path / "model" / "weights.bin").read_bytes()
        # Plain HTTP to a TLS port gets nowhere.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert False, "plain HTTP was answered"
        except (urllib.error.URLError, ConnectionError, http_client_errors()):
            pass
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    bad = coffer("serve", "--home", home, "--listen", "127.0.0.1:1", "--tls-cert", tmp_path / "cert.pem", check=False)
    assert bad.returncode == 1 and b"--tls-cert and --tls-key go together" in bad.stderr
    bad = coffer("serve", "--home", home, "--listen", "0.0.0.0:8443", check=False)
    assert bad.returncode == 1 and b"--insecure" in bad.stderr


def http_client_errors():
    import http.client
    return http.client.HTTPException


def test_a_registry_url_that_is_not_a_coffer_server_fails_in_one_line(tmp_path):
    import http.server
    import threading
    # Something that answers HTML, and something that does not speak HTTP at all.
    html = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=html.serve_forever, daemon=True).start()
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()

    def answer_garbage():
        connection, _ = garbage.accept()
        connection.recv(4096)
        connection.sendall(b"garbage garbage\r\n\r\n")
        connection.close()
    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        for url, expected in ((f"http://127.0.0.1:{html.server_address[1]}", b"answered 404"),
                              (f"http://127.0.0.1:{garbage.getsockname()[1]}", b"is not HTTP"),
                              (f"http://127.0.0.1:{cofferlib.free_port()}", b"connection refused")):
            result = coffer("list", "--registry", url, "--token", "cft_" + "0" * 64, check=False)
            assert result.returncode == 1 and result.stderr.count(b"\n") == 1 and expected in result.stderr, result.stderr
        # A URL the client cannot use, and a CA file that is not one, are refused before any connection.
        for extra, expected in ((["--registry", "ftp://127.0.0.1/"], b"must be an http:// or https:// URL"),
                                (["--registry", "https://127.0.0.1:1", "--ca-cert", tmp_path / "none.pem"], b"is not a readable PEM certificate file")):
            result = coffer("list", *extra, "--token", "cft_" + "0" * 64, check=False)
            assert result.returncode == 1 and result.stderr.count(b"\n") == 1 and expected in result.stderr, result.stderr
    finally:
        html.shutdown()
        garbage.close()


def test_the_outbox_is_private_and_resumes_only_this_push(tmp_path):
    """A push's outbox lives in the user's own cache and is refused when others may write it; a prepared push left
    there is resumed only if the inputs still hold what was sealed (issue 15, finding 15)."""
    home, admin = owned_registry(tmp_path)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    (tmp_path / "model").mkdir()
    weights = tmp_path / "model" / "weights.bin"
    weights.write_bytes(os.urandom(96 << 20))
    port = cofferlib.free_port()
    server = serve(home, port)
    shared = tmp_path / "shared-outbox"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    push = [COFFER, "push", "m", tmp_path / "model", "--registry", f"http://127.0.0.1:{port}", "--token", token,
            "--registry-key", home / "registry.pub", "--identity", tmp_path / "alice.key"]
    try:
        refused = subprocess.run(push, env=dict(ENV, COFFER_OUTBOX=str(shared)), capture_output=True)
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1 and b"is open to other users" in refused.stderr, refused.stderr
        env = dict(ENV, COFFER_OUTBOX=str(tmp_path / "outbox"))
        client = subprocess.Popen(push, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and client.poll() is None:
            if any((4 << 20) <= p.stat().st_size for p in (home / "tmp").glob("upload-*")):
                client.kill()
                break
            time.sleep(0.005)
        client.wait()
        assert client.returncode == -9
        # Other content, same size and time: the outbox's name is the same, its prepared push is not this one's.
        stat = weights.stat()
        replacement = os.urandom(stat.st_size)
        weights.write_bytes(replacement)
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        resumed = subprocess.run(push, env=env, capture_output=True)
        assert resumed.returncode == 0, resumed.stderr
        assert b"holds another push (weights.bin changed since it was sealed): preparing anew" in resumed.stderr, resumed.stderr
        coffer("pull", "m:1", "--registry", f"http://127.0.0.1:{port}", "--token", token, "--identity", tmp_path / "alice.key",
               "--out", tmp_path / "pulled")
        assert (tmp_path / "pulled" / "weights.bin").read_bytes() == replacement
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)



def test_curl_uploads_without_waiting_for_100_continue(tmp_path):
    """curl sends `Expect: 100-continue` with a body over 1 MiB and waits a second for the interim answer before
    sending it: the server asks for the body when the route reads it, so curl never waits out its timer."""
    home, admin = owned_registry(tmp_path)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    body = tmp_path / "part.bin"
    body.write_bytes(os.urandom(2_000_000))
    port = cofferlib.free_port()
    server = serve(home, port)
    try:
        status, _, created = call(f"http://127.0.0.1:{port}/v1/uploads", token, "POST")
        assert status == 201, created
        upload = json.loads(created)["id"]
        curl = subprocess.run(["curl", "-sv", "-X", "PATCH", "-H", f"Authorization: Bearer {token}", "-H", "Upload-Offset: 0",
                               "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{body}",
                               f"http://127.0.0.1:{port}/v1/uploads/{upload}"], capture_output=True, timeout=60)
        said = curl.stderr.decode(errors="replace")
        assert curl.returncode == 0, said
        assert "> Expect: 100-continue" in said and "< HTTP/1.1 100 Continue" in said, said
        assert "Done waiting for 100-continue" not in said, said
        assert json.loads(curl.stdout)["offset"] == 2_000_000, curl.stdout
        # Refused before its body is read (no such upload): the final answer alone, and curl sends no body.
        curl = subprocess.run(["curl", "-sv", "-X", "PATCH", "-H", f"Authorization: Bearer {token}", "-H", "Upload-Offset: 0",
                               "--data-binary", f"@{body}", f"http://127.0.0.1:{port}/v1/uploads/{'0' * 32}"],
                              capture_output=True, timeout=60)
        said = curl.stderr.decode(errors="replace")
        assert "< HTTP/1.1 404" in said and "100 Continue" not in said, said
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_http_client_gets_the_refusal_of_a_body_it_sends_whole(tmp_path):
    """Python's http.client sends the whole body before it reads: refused early (401) while still sending, it must still
    get the answer. The server drains the rest at the body's rate for up to 3 x --client-timeout (here 2.5 s of body
    at --client-timeout 1: cut at the head's deadline, the client had a broken pipe)."""
    import http.client
    home, _ = owned_registry(tmp_path)
    port = cofferlib.free_port()
    server = serve(home, port, "--client-timeout", "1")
    try:
        def trickle():
            for _ in range(10):  # 10 x 64 KiB, 0.25 s apart: 256 KiB/s for 2.5 s
                yield b"a" * 65536
                time.sleep(0.25)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("PATCH", f"/v1/uploads/{'0' * 32}", body=trickle(),
                           headers={"Authorization": "Bearer cft_unknown", "Upload-Offset": "0", "Content-Length": str(10 * 65536)})
        response = connection.getresponse()
        assert response.status == 401, response.read()
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
