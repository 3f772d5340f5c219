"""Coffer sealed files against age: wall time (ratio of medians, same run) and peak RSS per process.

Each measurement is one process; its peak RSS is measured by GNU time (see run()).
Rounds alternate Coffer and age so both see the same machine load (machines here are shared).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402

MIB = 1 << 20


def can_drop_caches():
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


# Files read back into the page cache after it is emptied (registry_bench.py --programs-warm): the programs and their
# shared libraries, so that a cold run reads only its data from the disk, as a command run before has left things.
WARM_FILES = []


def program_files(path):
    """A program and the shared libraries it loads (ldd), for WARM_FILES."""
    path = shutil.which(path) or path
    libraries = subprocess.run(["ldd", path], capture_output=True, text=True).stdout.split()
    return [path] + [part for part in libraries if part.startswith("/") and os.path.isfile(part)]


def run(argv, stdout=None, env=None, cold=False):
    """Runs argv, returns (seconds, peak RSS in MiB); exits on a non-zero status.

    Peak RSS comes from GNU time, not from this process's wait4: Linux carries a parent's RSS high-water
    mark into a forked child across exec, so wait4 would report Python's own size for a small child.
    `cold`: empty the page cache first (as root), so that every side reads its input from the disk.
    """
    out = open(os.devnull, "wb") if stdout is None else stdout
    # Flush the page cache's dirty data first, untimed: otherwise a side that does not fsync (age) leaves its
    # writeback to slow down whatever runs next, and a side that does (a registry push) pays for it.
    os.sync()
    if cold and can_drop_caches():
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        for path in WARM_FILES:
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *argv], stdout=out, stderr=subprocess.PIPE, env=env)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
        return elapsed, int(report.read().split()[-1]) / 1024.0


def make_file(path, size):
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block if _ % 2 else os.urandom(MIB))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-4g", action="store_true", help="skip the 4 GiB peak-RSS run")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--chunk-size", default=None, help="coffer seal --chunk-size (default: Coffer's default)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="coffer-bench-", dir=args.dir)
    env = cofferlib.environment(work, "benchmark passphrase")
    try:
        plain = os.path.join(work, "plain.bin")
        make_file(plain, args.size_mib * MIB)
        # Minimal Argon2id cost for the benchmark identity: the figures measure the file format, not the passphrase KDF.
        subprocess.run([args.coffer, "keygen", "--out", os.path.join(work, "bench"), "--kdf-ops", "1", "--kdf-memory", "8"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["age-keygen", "-o", os.path.join(work, "age.key")], check=True, stderr=subprocess.DEVNULL)
        recipient = next(l.split()[-1] for l in open(os.path.join(work, "age.key")) if l.startswith("# public key"))
        pub, key = os.path.join(work, "bench.pub"), os.path.join(work, "bench.key")
        sealed, aged = os.path.join(work, "plain.cfs"), os.path.join(work, "plain.age")

        results = {k: [] for k in ("coffer seal", "age seal", "coffer unseal", "age unseal", "coffer range", "coffer range 0:0")}
        rss = {k: 0.0 for k in results}
        def record(name, measurement):
            results[name].append(measurement[0])
            rss[name] = max(rss[name], measurement[1])

        null = open(os.devnull, "wb")
        offset = (args.size_mib // 2) * MIB + 12345
        for r in range(args.rounds):
            order = [("age", "coffer"), ("coffer", "age")][r % 2]
            for who in order:
                if who == "age":
                    record("age seal", run(["age", "-r", recipient, "-o", aged, plain]))
                else:
                    chunk = ["--chunk-size", args.chunk_size] if args.chunk_size else []
                    record("coffer seal", run([args.coffer, "seal", *chunk, "--to", pub, "-o", sealed, plain], env=env))
            for who in order:
                if who == "age":
                    record("age unseal", run(["age", "-d", "-i", os.path.join(work, "age.key"), "-o", "-", aged], stdout=null))
                else:
                    record("coffer unseal", run([args.coffer, "unseal", "--identity", key, "-o", "-", sealed], stdout=null, env=env))
            # Range reads are short and so more exposed to a noisy neighbour: take five a round.
            for _ in range(5):
                record("coffer range", run([args.coffer, "unseal", "--identity", key, "--range", f"{offset}:{offset + MIB}", "-o", "-", sealed],
                                           stdout=null, env=env))
                record("coffer range 0:0", run([args.coffer, "unseal", "--identity", key, "--range", "0:0", "-o", "-", sealed],
                                               stdout=null, env=env))

        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"# tools/bench/crypto: {args.size_mib} MiB random file, {args.rounds} alternating rounds, {os.cpu_count()} cores, "
              f"chunk size {args.chunk_size or 'default'}")
        print(f"{'measure':<22}{'median s':>10}{'min s':>9}{'peak RSS MiB':>14}")
        for k in results:
            print(f"{k:<22}{med[k]:>10.3f}{min(results[k]):>9.3f}{rss[k]:>14.1f}")
        print(f"seal   coffer/age ratio of medians: {med['coffer seal'] / med['age seal']:.3f}  (target <= 1.0)")
        print(f"unseal coffer/age ratio of medians: {med['coffer unseal'] / med['age unseal']:.3f}  (target <= 1.0)")
        print(f"1 MiB --range / full unseal: {100 * med['coffer range'] / med['coffer unseal']:.2f}%  (target < 2%; "
              f"of which fixed cost of process start, identity and final-chunk check: {100 * med['coffer range 0:0'] / med['coffer unseal']:.2f}%)")

        if not args.no_4g:
            os.remove(aged)
            big = os.path.join(work, "plain4g.bin")
            with open(big, "wb") as out:
                for _ in range(4):
                    with open(plain, "rb") as src:
                        shutil.copyfileobj(src, out, 16 * MIB)
            os.remove(sealed)
            t_seal, rss_seal = run([args.coffer, "seal", "--to", pub, "-o", sealed, big], env=env)
            t_open, rss_open = run([args.coffer, "unseal", "--identity", key, "-o", "-", sealed], stdout=null, env=env)
            print(f"4 GiB: coffer seal {t_seal:.2f} s peak RSS {rss_seal:.1f} MiB; unseal {t_open:.2f} s peak RSS {rss_open:.1f} MiB"
                  f"  (target <= 64 MiB, flat from 1 GiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
