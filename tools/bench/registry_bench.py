"""Registry push/pull against age (ratio of medians, same run), peak RSS, and query latency on 100,000 versions.

push = SHA-256 of plaintext and ciphertext + encryption + signatures + durable blob + SQLite commit, against
`age -r` of the same file; pull = signature and row checks + decryption + digest checks + writing the file,
against `age -d`. Both sides write their output to the same disk. A second anchor, age followed by `sync FILE` (an
fsync of its output), separates the cost of the format from that of durability: a push must fsync its blob before
committing the version, and a pull its files before they appear, while age leaves its output in the page cache.
As root the page cache is emptied before every timed run: a push writes its blob past the cache (O_DIRECT), so a
pull that followed it would read from the disk while age -d read its file from memory.
"""
import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402
import crypto_bench  # noqa: E402
from crypto_bench import MIB, can_drop_caches, make_file, run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--sizes", default=None, help="comma-separated MiB sizes to sweep (e.g. 16,64,256,1024,4096) instead of --size-mib")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-4g", action="store_true")
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--json-out", default=None, help="also write the figures per size as JSON")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--agent-sizes", default="1,16", help="comma-separated MiB sizes for the agent lines ('' to skip)")
    parser.add_argument("--agent-only", action="store_true", help="run only the agent lines")
    parser.add_argument("--programs-warm", action="store_true",
                        help="after emptying the page cache, read coffer, coffer-run, age, sh and their libraries back (untimed): only the data is cold")
    parser.add_argument("--no-queries", action="store_true", help="skip list/show/--where over --versions versions")
    args = parser.parse_args()
    if args.programs_warm:
        launcher = os.path.join(os.path.dirname(args.coffer), "coffer-run")
        crypto_bench.WARM_FILES[:] = sum((crypto_bench.program_files(p) for p in (args.coffer, launcher, "age", "sh", "sync")), [])
        print(f"# programs warm: {len(crypto_bench.WARM_FILES)} files read back after each emptying of the page cache")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.size_mib]

    work = tempfile.mkdtemp(prefix="coffer-bench-registry-", dir=args.dir)
    home = os.path.join(work, "home")
    env = cofferlib.environment(work, "benchmark passphrase", COFFER_HOME=home)
    null = open(os.devnull, "wb")
    try:
        # Minimal Argon2id cost for the publisher: the figures measure the registry, not the passphrase KDF.
        subprocess.run([args.coffer, "keygen", "--out", os.path.join(work, "pub"), "--kdf-ops", "1", "--kdf-memory", "8"], check=True, env=env, stdout=null)
        subprocess.run(["age-keygen", "-o", os.path.join(work, "age.key")], check=True, stderr=subprocess.DEVNULL)
        recipient = next(l.split()[-1] for l in open(os.path.join(work, "age.key")) if l.startswith("# public key"))
        key = os.path.join(work, "pub.key")
        if args.agent_sizes:
            agent_lines(args, work, env, null, recipient, [int(s) for s in args.agent_sizes.split(",")])
        if args.agent_only:
            return
        startup_lines(args, env, null)
        figures = {}
        for size in sizes:
            figures[size] = push_pull(args, work, env, null, key, recipient, size)
        if args.json_out:
            json.dump({"cores": os.cpu_count(), "rounds": args.rounds, "sizes": figures}, open(args.json_out, "w"), indent=1)

        if not args.no_4g and 4096 not in sizes:
            big = os.path.join(work, "weights4g.bin")
            make_file(big, 4096 * MIB)
            t_push, r_push = run([args.coffer, "push", "bench4g", big, "--identity", key], env=env)
            os.remove(big)
            out = os.path.join(work, "out4g")
            os.makedirs(out)
            t_pull, r_pull = run([args.coffer, "pull", "bench4g", "--identity", key, "--out", out], env=env)
            shutil.rmtree(out)
            print(f"4 GiB: push {t_push:.2f} s peak RSS {r_push:.1f} MiB; pull {t_pull:.2f} s peak RSS {r_pull:.1f} MiB "
                  f"(target <= 64 MiB, flat)")

        if not args.no_queries:
            queries(args, work, env, null)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def startup_lines(args, env, null, warm_runs=21, cold_runs=3):
    """What a command pays before its work: `coffer --version` against `age --version`, with the programs in the page
    cache (as after any earlier command; target < 10 ms) and read from the disk (the cache emptied, programs too).
    Warm runs are timed around the bare process: GNU time, which run() wraps around each for its peak RSS, costs a
    process start of its own, as much as the figure measured."""
    programs = {"coffer --version": [args.coffer, "--version"], "age --version": ["age", "--version"]}
    def in_turn(i):  # which program goes first alternates
        return list(programs.items())[::1 if i % 2 == 0 else -1]
    warm = {k: [] for k in programs}
    for i in range(warm_runs):
        for name, argv in in_turn(i):
            started = time.perf_counter()
            subprocess.run(argv, check=True, env=env, stdout=null)
            warm[name].append(time.perf_counter() - started)
    rss = {name: run(argv, env=env)[1] for name, argv in programs.items()}
    cold = {k: [] for k in programs}
    kept, crypto_bench.WARM_FILES[:] = list(crypto_bench.WARM_FILES), []
    try:
        for i in range(cold_runs if can_drop_caches() else 0):
            for name, argv in in_turn(i):
                cold[name].append(run(argv, env=env, cold=True)[0])
    finally:
        crypto_bench.WARM_FILES[:] = kept
    print(f"# program start: {warm_runs} warm runs each, alternating"
          + (f"; {cold_runs} with the page cache emptied, programs included (under GNU time)" if cold["age --version"] else ""))
    for name in programs:
        line = (f"{name:<18} warm {statistics.median(warm[name]) * 1e3:6.1f} ms median, {min(warm[name]) * 1e3:6.1f} ms min, "
                f"peak RSS {rss[name]:5.1f} MiB")
        if cold[name]:
            line += f"; cold {statistics.median(cold[name]) * 1e3:6.1f} ms median"
        print(line + ("  (target < 10 ms warm)" if name.startswith("coffer") else ""))


def push_pull(args, work, env, null, key, recipient, size_mib):
    """`coffer push` against `age -r` and `coffer pull` against `age -d` on one file of `size_mib`, rounds alternating
    which side goes first; prints and returns the median and minimum seconds and the peak RSS of each."""
    plain = os.path.join(work, "weights.bin")
    make_file(plain, size_mib * MIB)
    home = env["COFFER_HOME"]
    times = {k: [] for k in ("coffer push", "age -r", "age -r + fsync", "coffer pull", "age -d", "age -d + fsync")}
    rss = {k: 0.0 for k in times}
    def record(name, m):
        times[name].append(m[0])
        rss[name] = max(rss[name], m[1])

    for r in range(args.rounds):
        # A fresh registry each round, as age overwrites its one output: neither side accumulates gigabytes
        # of dirty pages that would slow the other down.
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run([args.coffer, "init"], check=True, env=env, stdout=null)
        subprocess.run([args.coffer, "trust", "add", os.path.join(work, "pub.pub")], check=True, env=env, stdout=null)
        for who in (["age", "coffer"] if r % 2 == 0 else ["coffer", "age"]):
            if who == "age":
                record("age -r", run(["age", "-r", recipient, "-o", os.path.join(work, "w.age"), plain], cold=True))
                sealed = os.path.join(work, "w.age")
                record("age -r + fsync", run(["sh", "-c", 'age -r "$0" -o "$1" "$2" && sync "$1"', recipient, sealed, plain], cold=True))
            else:
                record("coffer push", run([args.coffer, "push", f"bench:{r + 1}", plain, "--identity", key], env=env, cold=True))
        for who in (["age", "coffer"] if r % 2 == 0 else ["coffer", "age"]):
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            if who == "age":
                record("age -d", run(["age", "-d", "-i", os.path.join(work, "age.key"), "-o", os.path.join(out, "weights.bin"), os.path.join(work, "w.age")], cold=True))
                record("age -d + fsync", run(["sh", "-c", 'age -d -i "$0" -o "$1" "$2" && sync "$1"', os.path.join(work, "age.key"),
                                              os.path.join(out, "weights.bin"), os.path.join(work, "w.age")], cold=True))
            else:
                record("coffer pull", run([args.coffer, "pull", f"bench:{r + 1}", "--identity", key, "--out", out], env=env, cold=True))
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    os.remove(os.path.join(work, "w.age"))
    os.remove(plain)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# tools/bench/registry: {size_mib} MiB file, {args.rounds} alternating rounds, {os.cpu_count()} cores, "
          + ("page cache emptied before each timed run" if can_drop_caches() else "page cache as it is (not root)"))
    print(f"{'measure':<16}{'median s':>10}{'min s':>9}{'MiB/s':>9}{'peak RSS MiB':>14}")
    for k in times:
        print(f"{k:<16}{med[k]:>10.3f}{min(times[k]):>9.3f}{size_mib / med[k]:>9.0f}{rss[k]:>14.1f}")
    # Each round times both sides back to back, so a per-round ratio cancels the machine's drift between rounds.
    paired = {side: statistics.median(c / a for c, a in zip(times[f"coffer {side}"], times[anchor]))
              for side, anchor in (("push", "age -r"), ("pull", "age -d"))}
    print(f"push / age -r, {size_mib} MiB, ratio of medians: {med['coffer push'] / med['age -r']:.3f}, "
          f"median of per-round ratios: {paired['push']:.3f}  (target <= 1.2)")
    print(f"pull / age -d, {size_mib} MiB, ratio of medians: {med['coffer pull'] / med['age -d']:.3f}, "
          f"median of per-round ratios: {paired['pull']:.3f}  (target <= 1.2)")
    print("samples, s: " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    print(f"push / (age -r + fsync), {size_mib} MiB, ratio of medians: {med['coffer push'] / med['age -r + fsync']:.3f}  (equal durability)")
    print(f"pull / (age -d + fsync), {size_mib} MiB, ratio of medians: {med['coffer pull'] / med['age -d + fsync']:.3f}  (equal durability)")
    return {k: {"median_s": med[k], "min_s": min(times[k]), "peak_rss_mib": rss[k]} for k in times} | {"paired_ratio": paired}


# The anchors of the agent lines, run by sh with $0 the recipient (-r) or identity (-d), $1 the output, $2 the input:
# age alone (issue 17's anchor from 16 MiB on) and age followed by an fsync of its output (the durability a push and
# a pull must have, the anchor at 1 MiB).
AGE_SCRIPTS = {
    flag: {f"age -{flag}": f'{age} "$0" -o "$1" "$2"', f"age -{flag} + fsync": f'{age} "$0" -o "$1" "$2" && sync "$1"'}
    for flag, age in (("r", "age -r"), ("d", "age -d -i"))
}


def agent_lines(args, work, env, null, recipient, sizes):
    """Push and pull with the identity in `coffer agent`, run by `coffer` itself and by `coffer-run` through `coffer
    runner`, against the same commands unlocking the identity with its passphrase (Coffer's default Argon2id cost, 3
    passes over 32 MiB, as a user's key has it) and against age alone and age + fsync, rounds alternating the order;
    prints the medians and the same-run ratios."""
    key = os.path.join(work, "agent-id.key")
    subprocess.run([args.coffer, "keygen", "--out", os.path.join(work, "agent-id")], check=True, env=env, stdout=null)
    runtime = tempfile.mkdtemp(prefix="rt-", dir=work)
    socket, pid = cofferlib.start_service(args.coffer, "agent", dict(env, XDG_RUNTIME_DIR=runtime))
    runner_socket, runner_pid = cofferlib.start_service(args.coffer, "runner", dict(env, XDG_RUNTIME_DIR=runtime))
    with_agent = {k: v for k, v in env.items() if k != "COFFER_PASSPHRASE"} | {"COFFER_AGENT_SOCK": socket}
    without_agent = {k: v for k, v in env.items() if k != "COFFER_AGENT_SOCK"}
    launcher = os.path.join(os.path.dirname(args.coffer), "coffer-run")
    # (name, program, environment); None runs age.
    sides = [("agent", args.coffer, with_agent), ("agent + runner", launcher, with_agent | {"COFFER_RUNNER_SOCK": runner_socket}),
             ("passphrase", args.coffer, without_agent), ("age", None, None)]
    try:
        subprocess.run([args.coffer, "agent", "add", key], check=True, env=dict(with_agent, COFFER_PASSPHRASE=env["COFFER_PASSPHRASE"]), stderr=null)
        home = env["COFFER_HOME"]
        for size_mib in sizes:
            plain = os.path.join(work, "weights.bin")
            make_file(plain, size_mib * MIB)
            anchors = [name for scripts in AGE_SCRIPTS.values() for name in scripts]
            names = [f"{op}, {side}" for op in ("push", "pull") for side, _, _ in sides[:-1]] + anchors
            times = {k: [] for k in names}
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run([args.coffer, "init"], check=True, env=env, stdout=null)
            subprocess.run([args.coffer, "trust", "add", os.path.join(work, "agent-id.pub")], check=True, env=env, stdout=null)
            n = 0
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                versions = {}
                for side, program, side_env in order:
                    if program is None:
                        sealed = os.path.join(work, "w.age")
                        for name, script in AGE_SCRIPTS["r"].items():
                            # A new file, as a push's blob is: age -r over its last output came out slower than
                            # age -r + fsync (ext4 flushes a truncated file at close, auto_da_alloc: the likely cause).
                            if os.path.exists(sealed):
                                os.remove(sealed)
                            times[name].append(run(["sh", "-c", script, recipient, sealed, plain], cold=True)[0])
                    else:
                        n += 1
                        versions[side] = n
                        times[f"push, {side}"].append(run([program, "push", f"agentbench:{n}", plain, "--identity", key], env=side_env, cold=True)[0])
                for side, program, side_env in order:
                    out = os.path.join(work, "out")
                    shutil.rmtree(out, ignore_errors=True)
                    os.makedirs(out)
                    if program is None:
                        for name, script in AGE_SCRIPTS["d"].items():
                            times[name].append(run(["sh", "-c", script, os.path.join(work, "age.key"), os.path.join(out, "weights.bin"),
                                                    os.path.join(work, "w.age")], cold=True)[0])
                    else:
                        times[f"pull, {side}"].append(run([program, "pull", f"agentbench:{versions[side]}", "--identity", key, "--out", out],
                                                          env=side_env, cold=True)[0])
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            os.remove(plain)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"# agent lines: {size_mib} MiB, {args.rounds} alternating rounds; identity at Coffer's default Argon2id cost")
            for k in names:
                print(f"{k:<22}{med[k] * 1000:>10.1f} ms median{min(times[k]) * 1000:>10.1f} ms min")
            for op, flag in (("push", "r"), ("pull", "d")):
                anchor = f"age -{flag} + fsync"
                print(f"{op} {size_mib} MiB: agent / ({anchor}) {med[f'{op}, agent'] / med[anchor]:.2f}, "
                      f"agent + runner / ({anchor}) {med[f'{op}, agent + runner'] / med[anchor]:.2f}, "
                      f"passphrase / ({anchor}) {med[f'{op}, passphrase'] / med[anchor]:.2f}, "
                      f"agent + runner / agent {med[f'{op}, agent + runner'] / med[f'{op}, agent']:.2f}")
                # Per round, the sides ran back to back: the median of those ratios follows the machine's drift less
                # than a ratio of medians does.
                paired = {a: statistics.median(x / y for x, y in zip(times[f"{op}, agent + runner"], times[a])) for a in AGE_SCRIPTS[flag]}
                print(f"{op} {size_mib} MiB, agent + runner, median of per-round ratios: "
                      + ", ".join(f"/ ({a}) {r:.2f}" for a, r in paired.items())
                      + f"; durability alone: (age -{flag} + fsync) / age -{flag} {statistics.median(x / y for x, y in zip(times[anchor], times[f'age -{flag}'])):.2f}")
    finally:
        subprocess.run([args.coffer, "agent", "stop"], env=with_agent, stdout=null, stderr=null)
        subprocess.run([args.coffer, "runner", "stop"], env=dict(env, COFFER_RUNNER_SOCK=runner_socket), stdout=null, stderr=null)
        for service in (pid, runner_pid):
            try:
                os.kill(service, 9)
            except ProcessLookupError:
                pass


def queries(args, work, env, null):
    """Copies one real version's rows into `versions` rows, then times list, show and list --where on the CLI."""
    small = os.path.join(work, "small")
    os.makedirs(small)
    open(os.path.join(small, "w.bin"), "wb").write(os.urandom(1000))
    subprocess.run([args.coffer, "push", "many:0", small, "--identity", os.path.join(work, "pub.key"), "--epsilon", "1", "--delta", "1e-5"],
                   check=True, env=env, stdout=null)
    db = sqlite3.connect(os.path.join(work, "home", "registry.sqlite"))
    (model_id, version_id) = db.execute("SELECT model_id, id FROM versions WHERE version = '0' AND model_id = (SELECT id FROM models WHERE name = 'many')").fetchone()
    columns = [c[1] for c in db.execute("PRAGMA table_info(versions)") if c[1] not in ("id", "version", "number", "epsilon", "created_at")]
    rng = random.Random(1)
    with db:
        for start in range(1, args.versions, 10_000):
            rows = [(str(n), n, rng.uniform(0.1, 10), f"2026-01-01T00:00:{n:09d}Z") for n in range(start, min(args.versions, start + 10_000))]
            db.executemany(f"INSERT INTO versions (version, number, epsilon, created_at, {', '.join(columns)}) "
                           f"SELECT ?, ?, ?, ?, {', '.join(columns)} FROM versions WHERE id = {version_id}", rows)
        db.execute("INSERT INTO files (version_id, path, size, plaintext_sha256, sealed_sha256, sealed_size) "
                   "SELECT v.id, f.path, f.size, f.plaintext_sha256, f.sealed_sha256, f.sealed_size FROM versions v, files f "
                   f"WHERE v.model_id = {model_id} AND v.id != {version_id} AND f.version_id = {version_id}")
    total = db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    db.close()
    print(f"# queries on {total} versions (CLI wall time, process start included; median of 15)")
    for label, argv in (("list", ["list"]), ("list --json", ["list", "--json"]), ("show", ["show", f"many:{args.versions // 2}"]),
                        ("list --where 'epsilon<=3'", ["list", "--where", "epsilon<=3"]), ("list many --where ...", ["list", "many", "--where", "epsilon<=3 and delta<=1e-5"])):
        samples = [run([args.coffer, *argv], env=env)[0] * 1000 for _ in range(15)]
        print(f"{label:<28}{statistics.median(samples):>8.1f} ms  (target < 50 ms)")


if __name__ == "__main__":
    main()
