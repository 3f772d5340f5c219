"""Token campaign: every way a bearer token (cft_) or a session token (cfs_) can be wrong is refused, audited, and
releases nothing.

Against a real `coffer serve` on loopback: no token, malformed tokens (mutations of a valid one), unknown
well-formed tokens (random, and one hex digit off a valid one), an expired token, a revoked token replayed on every
route it used to open, wrong scopes, and right scopes on models the principal holds no grant on; a session id
used by another principal and after revocation. Locally, `coffer infer --session` with malformed, unknown,
expired, revoked and exhausted session tokens, and after the principal lost the inference grant.

Plaintext released counts the bytes a refused attempt wrote to stdout plus every refused response that carries a
canary sequence of the model's weights. Tokens are looked up by keyed hash and compared with sodium_memcmp; the
timing check compares the server's answer time for random unknown tokens with that for tokens one digit off a valid
one (a comparison that leaked would answer near-misses measurably slower).
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from cofferlib import start_server  # noqa: E402


class Campaign:
    def __init__(self, coffer, work, rng):
        self.coffer, self.work, self.rng = coffer, work, rng
        self.env = dict(os.environ, COFFER_PASSPHRASE="campaign passphrase")
        self.home = f"{work}/home"
        self.tried = self.detected = self.released = 0
        self.failures = []
        self.canary = b""

    def run(self, *args, check=True):
        result = subprocess.run([self.coffer, *map(str, args)], env=self.env, capture_output=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"coffer {' '.join(map(str, args))}: {result.stderr.decode()}")
        return result

    def token(self, principal, scope, ttl="1h"):
        created = self.run("token", "create", "--principal", principal, "--scope", scope, "--ttl", ttl, *self.admin)
        token_id = re.search(r"token (\S+) for", created.stderr.decode()).group(1)
        return created.stdout.decode().strip(), token_id

    def setup(self):
        w = self.work
        for name in ("alice", "bob", "carol"):
            self.run("keygen", "--out", f"{w}/{name}", "--kdf-ops", "1", "--kdf-memory", "8192")
        self.run("init", "--home", self.home, "--owner", f"{w}/alice.pub")
        self.admin = ["--identity", f"{w}/alice.key", "--home", self.home]
        self.run("trust", "add", f"{w}/alice.pub", *self.admin)
        # bob may read, decrypt and infer on m/ only (and publish p/); carol may read and infer on other/ only.
        for name, namespace, roles in (("bob", "m/", ("reader", "inference", "decrypt")), ("carol", "other/", ("reader", "inference"))):
            self.run("principal", "add", name, f"{w}/{name}.pub", *self.admin)
            for role in roles:
                self.run("grant", name, role, "--on", namespace, *self.admin)
        # A publish token is only minted for a publisher: bob publishes p/ (and so still holds nothing to publish on m/).
        self.run("grant", "bob", "publisher", "--on", "p/", *self.admin)
        self.run("synth", "--rows", "300", "--features", "3", "--out", f"{w}/data")
        self.run("train", "--config", f"{w}/data/recipe.json", "--out", f"{w}/ckpt")
        weights = open(f"{w}/ckpt/model.safetensors", "rb").read()
        header = struct.unpack("<Q", weights[:8])[0]
        self.canary = weights[8 + header:8 + header + 32]
        self.run("push", "m/risk", f"{w}/ckpt", "--alias", "prod", "--recipient", f"{w}/bob.pub", *self.admin)
        self.run("push", "other/x", f"{w}/ckpt", *self.admin)
        with open(f"{w}/rows.csv", "w") as f:
            f.write("x0,x1,x2\n0.5,-0.2,1.0\n")

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def serve(self):
        self.server, self.base, self.log = start_server(self.coffer, self.home, self.env, f"{self.work}/serve.log", "--predict-rate", "1000",
                                                        "--predict-burst", "1000")

    def http(self, method, path, token=None, body=None, authorization="bearer"):
        request = urllib.request.Request(self.base + path, method=method, data=None if body is None else json.dumps(body).encode())
        if authorization == "bearer" and token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        elif authorization is not None and authorization != "bearer":
            request.add_header("Authorization", authorization)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def expect(self, label, status, body, allowed):
        """One attempt: refused with one of `allowed`, a one-line JSON error, and none of the model's bytes."""
        self.tried += 1
        leaked = self.canary in body
        if leaked:
            self.released += len(body)
        one_line = body.count(b"\n") <= 1 and b'"message"' in body
        if status in allowed and one_line and not leaked:
            self.detected += 1
        else:
            self.failures.append(f"{label}: status {status} (expected {allowed}) body {body[:120]!r}")

    def routes(self):
        """Every authenticated route, with a request that the right token would be allowed to make."""
        blob = json.loads(self.http("GET", "/v1/version?ref=m/risk:1", self.tokens["bob-read"])[1])["files"][0]["sealed_sha256"]
        return [
            ("GET", "/v1/versions", None), ("GET", "/v1/version?ref=m/risk:1", None), ("GET", "/v1/verify?ref=m/risk:1", None),
            ("GET", "/v1/package?ref=m/risk:1", None), ("GET", f"/v1/blobs/{blob}", None), ("GET", "/v1/sessions", None),
            ("GET", "/v1/registry", None), ("GET", "/v1/audit", None),
            ("POST", "/v1/sessions", {"ref": "m/risk@prod", "ttl_seconds": 60}), ("POST", "/v1/uploads", None),
        ], blob

    def http_attempts(self, mutations):
        self.tokens = {}
        self.tokens["bob-read"], _ = self.token("bob", "read")
        self.tokens["bob-infer"], _ = self.token("bob", "infer")
        self.tokens["bob-publish"], _ = self.token("bob", "publish")
        self.tokens["carol-read"], _ = self.token("carol", "read")
        self.tokens["carol-infer"], _ = self.token("carol", "infer")
        replayed, replayed_id = self.token("bob", "infer")
        expired, _ = self.token("bob", "read", ttl="1s")
        routes, blob = self.routes()
        valid = self.tokens["bob-read"]

        for method, path, body in routes:
            self.expect(f"no token {method} {path}", *self.http(method, path, body=body), {401})
            self.expect(f"Basic scheme {method} {path}", *self.http(method, path, body=body, authorization="Basic Ym9iOnB3"), {401})
        for i in range(mutations):
            bad = self.mutate(valid)
            method, path, body = self.rng.choice(routes)
            try:
                status, answer = self.http(method, path, bad, body)
            except (ValueError, UnicodeEncodeError, http_client_errors()):
                # The client library refuses to send it at all (a newline or non-Latin-1 in a header): nothing sent.
                self.tried += 1
                self.detected += 1
                continue
            self.expect(f"malformed {bad[:40]!r} {method} {path}", status, answer, {401})
        for _ in range(mutations // 4):
            self.expect("unknown token", *self.http("GET", "/v1/versions", "cft_" + os.urandom(32).hex()), {401})
            digit = self.rng.randrange(4, len(valid))
            near = valid[:digit] + ("0" if valid[digit] != "0" else "1") + valid[digit + 1:]
            self.expect("one digit off", *self.http("GET", "/v1/versions", near), {401})

        # Replay after revocation: the token opens every route it may, then none once revoked.
        session = json.loads(self.http("POST", "/v1/sessions", replayed, {"ref": "m/risk@prod", "ttl_seconds": 600})[1])["id"]
        assert self.http("POST", f"/v1/sessions/{session}/predict", replayed, {"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.0}]})[0] == 200
        self.run("token", "revoke", replayed_id, *self.admin)
        for method, path, body in routes + [("POST", f"/v1/sessions/{session}/predict", {"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.0}]}),
                                            ("DELETE", f"/v1/sessions/{session}", None)]:
            self.expect(f"replayed after revocation {method} {path}", *self.http(method, path, replayed, body), {401})
        time.sleep(1.5)
        for method, path, body in routes:
            self.expect(f"expired {method} {path}", *self.http(method, path, expired, body), {401})

        # Wrong scope: a token can do no more than its scope, whatever its principal's grants.
        wrong_scope = [
            ("bob-read", "POST", "/v1/sessions", {"ref": "m/risk@prod", "ttl_seconds": 60}), ("bob-read", "POST", "/v1/uploads", None),
            ("bob-read", "GET", "/v1/audit", None), ("bob-infer", "POST", "/v1/uploads", None), ("bob-infer", "GET", "/v1/audit", None),
            ("bob-publish", "POST", "/v1/sessions", {"ref": "m/risk@prod", "ttl_seconds": 60}), ("bob-publish", "GET", "/v1/audit", None),
            ("bob-read", "PUT", "/v1/alias?ref=m/risk@prod", {"version": "1"}), ("bob-infer", "DELETE", "/v1/alias?ref=m/risk@prod", None),
        ]
        # Wrong model: the right scope, on a model the principal holds no grant on.
        wrong_model = [
            ("carol-read", "GET", "/v1/version?ref=m/risk:1", None), ("carol-read", "GET", "/v1/verify?ref=m/risk:1", None),
            ("carol-read", "GET", "/v1/package?ref=m/risk:1", None), ("carol-read", "GET", f"/v1/blobs/{blob}", None),
            ("carol-read", "GET", "/v1/versions?model=m/risk", None), ("carol-infer", "POST", "/v1/sessions", {"ref": "m/risk@prod", "ttl_seconds": 60}),
            ("bob-infer", "POST", "/v1/sessions", {"ref": "other/x:1", "ttl_seconds": 60}), ("bob-read", "GET", "/v1/package?ref=other/x:1", None),
            ("bob-publish", "PUT", "/v1/alias?ref=m/risk@prod", {"version": "1"}),
        ]
        for _ in range(max(1, mutations // 50)):
            for who, method, path, body in wrong_scope + wrong_model:
                self.expect(f"{who} {method} {path}", *self.http(method, path, self.tokens[who], body), {403})

        # Someone else's session, and a session after revocation.
        bobs = json.loads(self.http("POST", "/v1/sessions", self.tokens["bob-infer"], {"ref": "m/risk@prod", "ttl_seconds": 600})[1])["id"]
        rows = {"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.0}]}
        self.expect("carol predicts on bob's session", *self.http("POST", f"/v1/sessions/{bobs}/predict", self.tokens["carol-infer"], rows), {403, 404})
        self.expect("carol revokes bob's session", *self.http("DELETE", f"/v1/sessions/{bobs}", self.tokens["carol-infer"]), {404})  # unknown to anyone but its owner and admins
        self.http("DELETE", f"/v1/sessions/{bobs}", self.tokens["bob-infer"])
        self.expect("bob replays a revoked session", *self.http("POST", f"/v1/sessions/{bobs}/predict", self.tokens["bob-infer"], rows), {403})
        self.expect("unknown session id", *self.http("POST", "/v1/sessions/ffffffffffffffff/predict", self.tokens["bob-infer"], rows), {403, 404})
        return valid

    def mutate(self, token):
        kind = self.rng.randrange(12)
        body = token[4:]
        if kind == 0:
            return token[:-1]  # short
        if kind == 1:
            return token + self.rng.choice("0123456789abcdef")  # long
        if kind == 2:
            return token.upper()
        if kind == 3:
            i = self.rng.randrange(4, len(token))
            return token[:i] + self.rng.choice("gxz-_+/ ") + token[i + 1:]
        if kind == 4:
            return self.rng.choice(["cfs_", "CFT_", "cft-", "cft", "", "cft__"]) + body
        if kind == 5:
            # (Leading and trailing blanks are not mutations: HTTP strips them from a header value.)
            i = self.rng.randrange(4, len(token))
            return token[:i] + "\t" + token[i:]
        if kind == 6:
            return token + self.rng.choice(["x", ",", ";", "=="])
        if kind == 7:
            return ""
        if kind == 8:
            return "cft_" + body * self.rng.randrange(2, 200)
        if kind == 9:
            return "cft_" + body[:self.rng.randrange(0, 63)]
        if kind == 10:
            return token[:10] + "\u00e9" + token[11:]
        return "cft_" + bytes(self.rng.randrange(256) for _ in range(32)).hex().upper()

    def timing(self, valid, samples):
        """Median answer time of random unknown tokens against tokens one hex digit off `valid`, interleaved."""
        random_times, near_times = [], []
        for i in range(samples):
            for bucket, token in ((random_times, "cft_" + os.urandom(32).hex()), (near_times, valid[:-1] + ("0" if valid[-1] != "0" else "1"))):
                start = time.perf_counter()
                self.http("GET", "/v1/versions", token)
                bucket.append(time.perf_counter() - start)
        return statistics.median(random_times), statistics.median(near_times)

    # --- local session tokens -------------------------------------------------------------------------------------

    def infer(self, label, token, allowed_message):
        self.tried += 1
        result = self.run("infer", "--session", token, "--input", f"{self.work}/rows.csv", "--home", self.home, check=False)
        self.released += len(result.stdout)
        line = result.stderr.decode().strip()
        if result.returncode != 0 and not result.stdout and "\n" not in line and allowed_message in line:
            self.detected += 1
        else:
            self.failures.append(f"{label}: exit {result.returncode}, stdout {len(result.stdout)} bytes, stderr {line[:160]!r}")

    def open_session(self, *extra):
        result = self.run("session", "open", "m/risk@prod", "--identity", f"{self.work}/bob.key", "--home", self.home, *extra)
        return result.stdout.decode().strip(), re.search(r"session (\S+) on", result.stderr.decode()).group(1)

    def session_attempts(self, mutations):
        valid, _ = self.open_session("--ttl", "1h")
        assert self.run("infer", "--session", valid, "--input", f"{self.work}/rows.csv", "--home", self.home).stdout
        for _ in range(mutations):
            bad = self.mutate("cft_" + valid[4:]).replace("cft", "cfs", 1)
            if bad == valid or "\x00" in bad:
                continue
            self.infer(f"malformed session token {bad[:40]!r}", bad, "session token")
        for _ in range(max(1, mutations // 10)):
            self.infer("unknown session token", "cfs_" + os.urandom(32).hex(), "unknown session token")
        expiring, _ = self.open_session("--ttl", "1s")
        time.sleep(1.5)
        self.infer("expired session", expiring, "expired at")
        revoked, revoked_id = self.open_session("--ttl", "1h")
        self.run("session", "revoke", revoked_id, "--identity", f"{self.work}/bob.key", "--home", self.home)
        self.infer("revoked session", revoked, "was revoked")
        once, _ = self.open_session("--ttl", "1h", "--max-uses", "1")
        self.run("infer", "--session", once, "--input", f"{self.work}/rows.csv", "--home", self.home)
        self.infer("exhausted session", once, "has used all 1 of its uses")
        self.run("revoke", "bob", "inference", "--on", "m/", *self.admin)
        self.infer("principal lost the grant", valid, "no longer holds the inference role")

    def audited_refusals(self):
        audit = json.loads(self.run("audit", "--json", "--home", self.home).stdout)
        return sum(1 for e in audit if e["outcome"] == "refused")


def http_client_errors():
    import http.client
    return http.client.HTTPException


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--mutations", type=int, default=400, help="malformed tokens tried per kind (HTTP and session)")
    parser.add_argument("--timing-samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory() as work:
        campaign = Campaign(args.coffer, work, random.Random(seed))
        campaign.setup()
        campaign.serve()
        try:
            valid = campaign.http_attempts(args.mutations)
            random_median, near_median = campaign.timing(valid, args.timing_samples)
        finally:
            campaign.server.send_signal(signal.SIGTERM)
            campaign.server.wait(timeout=30)
        campaign.log.seek(0)
        log = campaign.log.read().decode()
        leaked_tokens = [t for t in campaign.tokens.values() if t in log]
        campaign.session_attempts(max(10, args.mutations // 4))
        refusals = campaign.audited_refusals()

    print(f"# tools/campaign/tokens: seed {seed}")
    print(f"tried {campaign.tried}  detected {campaign.detected}  plaintext bytes released {campaign.released}")
    print(f"audited refusals {refusals}; tokens in the server log {len(leaked_tokens)}")
    ratio = near_median / random_median
    print(f"answer time, median of {args.timing_samples}: unknown random token {random_median * 1e3:.2f} ms, "
          f"one digit off a valid token {near_median * 1e3:.2f} ms (ratio {ratio:.3f})")
    for failure in campaign.failures[:20]:
        print("FAILED " + failure)
    ok = (campaign.detected == campaign.tried and campaign.released == 0 and not leaked_tokens and "request_id=" in log
          and refusals >= campaign.tried // 2 and 0.67 <= ratio <= 1.5)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
