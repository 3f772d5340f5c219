"""Scale-out benchmark (issue 16): the same operations on the embedded backends (SQLite + a blob directory) and on the
scale-out ones (an OCI registry for blobs, PostgreSQL for metadata when --pg-url names a cluster), reported as ratios
of medians from the same run; GET throughput through nginx with 1, 2 and 3 replicas; 16 concurrent pulls of a large
version from the OCI registry against the directory; audit appends per second with 3 replicas appending at once.

Every figure comes from real processes on loopback: `coffer` commands (process start included), `coffer serve`
replicas, docker-registry, nginx, PostgreSQL. Python's HTTP client drives the servers from threads: on a 2-core machine
the client, nginx and the replicas share the cores, so throughput figures say what 2 cores allow, not what a replica can.
"""
import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402


def median_ms(samples):
    return statistics.median(samples) * 1000


def timed(argv, env):
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv[:3]))}: {result.stderr.decode().strip()}")
    return time.perf_counter() - started


class Registry:
    """One registry on one pair of backends, with alice as owner and publisher."""

    def __init__(self, coffer, work, name, blobs=None, metadata=None):
        self.coffer, self.name, self.metadata = coffer, name, metadata
        self.work = f"{work}/{name}"
        os.makedirs(self.work)
        self.env = cofferlib.environment(self.work, passphrase="benchmark passphrase")
        self.home = f"{self.work}/home"
        cofferlib.keygen(coffer, f"{self.work}/alice", env=self.env)
        backends = (["--blobs", blobs] if blobs else []) + (["--metadata", metadata] if metadata else [])
        self.check("init", "--home", self.home, "--owner", f"{self.work}/alice.pub", *backends)
        self.admin = ["--identity", f"{self.work}/alice.key", "--home", self.home]
        self.check("trust", "add", f"{self.work}/alice.pub", *self.admin)

    def check(self, *args):
        return cofferlib.check(self.coffer, *args, env=self.env)

    def argv(self, *args):
        return [self.coffer, *map(str, args)]

    def token(self, scope):
        return self.check("token", "create", "--principal", "alice", "--scope", scope, "--ttl", "2h", *self.admin).strip()

    def fill(self, versions):
        """Copies version many:0's rows into many:1..N-1 straight in the database (as tools/bench/registry does): query
        latency at 100,000 versions without 100,000 pushes. The copies are not in the ledger; only queries read them."""
        model = f"{self.work}/small"
        os.makedirs(model)
        open(f"{model}/w.bin", "wb").write(os.urandom(1000))
        self.check("push", "many:0", model, "--epsilon", "1", "--delta", "1e-5", *self.admin)
        self.check("alias", "set", "many@prod", "0", *self.admin)
        if self.metadata:
            sql = ("INSERT INTO versions (model_id, version, number, digest, publisher_key_id, created_at, epsilon, delta, mechanism) "
                   "SELECT v.model_id, n::text, n, v.digest, v.publisher_key_id, to_char(timestamp '2026-01-01' + n * interval '1 second', "
                   "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), random() * 10, v.delta, v.mechanism FROM versions v, generate_series(1, %d) n "
                   "WHERE v.version = '0'" % (versions - 1))
            # Statistics of versions, as autovacuum would gather them within a minute of such a load (and as `coffer
            # migrate --to` does after its copy). models, two rows, gets none from autovacuum; list MODEL does not need them.
            subprocess.run(["psql", self.metadata, "-qc", sql, "-c", "ANALYZE versions"], check=True, capture_output=True)
            return
        db = sqlite3.connect(f"{self.home}/registry.sqlite")
        (version_id,) = db.execute("SELECT id FROM versions WHERE version = '0'").fetchone()
        columns = [c[1] for c in db.execute("PRAGMA table_info(versions)") if c[1] not in ("id", "version", "number", "epsilon", "created_at")]
        rng = random.Random(1)
        with db:
            for start in range(1, versions, 10_000):
                rows = [(str(n), n, rng.uniform(0.1, 10), f"2026-01-01T00:00:{n:09d}Z") for n in range(start, min(versions, start + 10_000))]
                db.executemany(f"INSERT INTO versions (version, number, epsilon, created_at, {', '.join(columns)}) "
                               f"SELECT ?, ?, ?, ?, {', '.join(columns)} FROM versions WHERE id = {version_id}", rows)
        db.close()


def http_get_loop(address, path, token, deadline, counts, index):
    """GETs `path` on one keep-alive connection until `deadline`, counting 2xx and other answers."""
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    ok = other = 0
    while time.time() < deadline:
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            ok += 200 <= response.status < 300
            other += not 200 <= response.status < 300
        except (OSError, http.client.HTTPException):
            other += 1
            connection.close()
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
    counts[index] = (ok, other)


def hammer(address, path, token, seconds, threads):
    counts = [None] * threads
    deadline = time.time() + seconds
    workers = [threading.Thread(target=http_get_loop, args=(address, path, token, deadline, counts, i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(c[0] for c in counts) / seconds, sum(c[1] for c in counts)


def per_operation(args, registries):
    """Push and pull of 1 MiB, list/show/list --where at N versions, alias resolve over HTTP; medians per backend."""
    figures = {}
    for r in registries:
        f = figures[r.name] = {}
        samples = {"push 1 MiB": [], "pull 1 MiB": []}
        for i in range(args.rounds):
            model = f"{r.work}/m{i}"
            os.makedirs(model)
            open(f"{model}/w.bin", "wb").write(os.urandom(1 << 20))
            samples["push 1 MiB"].append(timed(r.argv("push", "one", model, *r.admin), r.env))
            out = f"{r.work}/out{i}"
            samples["pull 1 MiB"].append(timed(r.argv("pull", f"one:{i + 1}", "--out", out, *r.admin), r.env))
            shutil.rmtree(out)
        r.fill(args.versions)
        for label, argv in (("list", ["list"]), ("show", ["show", f"many:{args.versions // 2}"]),
                            ("list --where", ["list", "many", "--where", "epsilon<=3 and delta<=1e-5"])):
            samples[label] = [timed(r.argv(*argv, "--home", r.home), r.env) for _ in range(args.rounds * 2)]
        token = r.token("read")
        process, base, _ = cofferlib.start_server(r.coffer, r.home, r.env, f"{r.work}/serve.log")
        try:
            address = base.split("//")[1]
            connection = http.client.HTTPConnection(*address.split(":"), timeout=30)
            resolve = []
            for _ in range(200):
                started = time.perf_counter()
                connection.request("GET", "/v1/version?ref=many@prod", headers={"Authorization": f"Bearer {token}"})
                response = connection.getresponse()
                response.read()
                resolve.append(time.perf_counter() - started)
                assert response.status == 200, response.status
            samples["alias resolve (HTTP)"] = resolve
        finally:
            process.terminate()
            process.wait()
        for label, values in samples.items():
            f[label] = median_ms(values)
    anchor = registries[0].name
    print(f"# per operation, median ms ({args.rounds} pushes/pulls, {args.rounds * 2} queries, 200 HTTP resolves; CLI figures "
          f"include process start); ratio against {anchor} in this run; list/show at {args.versions} versions (target < 50 ms)")
    print(f"{'operation':<22}" + "".join(f"{r.name:>24}" for r in registries))
    for label in figures[anchor]:
        cells = [f"{figures[r.name][label]:8.1f} ({figures[r.name][label] / figures[anchor][label]:4.2f}x)" for r in registries]
        print(f"{label:<22}" + "".join(f"{c:>24}" for c in cells))
    return figures


def replicas_throughput(args, r):
    """GET /v1/version?ref=many@prod through nginx in front of 1, 2 and 3 replicas."""
    token = r.token("read")
    servers = [cofferlib.start_server(r.coffer, r.home, r.env, f"{r.work}/replica-{n}.log") for n in range(3)]
    rates = {}
    try:
        for count in (1, 2, 3):
            upstreams = [base.split("//")[1] for _, base, _ in servers[:count]]
            with cofferlib.nginx(upstreams) as front:
                rates[count] = hammer(front.split("//")[1], "/v1/version?ref=many@prod", token, args.seconds, args.clients)
    finally:
        for process, _, _ in servers:
            process.terminate()
            process.wait()
    print(f"# GET /v1/version through nginx on {r.name}, {args.clients} keep-alive client threads, {args.seconds:.0f} s each, "
          f"{os.cpu_count()} cores shared by client, nginx and replicas")
    for count, (rate, failed) in rates.items():
        print(f"{count} replica(s): {rate:8.0f} requests/s ({rate / rates[1][0]:4.2f}x of 1), {failed} failed")


def audit_appends(args, r):
    """Three replicas each appending audit entries at once (a read token asking for the admin-only audit log is refused
    and the refusal audited, one entry per request): entries per second, then `audit verify` of the one chain."""
    token = r.token("read")
    before = len(json.loads(r.check("audit", "show", "--json", "--home", r.home)))
    servers = [cofferlib.start_server(r.coffer, r.home, r.env, f"{r.work}/audit-{n}.log") for n in range(3)]
    counts = [None] * 3
    deadline = time.time() + args.seconds
    try:
        workers = [threading.Thread(target=lambda i=i, base=base: counts.__setitem__(i, hammer(base.split("//")[1], "/v1/audit", token,
                                                                                               max(0.1, deadline - time.time()), 2)))
                   for i, (_, base, _) in enumerate(servers)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        for process, _, _ in servers:
            process.terminate()
            process.wait()
    after = len(json.loads(r.check("audit", "show", "--json", "--home", r.home)))
    verify = cofferlib.run(r.coffer, "audit", "verify", "--home", r.home, env=r.env)
    print(f"# audit appends with 3 replicas at once on {r.name}: {(after - before) / args.seconds:.0f} entries/s "
          f"({after - before} in {args.seconds:.0f} s); audit verify: {(verify.stdout or verify.stderr).decode().strip()}")


def concurrent_pulls(args, registries):
    """16 `coffer pull` processes of one large version at once: aggregate MiB/s per backend, ratio to the first."""
    rates = {}
    for r in registries:
        model = f"{r.work}/big"
        os.makedirs(model)
        with open(f"{model}/weights.bin", "wb") as f:
            for _ in range(args.pull_mib):
                f.write(os.urandom(1 << 20))
        r.check("push", "big", model, *r.admin)
        shutil.rmtree(model)
        started = time.perf_counter()
        processes = [subprocess.Popen(r.argv("pull", "big:1", "--out", f"{r.work}/pulled-{n}", *r.admin), env=r.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in range(args.pullers)]
        failed = [p for p in processes if p.wait() != 0]
        elapsed = time.perf_counter() - started
        for n in range(args.pullers):
            shutil.rmtree(f"{r.work}/pulled-{n}", ignore_errors=True)
        if failed:
            raise RuntimeError(f"pull on {r.name}: {failed[0].stderr.read().decode().strip()}")
        rates[r.name] = args.pullers * args.pull_mib / elapsed
    anchor = registries[0].name
    print(f"# {args.pullers} concurrent pulls of a {args.pull_mib} MiB version (aggregate, target OCI >= 0.8x the directory)")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:8.0f} MiB/s  ({rate / rates[anchor]:4.2f}x)")


def migration(args, work, oci):
    """`coffer migrate --to` of an embedded registry holding N real versions (1 MiB each, every one in the ledger and
    the audit log) onto PostgreSQL + OCI: wall time, against an fsck of the source in the same run (which reads every
    row and blob and checks every signature too), and per version."""
    source = Registry(args.coffer, work, "migrate-source")
    model = f"{source.work}/model"
    os.makedirs(model)
    for n in range(args.migrate_versions):
        with open(f"{model}/w.bin", "wb") as f:
            f.write(os.urandom(1 << 20))
        source.check("push", "moved", model, "--epsilon", "1", "--delta", "1e-5", *source.admin)
    fsck = timed(source.argv("fsck", "--home", source.home), source.env)
    database = cofferlib.postgres_database("coffer_migrate", args.pg_url)
    started = time.perf_counter()
    copied = source.check("migrate", "--home", source.home, "--to", f"{source.work}/moved", "--metadata", database,
                          "--blobs", f"oci+http://{oci}/migrated").strip()
    elapsed = time.perf_counter() - started
    clean = "clean" in source.check("fsck", "--home", f"{source.work}/moved")
    print(f"# coffer migrate --to of {args.migrate_versions} versions of 1 MiB (SQLite + directory -> PostgreSQL + OCI)")
    print(f"migrate {elapsed:6.2f} s ({elapsed / args.migrate_versions * 1000:.0f} ms per version, {elapsed / fsck:.2f}x an fsck of the "
          f"source: {fsck:.2f} s); the copy's fsck clean: {clean}")
    print(f"  {copied}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--pg-url", default=os.environ.get("COFFER_PG_URL"), help="a PostgreSQL URL whose user may create databases")
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pullers", type=int, default=16)
    parser.add_argument("--pull-mib", type=int, default=256)
    parser.add_argument("--migrate-versions", type=int, default=200)
    parser.add_argument("--only", choices=["operations", "replicas", "audit", "pulls", "migrate"], help="run one part alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coffer-bench-scale-") as work, contextlib.ExitStack() as stack:
        oci = stack.enter_context(cofferlib.oci_registry())
        registries = [Registry(args.coffer, work, "sqlite+directory"),
                      Registry(args.coffer, work, "sqlite+oci", blobs=f"oci+http://{oci}/scale-sqlite")]
        if args.pg_url:
            database = f"coffer_scale_{os.urandom(4).hex()}"
            subprocess.run(["psql", args.pg_url, "-qc", f"CREATE DATABASE {database}"], check=True, capture_output=True)
            url = args.pg_url.rsplit("/", 1)[0] + "/" + database
            registries.append(Registry(args.coffer, work, "postgresql+oci", blobs=f"oci+http://{oci}/scale-pg", metadata=url))
        print(f"# tools/bench/scale on {os.cpu_count()} cores; backends: {', '.join(r.name for r in registries)}"
              f"{'' if args.pg_url else ' (no PostgreSQL: pass --pg-url or COFFER_PG_URL)'}")
        runs = lambda part: args.only in (None, part)
        if runs("operations"):
            per_operation(args, registries)
        if runs("replicas"):
            replicas_throughput(args, registries[-1])
        if runs("audit"):
            audit_appends(args, registries[-1])
        if runs("pulls"):
            concurrent_pulls(args, [registries[0], registries[-1]])
        if runs("migrate") and args.pg_url:
            migration(args, work, oci)


if __name__ == "__main__":
    main()
