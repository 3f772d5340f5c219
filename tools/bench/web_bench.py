"""Web pages benchmark (issue 21): GET /version, /audit (first and a deep keyset page) and /model (first and a deep
page) at a fixed rate, open-loop, against a real `coffer serve` on loopback, on a SQLite registry of 100,000 versions
and 1,000,000 audit entries.

The registry is made the way the other benchmarks make big ones: version rows copied in the database as
tools/bench/scale does (`scale_bench.Registry.fill`: one real push, then copies of its row that are not in the ledger,
so their version pages show "not verified", which the page renders all the same), and audit entries chained by
tools/bench/session's `fill_audit_log` from docs/FORMAT.md's definition. It is kept under --dir and reused.

Open loop: request i is due at start + i / rate whatever happened to the ones before, and its latency is measured
from when it was due (a slow answer delays the next ones on its connection, and that delay is counted), so a server
that falls behind shows it in p99 instead of slowing the client down. 16 keep-alive connections from threads; on a
2-core machine the client shares the cores with the server, and other work on the machine shows in the figures: the
load average is printed with them.
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import sqlite3
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import cofferlib  # noqa: E402
from scale_bench import Registry  # noqa: E402  (the 100,000-version registry of tools/bench/scale)
from session_bench import fill_audit_log  # noqa: E402  (the 1,000,000-entry audit log of tools/bench/session)


def build(coffer, directory, versions, entries):
    """The registry under `directory`/web, reused when a previous run left one of the same size."""
    marker = f"{directory}/web/ready.json"
    wanted = {"versions": versions, "entries": entries}
    if os.path.exists(marker) and json.load(open(marker)) == wanted:
        print(f"reusing the registry in {directory}/web ({versions:,} versions, {entries:,} audit entries)", flush=True)
        return
    shutil.rmtree(f"{directory}/web", ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    started = time.perf_counter()
    registry = Registry(coffer, directory, "web")
    registry.fill(versions)
    db = sqlite3.connect(f"{registry.home}/registry.sqlite")
    (present,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
    db.close()
    fill_audit_log(f"{registry.home}/registry.sqlite", max(0, entries - present))
    json.dump(wanted, open(marker, "w"))
    print(f"built the registry in {time.perf_counter() - started:.0f} s", flush=True)


class Browser:
    """Cookies and the CSRF token of one signed-in web session, as a browser would hold them."""

    def __init__(self, base):
        self.address = urllib.parse.urlsplit(base).netloc
        self.cookies = {}

    def request(self, method, path, body=None):
        connection = http.client.HTTPConnection(self.address, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Origin": f"http://{self.address}"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        for line in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        connection.close()
        return response.status, response.headers, text

    def sign_in(self, token):
        """The real sign-in form: its CSRF field and cookie, then the post."""
        status, _, page = self.request("GET", "/signin")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        form = urllib.parse.urlencode({"csrf": csrf, "token": token, "next": "/models"})
        status, headers, _ = self.request("POST", "/signin", body=form)
        if status != 303 or headers.get("Location") != "/models":
            raise RuntimeError(f"sign-in refused: {status}")

    @property
    def cookie_header(self):
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())


def drive(address, cookie, paths, rate, seconds, connections=16):
    """GETs `paths(i)` for i in 0..rate*seconds, request i due at start + i/rate; returns latencies (s) and errors."""
    total = int(rate * seconds)
    latencies = [None] * total
    errors = []
    start = time.perf_counter() + 0.2

    def worker(k):
        connection = http.client.HTTPConnection(address, timeout=60)
        for i in range(k, total, connections):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            try:
                connection.request("GET", paths(i), headers={"Cookie": cookie})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} on {paths(i)}")
                elif b"Sign in" in body[:2000] and b"<h1>Sign in</h1>" in body:
                    errors.append(f"signed out on {paths(i)}")
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{type(error).__name__} on {paths(i)}")
                connection.close()
                connection = http.client.HTTPConnection(address, timeout=60)
            latencies[i] = time.perf_counter() - due
        connection.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for x in latencies if x is not None], errors, time.perf_counter() - start


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def load():
    return open("/proc/loadavg").read().split()[:3]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coffer", default=cofferlib.coffer_binary())
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=25)
    parser.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "coffer-bench-web"))
    parser.add_argument("--rebuild", action="store_true", help="make the registry again even if --dir holds one")
    parser.add_argument("--only", nargs="*", help="run only these pages (version-signed, version, audit, audit-deep, model, model-deep)")
    args = parser.parse_args()
    if args.rebuild:
        shutil.rmtree(f"{args.dir}/web", ignore_errors=True)
    build(args.coffer, args.dir, args.versions, args.entries)
    work = f"{args.dir}/web"
    home = f"{work}/home"
    env = cofferlib.environment(work, passphrase="benchmark passphrase")
    token = cofferlib.check(args.coffer, "token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "2h",
                            "--identity", f"{work}/alice.key", "--home", home, env=env).strip()
    log_path = f"{work}/serve.log"
    started = time.perf_counter()
    process, base, log = cofferlib.start_server(args.coffer, home, env, log_path)
    try:
        print(f"coffer serve answered /healthz {time.perf_counter() - started:.1f} s after it was started", flush=True)
        browser = Browser(base)
        browser.sign_in(token)
        # The server walks the whole chain once at start; the page says "verifying" until that is done.
        walk_started = time.perf_counter()
        while True:
            status, _, page = browser.request("GET", "/audit")
            if status != 200:
                raise RuntimeError(f"GET /audit answered {status}")
            if 'id="chain-status">verified<' in page:
                break
            if 'id="chain-status">broken<' in page:
                raise RuntimeError("the audit page reports a broken chain: " + re.search(r'id="chain-failure">([^<]*)', page).group(1))
            time.sleep(0.25)
        print(f"audit page verified {time.perf_counter() - walk_started:.1f} s after sign-in "
              f"(the server's first full walk of the chain, started with the server)", flush=True)
        summary = re.search(r"Entries 1 to [^<]*", page).group(0)
        print(f"  {summary}")
        db = sqlite3.connect(f"file:{home}/registry.sqlite?mode=ro", uri=True)
        (versions,) = db.execute("SELECT count(*) FROM versions").fetchone()
        (entries,) = db.execute("SELECT count(*) FROM audit_log").fetchone()
        db.close()
        rng = random.Random(7)
        refs = [f"many:{rng.randrange(args.versions)}" for _ in range(int(args.rate * args.seconds))]
        pages = {
            # A version as pushed: signature, ledger record and every stored field checked, files listed. The copies
            # below stop at their missing statement ("not verified"), so this one is the page's full cost.
            "version-signed": lambda i: "/version?ref=many%3A0",
            "version": lambda i: "/version?ref=" + urllib.parse.quote(refs[i], safe=""),
            "audit": lambda i: "/audit",
            "audit-deep": lambda i: f"/audit?before={entries // 2}",
            "model": lambda i: "/model?name=many",
            "model-deep": lambda i: f"/model?name=many&before={args.versions // 2}",
        }
        address = urllib.parse.urlsplit(base).netloc
        print(f"\n# tools/bench/web: {versions:,} versions, {entries:,} audit entries (SQLite); {args.rate:g} requests/s "
              f"open-loop for {args.seconds:g} s per page, 16 connections; {os.cpu_count()} cores")
        print(f"{'page':<34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'done/s':>8} {'errors':>7}  load average (1, 5, 15 min)")
        results = {}
        for name, path in pages.items():
            if args.only and name not in args.only:
                continue
            # A short warm-up at the same rate (page cache, prepared statements), not counted.
            drive(address, browser.cookie_header, path, args.rate, 2)
            latencies, errors, elapsed = drive(address, browser.cookie_header, path, args.rate, args.seconds)
            latencies.sort()
            shown = path(0) if name != "version" else "/version?ref=many:<random copy>"
            p50, p99, worst = (percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, latencies[-1] * 1000)
            results[name] = {"p50_ms": p50, "p99_ms": p99, "max_ms": worst, "errors": len(errors)}
            print(f"{shown:<34} {p50:8.1f} {p99:8.1f} {worst:8.1f} {len(latencies) / elapsed:8.1f} {len(errors):7d}  {' '.join(load())}",
                  flush=True)
            for error in sorted(set(errors))[:5]:
                print(f"    e.g. {error}")
        verdict = all(r["p99_ms"] < 50 and r["errors"] == 0 for k, r in results.items() if k.startswith("version") or k.startswith("audit"))
        print(f"target: version and audit pages p99 < 50 ms with no error: {'met' if verdict else 'NOT met'}")
        status, _, page = browser.request("GET", "/audit")
        print("after the runs: " + re.search(r'id="chain-status">([^<]*)<', page).group(1) + "; " + re.search(r"Entries 1 to [^<]*", page).group(0))
    finally:
        cofferlib.stop_server(process)
        log.close()


if __name__ == "__main__":
    main()
