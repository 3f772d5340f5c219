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

Then grants that carry keys, and inference limits (issue 20), on a registry of its own with its own `coffer serve`:

- Keys follow grants (--grant-steps): three principals, three models in two namespaces; random steps of `share
  MODEL|NS/|* P --pull`, `grant P reader` alone or with `decrypt` (without the registry key: a server wraps a key on
  demand at the first remote pull), `unshare P [MODEL|NS/] [--rekey]` (`revoke decrypt|reader --on '*'` for a `*`
  share: unshare takes no `*`), `principal remove` (re-added by a later share) and pushes of new versions (locally
  and over HTTP). After every step every principal (and the owner) pulls every version locally with its own
  identity, and through the server with its newest bearer token (and a revoked one replayed); the oracle is the
  campaign's own model of the grants. The registry's wrapped-key rows must hold a key for a principal on exactly the
  versions it may decrypt now (those not wrapped yet aside); `unshare` must name the keys it removed and the versions
  to rekey (or re-encrypted, whose old blobs must be gone).
- Limits (--limit-steps): `share inf/risk ivy --infer --ttl D --max-predictions N` with random limits, now and then
  replaced (after `unshare`, or in place over open sessions); ivy opens sessions through the server with random --ttl
  (some beyond D) and --max-uses, with and without --save-token, predicts random row counts (some files missing a
  column), and revokes sessions. No session listed may live longer than its grant's D, nor stay open past the current
  grant's time plus D, nor use more than its max_uses; no more than N rows answered since the grant; a refused or
  failed prediction spends nothing, and every refusal has its audit entry.

Opened what it should not, refused what it should open and unaudited refusals are counted apart; any of them, or a
plaintext byte released, makes the exit status non-zero.
"""
import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from cofferlib import check, environment, keygen, run, start_server, stop_server  # noqa: E402


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


# --- grants that carry keys, and inference limits -------------------------------------------------------------------

def covers(scope, model):
    return scope == "*" or scope == model or (scope.endswith("/") and model.startswith(scope))


def listed(output, label):
    """The references an `unshare` line names (`  LABEL: a:1, b:2; run ...` or `... (every session ...)`), or None when
    the line is absent; `none` is the empty set."""
    match = re.search(rf"^\s*{re.escape(label)}[^:\n]*: (.*)$", output, re.M)
    if match is None:
        return None
    text = re.split(r";| \(", match.group(1))[0].strip()
    return set() if text == "none" else set(text.split(", "))


def instant(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GrantCampaign:
    """Randomized grants and limits against a registry of its own and a real `coffer serve` on loopback.

    The oracle is the campaign's own model of the ledger: which principal holds which role on which scope now, which
    bearer tokens are live, which sessions are open with how many uses. Failures are kept in three lists: `leaks` (opened
    or allowed what it should not: a security failure), `denials` (refused what it should open, or charged what it
    should not: a functional bug) and `unaudited` (refusals without their audit entry)."""

    MODELS = ("ns1/a", "ns1/b", "ns2/c")
    SCOPES = ("ns1/a", "ns1/b", "ns2/c", "ns1/", "ns2/", "*")
    PRINCIPALS = ("bob", "carol", "dave")

    def __init__(self, coffer, work, rng):
        self.coffer, self.work, self.rng = coffer, work, rng
        self.env = environment(work)
        self.home = f"{work}/home"
        self.admin = ["--identity", f"{work}/alice.key", "--home", self.home]
        self.grants = {p: set() for p in self.PRINCIPALS}  # (role, scope)
        self.present = dict.fromkeys(self.PRINCIPALS, True)
        self.tokens = {p: [] for p in self.PRINCIPALS}  # [token, live], newest last
        # Versions a principal may decrypt whose key nothing has wrapped for it yet (a decrypt grant made without the
        # registry's key): a local pull finds no key, a server wraps one on demand at the first remote pull.
        self.unwrapped = {p: set() for p in self.PRINCIPALS}
        self.versions = []  # (model, version, {file: bytes})
        self.pulls = dict(tried=0, refused=0, local=0, remote=0, released=0)
        self.limits = dict(tried=0, refused=0, released=0, sessions=0, predictions=0, audited=0, refusals=0)
        self.leaks, self.denials, self.unaudited = [], [], []
        self.grant_failures = None
        self.serial = 0
        self.kinds = collections.Counter()

    def coffer_run(self, *args, env=None):
        return run(self.coffer, *args, env=env or self.env)

    def coffer_check(self, *args):
        return check(self.coffer, *args, env=self.env)

    def setup(self):
        w = self.work
        for name in ("alice", *self.PRINCIPALS, "ivy"):
            keygen(self.coffer, f"{w}/{name}", self.env)
        self.coffer_check("init", "--home", self.home, "--owner", f"{w}/alice.pub")
        for name in (*self.PRINCIPALS, "ivy"):
            self.coffer_check("principal", "add", name, f"{w}/{name}.pub", *self.admin)
        self.key_ids = dict(self.query("SELECT name, key_id FROM principals"))  # kept: a principal re-added has the same key
        self.server, self.base, self.log = start_server(self.coffer, self.home, self.env, f"{w}/grants-serve.log",
                                                        "--predict-rate", "1000", "--predict-burst", "1000")
        self.publish_token = self.mint("alice", "publish")
        for model in self.MODELS:
            self.push(model, remote=False)

    def mint(self, principal, scope):
        return self.coffer_check("token", "create", "--principal", principal, "--scope", scope, "--ttl", "2h", *self.admin).strip()

    def stop(self):
        stop_server(self.server)

    # --- the oracle -----------------------------------------------------------------------------------------------

    def holds(self, principal, role, model):
        return self.present[principal] and any(r == role and covers(s, model) for r, s in self.grants[principal])

    def may_open(self, principal, model):
        return principal == "alice" or (self.holds(principal, "reader", model) and self.holds(principal, "decrypt", model))

    def decryptable(self, principal):
        return {f"{m}:{v}" for m, v, _ in self.versions if self.holds(principal, "decrypt", m)}

    # --- the steps ------------------------------------------------------------------------------------------------

    def push(self, model, remote):
        self.serial += 1
        source = f"{self.work}/src-{self.serial}"
        os.makedirs(source)
        files = {"weights.bin": os.urandom(self.rng.randrange(500, 4000)), "config.json": json.dumps({"serial": self.serial}).encode()}
        for name, data in files.items():
            with open(f"{source}/{name}", "wb") as f:
                f.write(data)
        where = ["--registry", self.base, "--token", self.publish_token, "--identity", f"{self.work}/alice.key"] if remote else self.admin
        said = self.coffer_check("push", model, source, *where)
        version = re.search(rf"pushed {re.escape(model)}:(\S+) ", said).group(1)
        self.versions.append((model, version, files))
        return f"push {model}:{version}{' over HTTP' if remote else ''}"

    def share(self, principal, scope):
        if not self.present[principal]:
            self.coffer_check("principal", "add", principal, f"{self.work}/{principal}.pub", *self.admin)
            self.present[principal] = True
        self.coffer_check("share", scope, principal, "--pull", *self.admin)
        self.grants[principal] |= {("reader", scope), ("decrypt", scope)}
        self.unwrapped[principal] = {ref for ref in self.unwrapped[principal] if not covers(scope, ref.rsplit(":", 1)[0])}
        if not any(live for _, live in self.tokens[principal]):
            self.tokens[principal].append([self.mint(principal, "read"), True])
        return f"share {scope} {principal} --pull"

    def grant_keyless(self, principal, scope):
        """`grant reader` and `grant decrypt` without the registry's key: the grant is recorded alone, and the versions
        already there are wrapped for the principal only when a server is asked for them."""
        if not self.present[principal]:
            return self.share(principal, scope)
        before = self.decryptable(principal)
        for role in ("reader", "decrypt"):
            self.coffer_check("grant", principal, role, "--on", scope, *self.admin)
            self.grants[principal].add((role, scope))
        self.unwrapped[principal] |= self.decryptable(principal) - before
        if not any(live for _, live in self.tokens[principal]):
            self.tokens[principal].append([self.mint(principal, "read"), True])
        return f"grant {principal} reader, decrypt --on {scope} (without the registry key)"

    def grant_reader(self, principal, scope):
        if not self.present[principal]:
            return self.share(principal, scope)
        self.coffer_check("grant", principal, "reader", "--on", scope, *self.admin)
        self.grants[principal].add(("reader", scope))
        return f"grant {principal} reader --on {scope}"

    def unshare(self, principal, scope, rekey):
        label = f"unshare {principal}{' ' + scope if scope else ''}{' --rekey' if rekey else ''}"
        if not self.present[principal]:
            return self.remove(principal)
        if scope == "*":
            return self.revoke_everywhere(principal)
        before = self.decryptable(principal)
        digests = {ref: self.sealed(ref) for ref in before} if rekey else {}
        said = self.coffer_check("unshare", principal, *([scope] if scope else []), *(["--rekey"] if rekey else []), *self.admin)
        if scope:
            self.grants[principal] = {(r, s) for r, s in self.grants[principal] if s != scope}
        else:
            self.grants[principal] = set()
            for token in self.tokens[principal]:
                token[1] = False
        ended = before - self.decryptable(principal)
        self.report_removed(label, principal, ended, listed(said, "wrapped keys removed") or set(), "removed keys of")
        self.report_removed(label, principal, ended, listed(said, "re-encrypted" if rekey else "to rekey") or set(), "named to rekey or re-encrypted")
        held = ended - self.unwrapped[principal]  # a version never wrapped for it gave it no key to keep
        self.unwrapped[principal] &= self.decryptable(principal)
        for ref in held if rekey else ():
            if self.sealed(ref) & digests[ref]:
                self.leaks.append(f"{label}: {ref} still has a sealed blob {principal} could open with the key it held")
        return label

    def report_removed(self, label, principal, ended, said, what):
        """What an unshare or revoke says it ended: every version the principal no longer may decrypt whose key it held
        (those never wrapped for it may be left out), and nothing else."""
        held = ended - self.unwrapped[principal]
        if held - said:
            self.leaks.append(f"{label}: {what} {sorted(said)}, but {principal} held keys of {sorted(held)}")
        if said - ended:
            self.denials.append(f"{label}: {what} {sorted(said)}, but {principal} may still decrypt {sorted(said - ended)}")

    def revoke_everywhere(self, principal):
        """`unshare` takes a model or a namespace, not `*`: a `*` share is ended with `revoke`, decrypt first, which
        deletes the keys it carried and names them."""
        before = self.decryptable(principal)
        said = ""
        for role in ("decrypt", "reader"):
            result = self.coffer_run("revoke", principal, role, "--on", "*", *self.admin)
            refused = result.stderr.decode().strip()
            if result.returncode != 0 and refused != f"coffer: {principal} holds no {role} on * grant":
                raise RuntimeError(f"coffer revoke {principal} {role} --on *: {refused}")
            if (result.returncode == 0) != ((role, "*") in self.grants[principal]):
                self.denials.append(f"revoke {principal} {role} --on *: exit {result.returncode}, the campaign's grants {sorted(self.grants[principal])}")
            said += result.stdout.decode()
        self.grants[principal] -= {("reader", "*"), ("decrypt", "*")}
        ended = before - self.decryptable(principal)
        match = re.search(r"removed \S+ wrapped keys of (.*); rekey", said)
        self.report_removed(f"revoke {principal} on *", principal, ended, set(match.group(1).split(", ")) if match else set(), "removed keys of")
        self.unwrapped[principal] &= self.decryptable(principal)
        return f"revoke {principal} decrypt, reader --on *"

    def remove(self, principal):
        if not self.present[principal]:
            return self.share(principal, self.rng.choice(self.SCOPES))
        self.coffer_check("principal", "remove", principal, *self.admin)
        self.present[principal] = False
        self.unwrapped[principal] = set()
        self.grants[principal] = set()
        for token in self.tokens[principal]:
            token[1] = False
        return f"principal remove {principal}"

    def query(self, sql, *parameters):
        """Rows of the registry's SQLite metadata, read-only: what the registry holds, beside what its commands say."""
        db = sqlite3.connect(f"file:{self.home}/registry.sqlite?mode=ro", uri=True)
        try:
            return db.execute(sql, parameters).fetchall()
        finally:
            db.close()

    def sealed(self, reference):
        """The sealed blobs `reference` is read from now (a rekey's, else the push's) that are still in the blob store."""
        model, version = reference.rsplit(":", 1)
        rows = self.query("SELECT coalesce(r.sealed_sha256, f.sealed_sha256) FROM files f JOIN versions v ON v.id = f.version_id "
                          "JOIN models m ON m.id = v.model_id LEFT JOIN rekeyed_files r ON r.version_id = f.version_id AND r.path = f.path "
                          "WHERE m.name = ? AND v.version = ?", model, version)
        return {d for (d,) in rows if os.path.exists(f"{self.home}/blobs/sha256/{d[:2]}/{d}")}

    def step(self):
        principal = self.rng.choice(self.PRINCIPALS)
        scope = self.rng.choice(self.SCOPES)
        kind = self.rng.choices(["share", "keyless", "reader", "unshare", "unshare-all", "remove", "push"], [28, 8, 6, 20, 8, 8, 22])[0]
        self.kinds[kind] += 1
        if kind == "share":
            return self.share(principal, scope)
        if kind == "keyless":
            return self.grant_keyless(principal, scope)
        if kind == "reader":
            return self.grant_reader(principal, scope)
        if kind == "unshare":
            # Mostly a scope the principal holds, so something ends; sometimes one it does not (nothing may end).
            held = sorted({s for _, s in self.grants[principal]})
            return self.unshare(principal, self.rng.choice(held) if held and self.rng.random() < 0.8 else scope, self.rng.random() < 0.4)
        if kind == "unshare-all":
            return self.unshare(principal, None, self.rng.random() < 0.4)
        if kind == "remove":
            return self.remove(principal)
        return self.push(self.rng.choice(self.MODELS), remote=self.rng.random() < 0.5)

    # --- what each principal can open -----------------------------------------------------------------------------

    def attempt(self, principal, model, version, files, token=None):
        """One pull of `model:version` by `principal` (locally, or through the server with `token`): (opened, bytes
        written, one line of what happened)."""
        out = tempfile.mkdtemp(prefix=f"out-{principal}-", dir=self.work)
        where = ["--registry", self.base, "--token", token] if token else ["--home", self.home]
        result = run(self.coffer, "pull", f"{model}:{version}", "--identity", f"{self.work}/{principal}.key", "--out", out, *where,
                     env=environment(f"{self.work}/client-{principal}"))
        written = {}
        for root, _, names in os.walk(out):
            for name in names:
                written[os.path.relpath(os.path.join(root, name), out)] = open(os.path.join(root, name), "rb").read()
        shutil.rmtree(out, ignore_errors=True)
        opened = result.returncode == 0 and all(written.get(name) == data for name, data in files.items())
        line = result.stderr.decode().strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return opened, sum(len(written[name]) for name in files if name in written), line[0][:200]

    def check_access(self, label):
        """Every principal (and alice, who may open everything) against every version, locally and through the server
        with its newest bearer token; a revoked token is replayed on one random version. The plan is drawn here, so a
        seed gives the same one; the pulls run four at a time, one principal's in order."""
        plan = {}
        for principal in ("alice", *self.PRINCIPALS):
            tokens = [[self.alice_token, True]] if principal == "alice" else self.tokens[principal]
            mine = plan[principal] = []
            for model, version, files in self.versions:
                expected = self.may_open(principal, model)
                # Not wrapped yet: refused locally ("holds no key") until a remote pull has had the server wrap it.
                local = None if expected and f"{model}:{version}" in self.unwrapped.get(principal, ()) else expected
                mine.append(("local", model, version, files, None, local))
                if tokens:
                    mine.append(("remote", model, version, files, tokens[-1][0], expected and tokens[-1][1]))
            dead = [t for t, live in tokens if not live]
            if dead:
                model, version, files = self.rng.choice(self.versions)
                mine.append(("revoked token", model, version, files, self.rng.choice(dead), False))

        def pulls(principal):
            return [(where, principal, model, version, expected, *self.attempt(principal, model, version, files, token))
                    for where, model, version, files, token, expected in plan[principal]]

        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = [r for rs in pool.map(pulls, plan) for r in rs]
        for where, principal, model, version, expected, opened, written, line in outcomes:
            self.pulls["tried"] += 1
            self.pulls["remote" if where != "local" else "local"] += 1
            what = f"after {label}: {principal} {where} pull {model}:{version}"
            if opened and principal in self.unwrapped:
                self.unwrapped[principal].discard(f"{model}:{version}")
            if expected is None:
                continue
            if expected and not opened:
                self.denials.append(f"{what} refused, should open: {line}")
            elif not expected:
                if opened or written:
                    self.pulls["released"] += written
                    self.leaks.append(f"{what} opened ({written} plaintext bytes), should be refused; grants {sorted(self.grants.get(principal, ()))}")
                else:
                    self.pulls["refused"] += 1
        self.check_keys(label)

    def check_keys(self, label):
        """The registry's wrapped-key rows: a principal holds a stanza for exactly the versions it may decrypt now (but
        those not wrapped for it yet)."""
        rows = self.query("SELECT m.name || ':' || v.version, w.recipient_key_id FROM wrapped_keys w JOIN versions v ON v.id = w.version_id "
                          "JOIN models m ON m.id = v.model_id")
        for principal in self.PRINCIPALS:
            key_id = self.key_ids[principal]
            held = {ref for ref, k in rows if k == key_id}
            expected = self.decryptable(principal)
            if held - expected:
                self.leaks.append(f"after {label}: {principal} still holds wrapped keys of {sorted(held - expected)}")
            if expected - held - self.unwrapped[principal]:
                self.denials.append(f"after {label}: {principal} lacks wrapped keys of {sorted(expected - held - self.unwrapped[principal])}")

    def grants_phase(self, steps):
        self.alice_token = self.mint("alice", "read")
        for principal in self.PRINCIPALS:
            self.share(principal, self.rng.choice(self.SCOPES))
        self.check_access("the first shares")
        for _ in range(steps):
            self.check_access(self.step())

    # --- inference limits -----------------------------------------------------------------------------------------

    def limits_phase(self, steps):
        w = self.work
        self.grant_failures = (len(self.leaks), len(self.denials), len(self.unaudited))  # where the limits phase's begin
        self.coffer_check("synth", "--rows", "300", "--features", "3", "--out", f"{w}/data")
        self.coffer_check("train", "--config", f"{w}/data/recipe.json", "--out", f"{w}/ckpt")
        self.coffer_check("push", "inf/risk", f"{w}/ckpt", *self.admin)
        lines = open(f"{w}/data/data.csv").read().splitlines()
        self.header, self.rows = lines[0], lines[1:]
        self.sessions = {}  # id -> the oracle's copy of a session
        self.refused = []  # (audit action, target, start, end, what was tried and the answer) of every refusal seen
        self.reported = set()
        self.grant = None
        self.regrant()
        self.infer_token = self.mint("ivy", "infer")
        for _ in range(steps):
            kind = self.rng.choices(["open", "predict", "revoke", "regrant"], [35, 52, 5, 8])[0]
            getattr(self, kind)()
            self.check_limits()
        self.check_audit()

    def regrant(self):
        """`share inf/risk ivy --infer` with new random limits: half the time after `unshare ivy inf/risk`, half the time
        in place over the grant whose sessions may still be open. Either way every session opened under the old limits
        ends (replacing a grant's limits revokes them: docs/FORMAT.md, "Inference limits"), and the new limits are the
        grant's maximum from then on: no session open past the share's time plus its --ttl, no more than its
        --max-predictions rows answered since."""
        if self.grant is not None and self.rng.random() < 0.5:
            self.coffer_check("unshare", "ivy", "inf/risk", *self.admin)
            for session in self.sessions.values():
                session["revoked"] = True
        number = (self.grant or {"number": 0})["number"] + 1
        seconds = self.rng.choice([6, 10, 15, 30, 300, 3600, 86400])
        predictions = self.rng.randrange(3, 40)
        shared = self.coffer_check("share", "inf/risk", "ivy", "--infer", "--ttl", f"{seconds}s", "--max-predictions", predictions, *self.admin)
        if self.grant is not None and (self.grant["seconds"], self.grant["predictions"]) != (seconds, predictions):
            ended = set(re.findall(r"\b[0-9a-f]{16}\b", "".join(l for l in shared.splitlines() if l.startswith("ended "))))
            listed = self.listed_sessions()
            for session in self.sessions.values():
                row = listed.get(session["id"], {})
                # A session whose last use was made has no key left (the registry destroys it then): nothing to end.
                exhausted = row.get("maxUses") is not None and row.get("uses", 0) >= row["maxUses"]
                if not session["revoked"] and time.time() + 1 < session["expires"] and session["id"] not in ended and not exhausted:
                    self.fail_once(session["id"] + "regrant", f"share with new limits left session {session['id']} of the old ones open "
                                   f"(listed: uses {row.get('uses')} of {row.get('maxUses')}, revoked {row.get('revokedAt')}, "
                                   f"expires {row.get('expiresAt')})")
                session["revoked"] = True
        self.grant = dict(number=number, seconds=seconds, predictions=predictions, rows=0, earlier=0, at=time.time())

    def remote(self):
        return ["--registry", self.base, "--token", self.infer_token]

    def left(self, start, end):
        """Predictions the grant had left over a call made from `start` to `end` (open sessions hold their whole
        max_uses), and whether that is certain: no session of the grant expired during the call, give or take a second."""
        mine = [s for s in self.sessions.values() if s["grant"] == self.grant["number"]]
        held = sum(s["uses"] if s["revoked"] or start >= s["expires"] else s["max_uses"] for s in mine)
        return self.grant["predictions"] - held, all(s["revoked"] or not start - 1 <= s["expires"] <= end + 1 for s in mine)

    def listed_sessions(self):
        return {s["id"]: s for s in json.loads(self.coffer_check("session", "list", "--json", "--home", self.home)) if s["principal"] == "ivy"}

    def open(self):
        seconds, predictions = self.grant["seconds"], self.grant["predictions"]
        # A third beyond the grant's maximum (one second over, well over, a year), the rest within it (exactly at it too).
        ttl = self.rng.choice(["365d", f"{seconds + 1}s", f"{self.rng.randint(seconds + 1, seconds * 3)}s", f"{self.rng.randint(seconds + 1, seconds * 3)}s",
                               f"{seconds}s", *[f"{self.rng.randint(max(1, seconds // 3), seconds)}s"] * 7])
        asked = int(ttl[:-1]) * (86400 if ttl.endswith("d") else 1)
        max_uses = self.rng.randint(1, predictions + 3) if self.rng.random() < 0.6 else None
        self.serial += 1
        token_file = f"{self.work}/session-{self.serial}.token" if self.rng.random() < 0.5 else None
        before = time.time()
        result = self.coffer_run("session", "open", "inf/risk", "--ttl", ttl, *(["--max-uses", max_uses] if max_uses else []),
                                 *(["--save-token", token_file] if token_file else []), *self.remote())
        after = time.time()
        left, certain = self.left(before, after)
        expected = asked <= seconds and left > 0 and (max_uses is None or max_uses <= left)
        self.limits["tried"] += 1
        what = f"session open --ttl {ttl} --max-uses {max_uses} (grant: {seconds} s, {predictions} predictions, {left} left)"
        line = (result.stderr.decode().strip().splitlines() or [""])[-1][:200]
        if result.returncode != 0:
            self.limits["refusals"] += 1
            self.refused.append(("session.open", "inf/risk", before, after, f"{what}: {line}"))
            if expected and certain:
                self.denials.append(f"{what} refused: {line}")
            else:
                self.limits["refused"] += 1
            return
        sid = result.stdout.decode().strip()
        got = self.listed_sessions()[sid]
        expires, created = instant(got["expiresAt"]), instant(got["createdAt"])
        self.sessions[sid] = dict(id=sid, grant=self.grant["number"], max_uses=got["maxUses"], uses=got["uses"], expires=expires,
                                  revoked=False, token_file=token_file, seconds=seconds)
        self.limits["sessions"] += 1
        if not expected and certain:
            self.leaks.append(f"{what} opened {sid}, should be refused")
        if asked > seconds or expires > after + seconds + 1:
            self.leaks.append(f"{what} opened {sid} until {got['expiresAt']}: longer than the grant allows")
        if certain and expected and got["maxUses"] != (max_uses or left):
            (self.leaks if got["maxUses"] > left else self.denials).append(f"{what} opened {sid} with max_uses {got['maxUses']}, expected {max_uses or left}")

    def predict(self):
        live = [s for s in self.sessions.values() if not s["revoked"] and time.time() < s["expires"] and s["uses"] < s["max_uses"]]
        pool = live if live and self.rng.random() < 0.8 else list(self.sessions.values())
        if not pool:
            return self.open()
        session = self.rng.choice(pool)
        rows = self.rng.randint(1, 5) if self.rng.random() < 0.6 else self.rng.randint(1, self.grant["predictions"] + 5)
        bad = self.rng.random() < 0.08
        self.serial += 1
        csv = f"{self.work}/rows-{self.serial}.csv"
        with open(csv, "w") as f:
            header = self.header.split(",")
            chosen = [self.rng.choice(self.rows).split(",") for _ in range(rows)]
            keep = [i for i in range(len(header)) if not (bad and header[i] == "x1")]
            f.write("\n".join(",".join(r[i] for i in keep) for r in [header, *chosen]) + "\n")
        now = time.time()
        result = self.coffer_run("infer", "--session", session["id"], "--input", csv, *self.remote(),
                                 *(["--session-token-file", session["token_file"]] if session["token_file"] else []))
        certain = session["revoked"] or not now - 1 <= session["expires"] <= time.time() + 1
        # A session of a grant replaced in place: its own max_uses and the new grant's count disagree; check_limits
        # judges what it answered, not this call.
        certain = certain and (session["revoked"] or session["grant"] == self.grant["number"])
        expected = not session["revoked"] and now < session["expires"] and not bad and session["uses"] + rows <= session["max_uses"]
        self.limits["tried"] += 1
        state = "revoked" if session["revoked"] else f"{session['expires'] - now:.1f} s left"
        what = (f"infer {rows} rows{' (a column missing)' if bad else ''} on {session['id']} ({session['uses']} of {session['max_uses']} used, "
                f"{state}, token file {'yes' if session['token_file'] else 'no'})")
        line = (result.stderr.decode().strip().splitlines() or [""])[-1][:200]
        if result.returncode == 0:
            answered = sum(1 for x in result.stdout.decode().splitlines() if x.startswith("row "))
            if not expected and certain:
                self.limits["released"] += len(result.stdout)
                self.leaks.append(f"{what}: answered, should be refused")
            if answered != rows:
                self.denials.append(f"{what}: answered {answered} rows")
            session["uses"] += rows
            self.grant["rows" if session["grant"] == self.grant["number"] else "earlier"] += rows
            self.limits["predictions"] += rows
        else:
            self.limits["refusals"] += 1
            self.refused.append(("infer", session["id"], now, time.time(), f"{what}: {line}"))
            if result.stdout:
                self.limits["released"] += len(result.stdout)
                self.leaks.append(f"{what}: refused but wrote {len(result.stdout)} bytes")
            if expected and certain:
                self.denials.append(f"{what}: refused, should answer: {line}")
            else:
                self.limits["refused"] += 1
        listed_uses = self.listed_sessions()[session["id"]]["uses"]
        if listed_uses != session["uses"]:
            (self.leaks if listed_uses < session["uses"] else self.denials).append(
                f"{what}: the registry counts {listed_uses} uses, {session['uses']} were answered")
            session["uses"] = max(listed_uses, session["uses"])

    def revoke(self):
        live = [s for s in self.sessions.values() if not s["revoked"]]
        if not live:
            return self.open()
        session = self.rng.choice(live)
        result = self.coffer_run("session", "revoke", session["id"], *self.remote())
        if result.returncode != 0 and time.time() < session["expires"] - 1:
            self.denials.append(f"session revoke {session['id']} by ivy: {result.stderr.decode().strip()[:200]}")
        session["revoked"] = True

    def check_limits(self):
        """What the registry lists: no session of ivy's lives longer than the grant it was opened under allows, none is
        open past the current grant's maximum, none has used more than its max_uses, and at most the current grant's
        predictions were answered since it was made."""
        listed = self.listed_sessions()
        now = time.time()
        for sid, got in listed.items():
            mine = self.sessions.get(sid)
            expires = instant(got["expiresAt"])
            lifetime = expires - instant(got["createdAt"])
            if mine is None:
                self.fail_once(sid, f"session {sid} of ivy is listed, and the campaign never opened it")
            elif lifetime > mine["seconds"] + 0.001:
                self.fail_once(sid, f"session {sid} lives {lifetime:.3f} s, its grant allows {mine['seconds']} s")
            elif (mine["grant"] != self.grant["number"] and not mine["revoked"] and now < expires
                  and expires > self.grant["at"] + self.grant["seconds"] + 1):
                self.fail_once(sid, f"session {sid} (opened at {got['createdAt']} under grant {mine['grant']}, {mine['seconds']} s) is open until {got['expiresAt']}, "
                                    f"past the maximum of the grant that replaced it at {iso(self.grant['at'])} ({self.grant['seconds']} s)")
            if got["maxUses"] is None or got["uses"] > got["maxUses"]:
                self.fail_once(sid + "uses", f"session {sid} used {got['uses']} of {got['maxUses']}")
        if self.grant["rows"] + self.grant["earlier"] > self.grant["predictions"]:
            self.fail_once(f"grant {self.grant['number']}", f"grant {self.grant['number']} (made at {iso(self.grant['at'])}) allows "
                           f"{self.grant['predictions']} predictions: {self.grant['rows']} rows were answered since by its sessions, "
                           f"{self.grant['earlier']} by sessions opened before it")

    def fail_once(self, key, message):
        if key not in self.reported:
            self.reported.add(key)
            self.leaks.append(message)

    def check_audit(self):
        """Every refused or failed session open and prediction of ivy's has its audit entry.

        A server counts its refusals and writes them every few seconds: one entry per action, target and reason, its
        time that of the write, `(N requests, FIRST to LAST)` appended when there were several. So a refusal is
        matched to an entry of its action and target written after it within a few seconds, or to a count whose FIRST
        to LAST overlaps the call; the log is read until every refusal seen is there, or for 15 s."""
        def entries():
            audit = json.loads(self.coffer_check("audit", "--json", "--principal", "ivy", "--home", self.home))
            found = []
            for e in audit:
                if e["outcome"] not in ("refused", "failed") or e["action"] not in ("session.open", "infer", "predict"):
                    continue
                action = "infer" if e["action"] == "predict" else e["action"]
                batch = re.search(r" \((\d+) requests, (\S+) to (\S+)\)$", e["reason"])
                if batch:
                    found.append([action, e["target"], instant(batch[2]) - 0.01, instant(batch[3]) + 0.01, int(batch[1])])
                else:
                    found.append([action, e["target"], None, instant(e["at"]), 1])
            return found
        deadline = time.time() + 15
        while True:
            found = entries()
            if sum(e[4] for e in found) >= len(self.refused) or time.time() > deadline:
                break
            time.sleep(0.5)
        self.limits["audited"] = sum(e[4] for e in found)

        def covers(refusal, e):
            action, target, start, end, _ = refusal
            if e[:2] != [action, target]:
                return False
            # One refusal: written by the call itself, or by the server's next write (every 5 s).
            return start - 0.01 <= e[3] <= end + 7 if e[2] is None else e[2] <= end and start <= e[3]
        # A refusal may fit several entries (the log is newest first, a lone entry up to 7 s after the call), so the
        # assignment is a maximum bipartite matching, an entry taking as many refusals as it counts: first fit in
        # either order can give a refusal's only entry to one that had another (CI, 2026-12-05).
        slots = [i for i, e in enumerate(found) for _ in range(e[4])]
        holder = [None] * len(slots)

        def place(r, seen):
            for s, i in enumerate(slots):
                if s not in seen and covers(self.refused[r], found[i]):
                    seen.add(s)
                    if holder[s] is None or place(holder[s], seen):
                        holder[s] = r
                        return True
            return False
        for r, refusal in enumerate(self.refused):
            if not place(r, set()):
                self.unaudited.append(f"no {refusal[0]} entry for: {refusal[4]}")


def http_client_errors():
    import http.client
    return http.client.HTTPException


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--mutations", type=int, default=400, help="malformed tokens tried per kind (HTTP and session)")
    parser.add_argument("--timing-samples", type=int, default=300)
    parser.add_argument("--grant-steps", type=int, default=30, help="random share/unshare/remove/push steps, each followed by every pull")
    parser.add_argument("--limit-steps", type=int, default=80, help="random session opens and predictions under inference limits")
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

        os.makedirs(f"{work}/grants")
        grants = GrantCampaign(args.coffer, f"{work}/grants", random.Random(seed))
        grants.setup()
        try:
            grants.grants_phase(args.grant_steps)
            grants.limits_phase(args.limit_steps)
        finally:
            grants.stop()

    print(f"# tools/campaign/tokens: seed {seed}")
    print(f"tried {campaign.tried}  detected {campaign.detected}  plaintext bytes released {campaign.released}")
    print(f"audited refusals {refusals}; tokens in the server log {len(leaked_tokens)}")
    ratio = near_median / random_median
    print(f"answer time, median of {args.timing_samples}: unknown random token {random_median * 1e3:.2f} ms, "
          f"one digit off a valid token {near_median * 1e3:.2f} ms (ratio {ratio:.3f})")
    p, q = grants.pulls, grants.limits
    print(f"grants ({args.grant_steps} steps, {len(grants.versions)} versions): pulls tried {p['tried']} ({p['local']} local, {p['remote']} remote)  "
          f"refused as expected {p['refused']}  limits ({args.limit_steps} steps): tried {q['tried']}  refused as expected {q['refused']}  "
          f"sessions {q['sessions']}  predictions {q['predictions']}  audited refusals {q['audited']} of {q['refusals']}")
    print("grant steps: " + ", ".join(f"{kind} {n}" for kind, n in sorted(grants.kinds.items())))
    print(f"grants and limits: opened or allowed what it should not {len(grants.leaks)}  refused what it should open {len(grants.denials)}  "
          f"refusals not audited {len(grants.unaudited)}  plaintext bytes released {p['released'] + q['released']}")
    for failure in campaign.failures[:20]:
        print("FAILED " + failure)
    # The first ten of each kind from each phase: a flood from one phase does not hide the other's.
    split = grants.grant_failures or (len(grants.leaks), len(grants.denials), len(grants.unaudited))
    for (kind, failures), cut in zip((("OPENED", grants.leaks), ("REFUSED", grants.denials), ("UNAUDITED", grants.unaudited)), split):
        for failure in failures[:cut][:10] + failures[cut:][:10]:
            print(f"FAILED ({kind}) {failure}")
    ok = (campaign.detected == campaign.tried and campaign.released == 0 and not leaked_tokens and "request_id=" in log
          and refusals >= campaign.tried // 2 and 0.67 <= ratio <= 1.5)
    ok = ok and not grants.leaks and not grants.denials and not grants.unaudited and p["released"] + q["released"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
