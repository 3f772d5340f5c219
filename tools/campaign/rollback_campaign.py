"""Rollback campaign: older copies of a registry's database and blob store, restored at random, are refused by every
client that saw the registry further along, and release nothing that the newest state withholds.

A registry owned by alice goes through a history (pushes, alias moves, bob's grants given and revoked, a budget
charge, a key rotation, a rekey, an erasure), and a copy of its directory is taken after every step. Each trial
restores one older copy (the whole directory, the database alone, or the blob store alone) and runs, as the user who
saw the newest state: pull of the alias and of the erased version, verify, budget show, audit verify and fsck. A
trial passes when every command either refuses (naming the rollback or the missing piece in one line) or answers
exactly as the newest state would (same version, same bytes). Plaintext of the erased version, or released to bob
after his grants were revoked, counts as a leak. Whole-directory restores are also shown to a first-time client,
which cannot tell an old state from a new one (the Update Framework's clients need their memory too): those are
counted apart, as the design's stated limit.
"""
import argparse
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from cofferlib import check, environment, keygen, run  # noqa: E402


def files_of(directory):
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            if name != "model.sig":
                path = os.path.join(root, name)
                out[os.path.relpath(path, directory)] = open(path, "rb").read()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    coffer = args.coffer
    with tempfile.TemporaryDirectory() as work:
        env = environment(work)
        for name in ("alice", "bob"):
            keygen(coffer, f"{work}/{name}", env)
        home = f"{work}/home"
        admin = ["--identity", f"{work}/alice.key", "--home", home]
        snapshots = []

        def snapshot(label):
            target = f"{work}/snap-{len(snapshots)}"
            shutil.copytree(home, target)
            snapshots.append((label, target))

        def model(n):
            path = f"{work}/model-{n}"
            os.makedirs(path, exist_ok=True)
            with open(f"{path}/weights.bin", "wb") as f:
                f.write(bytes([n]) * 50_000 + os.urandom(500))
            return path

        contents = {}

        def push(n, *extra):
            path = model(n)
            pushed = check(coffer, "push", "m", path, *extra, *admin, env=env).split()[1]
            contents[pushed] = files_of(path)
            return pushed

        check(coffer, "init", "--home", home, "--owner", f"{work}/alice.pub", env=env)
        check(coffer, "principal", "add", "bob", f"{work}/bob.pub", "--role", "reader", "--role", "decrypt", *admin, env=env)
        snapshot("bob added")
        push(1, "--recipient", f"{work}/bob.pub", "--alias", "prod")
        snapshot("m:1 on prod")
        push(2, "--recipient", f"{work}/bob.pub")
        snapshot("m:2 pushed")
        check(coffer, "alias", "set", "m@prod", "2", *admin, env=env)
        snapshot("prod moved to 2")
        check(coffer, "budget", "set", "d", "--epsilon", "1", "--delta", "1e-5", *admin, env=env)
        with open(f"{work}/history.json", "w") as f:
            f.write('{"segments": [{"sample_rate": 0.01, "noise_multiplier": 1.5, "steps": 300}], "standardisation": "public", "batch_sampling": "secret"}')
        push(3, "--dataset", "d", "--privacy-from", f"{work}/history.json", "--delta", "1e-5")
        snapshot("m:3 charged to d")
        check(coffer, "key", "rotate", *admin, env=env)
        snapshot("registry key rotated")
        check(coffer, "rekey", "m:2", *admin, env=env)
        snapshot("m:2 re-encrypted")
        check(coffer, "erase", "m:1", *admin, env=env)
        snapshot("m:1 erased")
        check(coffer, "revoke", "bob", "reader", *admin, env=env)
        check(coffer, "audit", "sign", "--home", home, env=env)
        newest_budget = check(coffer, "budget", "show", "d", "--json", "--home", home, env=env)
        # bob's client and alice's have seen the newest state.
        bob_env = env
        live = f"{work}/live"
        shutil.copytree(home, live)

        checks = [
            ("pull prod as alice", ["pull", "m@prod", "--identity", f"{work}/alice.key", "--out", "{out}"], "m:2"),
            ("pull the erased m:1", ["pull", "m:1", "--identity", f"{work}/alice.key", "--out", "{out}"], None),
            ("pull m:2 as revoked bob", ["pull", "m:2", "--identity", f"{work}/bob.key", "--out", "{out}"], None),
            ("verify m:2", ["verify", "m:2"], "m:2"),
            ("budget show", ["budget", "show", "d", "--json"], newest_budget),
            ("audit verify", ["audit", "verify"], True),
            ("fsck", ["fsck"], True),
        ]
        refused = answered = wrong = leaked = first_time_accepted = 0
        problems = []
        for trial in range(args.trials):
            label, snap = rng.choice(snapshots)
            how = rng.choice(["whole directory", "database only", "blobs only"])
            shutil.rmtree(home)
            shutil.copytree(live, home)
            if how == "whole directory":
                shutil.rmtree(home)
                shutil.copytree(snap, home)
            elif how == "database only":
                for suffix in ("", "-wal", "-shm"):
                    for directory, target in ((snap, home),):
                        source = f"{directory}/registry.sqlite{suffix}"
                        if os.path.exists(f"{target}/registry.sqlite{suffix}"):
                            os.remove(f"{target}/registry.sqlite{suffix}")
                        if os.path.exists(source):
                            shutil.copyfile(source, f"{target}/registry.sqlite{suffix}")
            else:
                shutil.rmtree(f"{home}/blobs")
                shutil.copytree(f"{snap}/blobs", f"{home}/blobs")
            name, argv, expected = rng.choice(checks)
            out = f"{work}/out-{trial}"
            result = run(coffer, *[a.replace("{out}", out) for a in argv], "--home", home, env=bob_env)
            if result.returncode:
                refused += 1
                stderr = result.stderr.decode()
                if stderr.count("\n") != 1 and name not in ("fsck",):
                    problems.append(f"trial {trial} ({label}, {how}, {name}): not one line: {stderr!r}")
                if os.path.isdir(out) and files_of(out):
                    leaked += sum(len(v) for v in files_of(out).values())
                    problems.append(f"trial {trial} ({label}, {how}, {name}): a refused pull left files")
            else:
                stdout = result.stdout.decode()
                if expected is None:
                    wrong += 1
                    leaked += sum(len(v) for v in files_of(out).values()) if os.path.isdir(out) else 0
                    problems.append(f"trial {trial} ({label}, {how}): {name} succeeded: {stdout.strip()[:120]}")
                elif isinstance(expected, str) and expected.startswith("m:"):
                    said = stdout.split()[1]
                    got = files_of(out) if os.path.isdir(out) else None
                    if said != expected or (got is not None and got != contents[expected]):
                        wrong += 1
                        problems.append(f"trial {trial} ({label}, {how}): {name} gave {said}, the newest state gives {expected}")
                    else:
                        answered += 1
                elif isinstance(expected, str) and stdout != expected:
                    wrong += 1
                    problems.append(f"trial {trial} ({label}, {how}): {name} answered from an older state")
                else:
                    answered += 1
            shutil.rmtree(out, ignore_errors=True)
            if how == "whole directory" and snap != live:
                fresh = dict(env, COFFER_STATE_DIR=f"{work}/fresh-{trial}")
                if run(coffer, "audit", "verify", "--home", home, env=fresh).returncode == 0:
                    first_time_accepted += 1
        print(f"# tools/campaign/rollback: seed {seed}; {len(snapshots)} older copies, {args.trials} restores")
        print(f"refused {refused}  answered as the newest state {answered}  answered from an older state {wrong}  "
              f"plaintext bytes released that the newest state withholds {leaked}")
        print(f"whole-directory restores a first-time client accepted (by design: no memory of a newer state) {first_time_accepted}")
        for line in problems[:10]:
            print(f"PROBLEM {line}")
        sys.exit(0 if not problems and wrong == 0 and leaked == 0 else 1)


if __name__ == "__main__":
    main()
