"""Crash campaign: a push killed at any moment leaves the whole version or none of it.

Each trial starts `coffer push` of a model directory (several MiB, so the push takes a while), and either sends it
SIGKILL after a random delay, or copies the registry directory at a random instant while the push runs (a crude
power-loss image: whatever had reached the files by then). Then `fsck` runs on the registry (or the copy): no
problem may be reported, and every version listed must verify. At the end `gc --grace 0` must leave no orphan.

Scale-out: `--oci` keeps the blobs in a docker-registry the campaign starts (orphans are then found through the
pending-blob journal); `--replica` pushes over HTTP through `coffer serve` and SIGKILLs the server, not the client,
mid-push, restarting it after each trial. Registry images are taken only of the embedded registry.
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402


def run(coffer, *args, env):
    return subprocess.run([coffer, *map(str, args)], env=env, capture_output=True)


def image_of(home, image):
    """Copies the registry as it is at this instant; files that vanish meanwhile are skipped, as is the WAL's
    shared-memory index (SQLite rebuilds it)."""
    for root, _, files in os.walk(home):
        target = os.path.join(image, os.path.relpath(root, home))
        os.makedirs(target, exist_ok=True)
        for name in files:
            if name.endswith("-shm"):
                continue
            try:
                shutil.copyfile(os.path.join(root, name), os.path.join(target, name))
            except FileNotFoundError:
                pass


def fsck(coffer, home, env):
    result = run(coffer, "fsck", "--json", "--home", home, env=env)
    return json.loads(result.stdout) if result.stdout else {"problems": [result.stderr.decode()]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--oci", action="store_true", help="blobs in a docker-registry the campaign starts")
    parser.add_argument("--replica", action="store_true", help="push through coffer serve and SIGKILL the server mid-push")
    parser.add_argument("--metadata", help="a postgres:// URL of an empty database of its own for the registry's metadata")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        env = cofferlib.environment(work, passphrase="campaign passphrase")
        home = f"{work}/home"
        backends = ["--blobs", f"oci+http://{stack.enter_context(cofferlib.oci_registry())}/crash"] if args.oci else []
        backends += ["--metadata", args.metadata] if args.metadata else []
        run(args.coffer, "keygen", "--out", f"{work}/alice", "--kdf-ops", "1", "--kdf-memory", "8192", env=env)
        run(args.coffer, "init", "--home", home, *(["--owner", f"{work}/alice.pub"] if args.replica else []), *backends, env=env)
        admin = ["--identity", f"{work}/alice.key"] if args.replica else []
        run(args.coffer, "trust", "add", f"{work}/alice.pub", "--home", home, *admin, env=env)
        os.makedirs(f"{work}/model")
        for i in range(3):
            with open(f"{work}/model/part{i}.bin", "wb") as f:
                f.write(os.urandom(3 << 20))
        push = [args.coffer, "push", "m", f"{work}/model", "--identity", f"{work}/alice.key", "--home", home]
        server = None
        if args.replica:
            token = run(args.coffer, "token", "create", "--principal", "alice", "--scope", "publish", "--ttl", "2h", "--home", home, *admin,
                        env=env).stdout.decode().strip()
            server = list(cofferlib.start_server(args.coffer, home, env, f"{work}/serve.log"))
            port = server[1].rsplit(":", 1)[1]
            push = [args.coffer, "push", "m", f"{work}/model", "--identity", f"{work}/alice.key", "--registry", server[1], "--token", token,
                    "--registry-key", f"{home}/registry.pub"]
        # How long a whole push takes here, to spread the kills over it.
        start = time.perf_counter()
        if subprocess.run(push, env=env, capture_output=True).returncode:
            sys.exit("the first push failed")
        span = time.perf_counter() - start
        killed = imaged = clean = 0
        problems = []
        for trial in range(args.trials):
            process = subprocess.Popen(push, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, span * 1.2))
            image = None
            if server:
                server[0].send_signal(signal.SIGKILL)
                server[0].wait()
                process.wait()
                killed += 1
                server = list(cofferlib.start_server(args.coffer, home, env, f"{work}/serve.log", port=int(port)))
            elif trial % 2 == 1 and not args.oci and not args.metadata:
                image = f"{work}/image"
                shutil.rmtree(image, ignore_errors=True)
                image_of(home, image)
                process.wait()
                imaged += 1
            else:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed += 1
            # An image is checked as the machine restored from it would check it: by a client that has not seen the
            # registry go further (the live registry's client would rightly call the older image a rollback).
            target = image or home
            checker = dict(env, COFFER_STATE_DIR=f"{work}/client-{trial}") if image else env
            report = fsck(args.coffer, target, checker)
            if report["problems"]:
                problems.append(f"trial {trial} ({'image' if image else 'kill'}): {report['problems']}")
            else:
                clean += 1
        if server:
            server[0].terminate()
            server[0].wait()
        listed = json.loads(run(args.coffer, "list", "m", "--json", "--limit", "100000", "--home", home, env=env).stdout)
        partial = [v["version"] for v in listed if run(args.coffer, "verify", f"m:{v['version']}", "--home", home, env=env).returncode]
        before = fsck(args.coffer, home, env)
        collected = run(args.coffer, "gc", "--grace", "0", "--home", home, env=env).stdout.decode().strip()
        after = fsck(args.coffer, home, env)
        mode = (f"{'PostgreSQL' if args.metadata else 'SQLite'} metadata, {'OCI registry' if args.oci else 'directory'} blobs, "
                f"{'server' if args.replica else 'push'} killed")
        print(f"# tools/campaign/crash: seed {seed}; {mode}; a whole push takes {span:.2f} s here")
        print(f"tried {args.trials} ({killed} SIGKILLed, {imaged} copied mid-push)  fsck clean {clean}  "
              f"versions {len(listed)}, partial {len(partial)}  orphans reclaimed by gc "
              f"{before['orphan_blobs'] + before['temporary_files']}, left {after['orphan_blobs'] + after['temporary_files']}")
        print(f"gc: {collected}")
        for line in problems[:10]:
            print(f"PROBLEM {line}")
        ok = clean == args.trials and not partial and not after["orphan_blobs"] and not after["temporary_files"] and not after["problems"]
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
