"""Load and soak: pushers, pullers and inference sessions at once against `coffer serve` on loopback.

Pushers run `coffer push --registry` of fresh random model directories (two pushers per model name, so version
numbers are raced for); pullers run `coffer pull --registry` of versions already pushed, which verifies signature
and digests on the client, and compare every byte with what was pushed; inference clients hold a server session
each and compare every prediction with the plaintext checkpoint's. Afterwards the server is stopped and `fsck`,
`audit verify` and a version count must agree with what the clients saw. Prints operations, errors, corruptions,
latencies and the server's peak RSS; exits non-zero on any error or corruption.
"""
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
from cofferlib import start_server  # noqa: E402


class Load:
    def __init__(self, coffer, work):
        self.coffer, self.work = coffer, work
        self.home = f"{work}/home"
        self.env = dict(os.environ, COFFER_PASSPHRASE="load passphrase", COFFER_OUTBOX=f"{work}/outbox")
        self.lock = threading.Lock()
        self.pushed = []  # (reference, {path: sha256})
        self.latency = {"push": [], "pull": [], "predict": []}
        self.errors = []
        self.corruptions = []

    def run(self, *args, check=True):
        result = subprocess.run([self.coffer, *map(str, args)], env=self.env, capture_output=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"coffer {' '.join(map(str, args[:3]))}: {result.stderr.decode().strip()}")
        return result

    def setup(self):
        w = self.work
        for name in ("alice", "bob"):
            self.run("keygen", "--out", f"{w}/{name}", "--kdf-ops", "1", "--kdf-memory", "8192")
        self.run("init", "--home", self.home, "--owner", f"{w}/alice.pub")
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

    def serve(self):
        self.server, self.base, self.log = start_server(self.coffer, self.home, self.env, f"{self.work}/serve.log", "--predict-rate", "10000",
                                                        "--predict-burst", "10000")

    def peak_rss_mib(self):
        for line in open(f"/proc/{self.server.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

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
                              check=False)
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
            result = self.run("pull", reference, *remote, "--identity", f"{self.work}/bob.key", "--out", out, check=False)
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

    def http(self, method, path, body=None):
        request = urllib.request.Request(self.base + path, method=method, data=None if body is None else json.dumps(body).encode())
        request.add_header("Authorization", f"Bearer {self.tokens['infer']}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def inference(self, n, deadline):
        status, body = self.http("POST", "/v1/sessions", {"ref": "load/model@prod", "ttl_seconds": 3600})
        if status != 201:
            return self.error(f"session open: {status} {body[:200]!r}")
        session = json.loads(body)["id"]
        while time.time() < deadline:
            started = time.perf_counter()
            status, body = self.http("POST", f"/v1/sessions/{session}/predict", {"rows": self.rows})
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
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory() as work:
        load = Load(args.coffer, work)
        load.setup()
        load.serve()
        deadline = time.time() + args.seconds
        threads = [threading.Thread(target=load.pusher, args=(n, deadline, random.Random(seed * 1000 + n))) for n in range(args.pushers)]
        threads += [threading.Thread(target=load.puller, args=(n, deadline, random.Random(seed * 1000 + 100 + n))) for n in range(args.pullers)]
        threads += [threading.Thread(target=load.inference, args=(n, deadline)) for n in range(args.sessions)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - started
        rss = load.peak_rss_mib()
        load.server.send_signal(signal.SIGTERM)
        load.server.wait(timeout=60)
        fsck = json.loads(load.run("fsck", "--json", "--home", load.home, check=False).stdout or b'{"clean": false}')
        audit = load.run("audit", "verify", "--home", load.home, check=False)
        listed = {f"{v['model']}:{v['version']}" for v in json.loads(load.run("list", "--json", "--home", load.home).stdout)}
        missing = [r for r, _ in load.pushed if r not in listed]

    print(f"# tools/campaign/load: {args.pushers} pushers, {args.pullers} pullers, {args.sessions} inference sessions for "
          f"{args.seconds:.0f} s ({wall:.1f} s with the last operations), seed {seed}, {os.cpu_count()} cores")
    for kind, samples in load.latency.items():
        if samples:
            samples.sort()
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"{kind:<8} {len(samples):>6} ok   median {statistics.median(samples) * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms")
    print(f"errors {len(load.errors)}  corruptions {len(load.corruptions)}  pushed versions not listed {len(missing)}")
    print(f"fsck clean: {fsck.get('clean')}; audit verify: {(audit.stdout or audit.stderr).decode().strip()}")
    print(f"server peak RSS {rss:.1f} MiB")
    for line in (load.errors + load.corruptions)[:15]:
        print("FAILED " + line)
    # The server signs the audit head as it goes and at shutdown: nothing it logged is left unsigned.
    signed = audit.stdout.decode().endswith(" 0 not yet signed\n")
    ok = (not load.errors and not load.corruptions and not missing and fsck.get("clean") and audit.returncode == 0 and signed
          and all(load.latency.values()))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
