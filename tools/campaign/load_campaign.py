"""Load and soak: pushers, pullers and inference sessions at once against `coffer serve` on loopback.

Pushers run `coffer push --registry` of fresh random model directories (two pushers per model name, so version
numbers are raced for); pullers run `coffer pull --registry` of versions already pushed, which verifies signature
and digests on the client, and compare every byte with what was pushed; inference clients hold a server session
each and compare every prediction with the plaintext checkpoint's. Afterwards the server is stopped and `fsck`,
`audit verify` and a version count must agree with what the clients saw. Prints operations, errors, corruptions,
latencies and the server's peak RSS; exits non-zero on any error or corruption.

Scale-out: `--oci` keeps the blobs in a docker-registry the campaign starts, `--metadata postgres://...` the metadata in
PostgreSQL, `--replicas N` runs N servers behind nginx, and `--failover` kills one replica with SIGKILL a third of the
way through and restarts it on its port. Clients retry a failed operation (a connection cut by the kill) up to 5 times;
an operation is an error only when every try failed, and the retries are counted.
"""
import contextlib
import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402
from cofferlib import start_server  # noqa: E402


class Load:
    def __init__(self, coffer, work, replicas=1, blobs=None, metadata=None):
        self.coffer, self.work = coffer, work
        self.replicas, self.blobs, self.metadata = replicas, blobs, metadata
        self.retries = 0
        self.home = f"{work}/home"
        self.env = dict(os.environ, COFFER_PASSPHRASE="load passphrase", COFFER_OUTBOX=f"{work}/outbox")
        self.lock = threading.Lock()
        self.pushed = []  # (reference, {path: sha256})
        self.latency = {"push": [], "pull": [], "predict": []}
        self.errors = []
        self.corruptions = []

    def run(self, *args, check=True, tries=1):
        for attempt in range(tries):
            result = subprocess.run([self.coffer, *map(str, args)], env=self.env, capture_output=True)
            if result.returncode == 0:
                break
            if attempt + 1 < tries:
                with self.lock:
                    self.retries += 1
                time.sleep(0.5)
        if check and result.returncode != 0:
            raise RuntimeError(f"coffer {' '.join(map(str, args[:3]))}: {result.stderr.decode().strip()}")
        return result

    def setup(self):
        w = self.work
        for name in ("alice", "bob"):
            self.run("keygen", "--out", f"{w}/{name}", "--kdf-ops", "1", "--kdf-memory", "8192")
        backends = (["--blobs", self.blobs] if self.blobs else []) + (["--metadata", self.metadata] if self.metadata else [])
        self.run("init", "--home", self.home, "--owner", f"{w}/alice.pub", *backends)
        self.admin = ["--identity", f"{w}/alice.key", "--home", self.home]
        self.run("trust", "add", f"{w}/alice.pub", *self.admin)
        self.run("principal", "add", "bob", f"{w}/bob.pub", "--role", "reader", "--role", "decrypt", "--role", "inference", *self.admin)
        self.run("synth", "--rows", "300", "--features", "3", "--out", f"{w}/data")
        self.run("train", "--config", f"{w}/data/recipe.json", "--out", f"{w}/ckpt")
        self.run("push", "load/model", f"{w}/ckpt", "--alias", "prod", "--recipient", f"{w}/bob.pub", *self.admin)
        self.pushed.append(("load/model:1", self.digests(f"{w}/ckpt")))
        token = lambda who, scope: self.run("token", "create", "--principal", who, "--scope", scope, "--ttl", "2h", *self.admin).stdout.decode().strip()
        self.tokens = {"publish": token("alice", "publish"), "read": token("bob", "read"), "infer": token("bob", "infer")}
        self.rows = [{"x0": round(random.uniform(-2, 2), 3), "x1": round(random.uniform(-2, 2), 3), "x2": round(random.uniform(-2, 2), 3)}
                     for _ in range(4)]
        with open(f"{w}/rows.csv", "w") as f:
            f.write("x0,x1,x2\n" + "".join(f"{r['x0']},{r['x1']},{r['x2']}\n" for r in self.rows))
        self.expected = json.loads(self.run("predict", "--checkpoint", f"{w}/ckpt", "--input", f"{w}/rows.csv", "--json").stdout)

    @staticmethod
    def digests(directory):
        out = {}
        for root, _, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        return out

    server_flags = ("--predict-rate", "10000", "--predict-burst", "10000", "--max-sessions-per-principal", "10000")

    def serve(self, stack):
        self.servers = []
        for n in range(self.replicas):
            process, base, _ = start_server(self.coffer, self.home, self.env, f"{self.work}/serve-{n}.log", *self.server_flags)
            self.servers.append([process, int(base.rsplit(":", 1)[1])])
        self.base = base if self.replicas == 1 else stack.enter_context(cofferlib.nginx([f"127.0.0.1:{port}" for _, port in self.servers]))
        self.peak_rss = 0.0

    def failover(self, at):
        """Kills one replica with SIGKILL at `at` (epoch seconds), then restarts it on its port two seconds later."""
        time.sleep(max(0, at - time.time()))
        victim = self.servers[len(self.servers) // 2]
        self.record_rss(victim[0])
        victim[0].kill()
        victim[0].wait()
        time.sleep(2)
        victim[0], _, _ = start_server(self.coffer, self.home, self.env, f"{self.work}/serve-restarted.log", *self.server_flags, port=victim[1])
        self.restarted = True

    def record_rss(self, process):
        try:
            for line in open(f"/proc/{process.pid}/status"):
                if line.startswith("VmHWM:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) / 1024)
        except OSError:
            pass

    def peak_rss_mib(self):
        for process, _ in self.servers:
            self.record_rss(process)
        return self.peak_rss

    def error(self, what):
        with self.lock:
            self.errors.append(what)

    def pusher(self, n, deadline, rng):
        model = f"load/p{n % 4}"
        remote = ["--registry", self.base, "--token", self.tokens["publish"], "--registry-key", f"{self.home}/registry.pub"]
        i = 0
        while time.time() < deadline:
            directory = f"{self.work}/push-{n}-{i}"
            os.makedirs(directory)
            with open(f"{directory}/weights.bin", "wb") as f:
                f.write(rng.randbytes(rng.randrange(64 << 10, 2 << 20)))
            with open(f"{directory}/config.json", "w") as f:
                json.dump({"pusher": n, "push": i}, f)
            started = time.perf_counter()
            result = self.run("push", model, directory, *remote, "--identity", f"{self.work}/alice.key", "--recipient", f"{self.work}/bob.pub",
                              check=False, tries=5)
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                self.error(f"push {model}: {result.stderr.decode().strip()}")
            else:
                reference = result.stdout.decode().split()[1]  # "pushed NAME:VERSION digest ..."
                with self.lock:
                    self.pushed.append((reference, self.digests(directory)))
                    self.latency["push"].append(elapsed)
            i += 1

    def puller(self, n, deadline, rng):
        remote = ["--registry", self.base, "--token", self.tokens["read"], "--trust", f"{self.work}/alice.pub"]
        i = 0
        while time.time() < deadline:
            with self.lock:
                reference, digests = rng.choice(self.pushed)
            out = f"{self.work}/pull-{n}-{i}"
            started = time.perf_counter()
            result = self.run("pull", reference, *remote, "--identity", f"{self.work}/bob.key", "--out", out, check=False, tries=5)
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                self.error(f"pull {reference}: {result.stderr.decode().strip()}")
            else:
                got = {p: d for p, d in self.digests(out).items() if p != "model.sig"}
                if got != digests:
                    with self.lock:
                        self.corruptions.append(f"pull {reference}: files differ from what was pushed")
                with self.lock:
                    self.latency["pull"].append(elapsed)
            subprocess.run(["rm", "-rf", out])
            i += 1

    def http(self, method, path, body=None, session_token=None):
        """One request, tried again (up to 5 times) when the connection fails or nginx found no live replica (502)."""
        for attempt in range(5):
            request = urllib.request.Request(self.base + path, method=method, data=None if body is None else json.dumps(body).encode())
            request.add_header("Authorization", f"Bearer {self.tokens['infer']}")
            request.add_header("Content-Type", "application/json")
            if session_token:
                request.add_header("Coffer-Session-Token", session_token)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                if error.code != 502 or attempt == 4:
                    return error.code, error.read()
            except (urllib.error.URLError, ConnectionError) as error:
                if attempt == 4:
                    return 0, str(error).encode()
            with self.lock:
                self.retries += 1
            time.sleep(0.5)

    def inference(self, n, deadline):
        status, body = self.http("POST", "/v1/sessions", {"ref": "load/model@prod", "ttl_seconds": 3600})
        if status != 201:
            return self.error(f"session open: {status} {body[:200]!r}")
        session, secret = json.loads(body)["id"], json.loads(body)["token"]
        while time.time() < deadline:
            started = time.perf_counter()
            # The session's token goes with each prediction: a replica that did not open the session opens it.
            status, body = self.http("POST", f"/v1/sessions/{session}/predict", {"rows": self.rows}, session_token=secret)
            elapsed = time.perf_counter() - started
            if status != 200:
                self.error(f"predict: {status} {body[:200]!r}")
                continue
            if json.loads(body)["predictions"] != self.expected:
                with self.lock:
                    self.corruptions.append("predict: predictions differ from the plaintext checkpoint's")
            with self.lock:
                self.latency["predict"].append(elapsed)
        self.http("DELETE", f"/v1/sessions/{session}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pushers", type=int, default=8)
    parser.add_argument("--pullers", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=1, help="coffer serve processes, behind nginx when more than one")
    parser.add_argument("--oci", action="store_true", help="blobs in a docker-registry the campaign starts")
    parser.add_argument("--metadata", help="a postgres:// URL of a database of its own for the registry's metadata")
    parser.add_argument("--failover", action="store_true", help="SIGKILL one replica a third of the way through, then restart it")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        blobs = f"oci+http://{stack.enter_context(cofferlib.oci_registry())}/load" if args.oci else None
        load = Load(args.coffer, work, replicas=args.replicas, blobs=blobs, metadata=args.metadata)
        load.setup()
        load.serve(stack)
        deadline = time.time() + args.seconds
        threads = [threading.Thread(target=load.pusher, args=(n, deadline, random.Random(seed * 1000 + n))) for n in range(args.pushers)]
        threads += [threading.Thread(target=load.puller, args=(n, deadline, random.Random(seed * 1000 + 100 + n))) for n in range(args.pullers)]
        threads += [threading.Thread(target=load.inference, args=(n, deadline)) for n in range(args.sessions)]
        if args.failover:
            threads.append(threading.Thread(target=load.failover, args=(time.time() + args.seconds / 3,)))
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - started
        rss = load.peak_rss_mib()
        for process, _ in load.servers:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        fsck = json.loads(load.run("fsck", "--json", "--home", load.home, check=False).stdout or b'{"clean": false}')
        audit = load.run("audit", "verify", "--home", load.home, check=False)
        listed = {f"{v['model']}:{v['version']}" for v in json.loads(load.run("list", "--json", "--home", load.home).stdout)}
        missing = [r for r, _ in load.pushed if r not in listed]

    backends = f"{'PostgreSQL' if args.metadata else 'SQLite'} + {'OCI registry' if args.oci else 'directory'}"
    print(f"# tools/campaign/load: {args.pushers} pushers, {args.pullers} pullers, {args.sessions} inference sessions for "
          f"{args.seconds:.0f} s ({wall:.1f} s with the last operations), seed {seed}, {os.cpu_count()} cores; {backends}, "
          f"{args.replicas} replica(s){', one killed and restarted' if args.failover else ''}")
    for kind, samples in load.latency.items():
        if samples:
            samples.sort()
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"{kind:<8} {len(samples):>6} ok   median {statistics.median(samples) * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms")
    print(f"errors {len(load.errors)}  corruptions {len(load.corruptions)}  pushed versions not listed {len(missing)}")
    print(f"fsck clean: {fsck.get('clean')}; audit verify: {(audit.stdout or audit.stderr).decode().strip()}")
    print(f"server peak RSS {rss:.1f} MiB; client retries {load.retries}")
    for line in (load.errors + load.corruptions)[:15]:
        print("FAILED " + line)
    # The server signs the audit head as it goes and at shutdown: nothing it logged is left unsigned.
    signed = audit.stdout.decode().endswith(" 0 not yet signed\n")
    ok = (not load.errors and not load.corruptions and not missing and fsck.get("clean") and audit.returncode == 0 and signed
          and all(load.latency.values()))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
