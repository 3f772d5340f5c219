"""Tamper campaign: every mutation of a stored artifact is detected, and no plaintext is released.

A registry is populated once (an owner, two versions of a three-file model whose largest file spans several
chunks, a signed audit head); each trial copies it, applies one random mutation, and runs the checks a user
would: `verify --read-data` of both versions, `pull` of the mutated version, `audit verify`. A trial is detected
when at least one check fails; plaintext released counts the bytes a failed pull left in its output directory.
Mutation kinds: blob byte flip, blob truncation, chunk swap, chunk duplication, blob swap between versions,
statement (DSSE) edit, model-signing bundle edit, signed-column edit (privacy, digest, files), wrapped-key edit
(the key of the identity used for the checks: only its holder can tell a sealed box was altered), audit edit or
deletion of an entry covered by the signed head (entries after it are chained but not yet signed: docs/THREAT_MODEL.md).

`--oci` keeps the blobs in a docker-registry the campaign starts and applies the blob mutations (flip, truncate, chunk
swap and duplication, blob swap) to the files of its storage, restoring them after each trial.
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402

BLOB_KINDS = ["flip", "truncate", "swap-chunks", "duplicate-chunk", "swap-blobs"]
CHUNK = 65536 + 16  # default chunk size plus the Poly1305 tag


def run(coffer, *args, env):
    return subprocess.run([coffer, *map(str, args)], env=env, capture_output=True)


def populate(coffer, work, env, backends=()):
    run(coffer, "keygen", "--out", f"{work}/alice", "--kdf-ops", "1", "--kdf-memory", "8192", env=env)
    home = f"{work}/pristine"
    for command in (["init", "--home", home, "--owner", f"{work}/alice.pub", *backends],
                    ["trust", "add", f"{work}/alice.pub", "--identity", f"{work}/alice.key", "--home", home]):
        result = run(coffer, *command, env=env)
        if result.returncode:
            sys.exit(result.stderr.decode())
    os.makedirs(f"{work}/model/sub")
    for version in (1, 2):
        with open(f"{work}/model/weights.bin", "wb") as f:
            f.write(os.urandom(5 * 65536 + 777))
        with open(f"{work}/model/config.json", "w") as f:
            f.write('{"layers": %d}' % version)
        with open(f"{work}/model/sub/vocab.txt", "w") as f:
            f.write("a\nb\nc\n" * version)
        result = run(coffer, "push", "m", f"{work}/model", "--identity", f"{work}/alice.key", "--epsilon", "2.5", "--delta", "1e-5",
                     "--home", home, env=env)
        if result.returncode:
            sys.exit(result.stderr.decode())
    run(coffer, "audit", "sign", "--home", home, env=env)
    return home


def blobs_of(db, version):
    return [row[0] for row in db.execute(
        "SELECT f.sealed_sha256 FROM files f JOIN versions v ON v.id = f.version_id WHERE v.version = ? ORDER BY f.size DESC", (str(version),))]


# Where a blob's bytes are: the registry's blob directory, or (--oci) docker-registry's storage.
OCI_STORAGE = None


def blob_path(home, digest):
    if OCI_STORAGE:
        return f"{OCI_STORAGE}/docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"
    return f"{home}/blobs/sha256/{digest[:2]}/{digest}"


def rewrite(path, transform):
    os.chmod(path, 0o600)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(transform(data))


def mutate(home, rng, key_id):
    """Applies one random mutation to version 1 (or the audit log); returns its description."""
    db = sqlite3.connect(f"{home}/registry.sqlite")
    db.executescript("DROP TRIGGER IF EXISTS versions_are_immutable; DROP TRIGGER IF EXISTS files_are_immutable;"
                     "DROP TRIGGER IF EXISTS attestations_are_immutable; DROP TRIGGER IF EXISTS audit_is_append_only;")
    big, *small = blobs_of(db, 1)
    kind = rng.choice(BLOB_KINDS if OCI_STORAGE else BLOB_KINDS + ["statement", "bundle", "row", "wrapped-key", "audit"])
    if kind == "flip":
        target = rng.choice([big] + small)
        size = os.path.getsize(blob_path(home, target))
        offset = rng.randrange(size)
        rewrite(blob_path(home, target), lambda d: d[:offset] + bytes([d[offset] ^ (1 << rng.randrange(8))]) + d[offset + 1:])
        detail = f"flip a bit at byte {offset} of {target[:12]}"
    elif kind == "truncate":
        size = os.path.getsize(blob_path(home, big))
        cut = rng.randrange(size)
        rewrite(blob_path(home, big), lambda d: d[:cut])
        detail = f"truncate {big[:12]} to {cut} bytes"
    elif kind in ("swap-chunks", "duplicate-chunk"):
        def edit(d):
            header = len(d) - (5 * CHUNK + 777 + 16)  # whatever precedes the chunks
            i, j = rng.sample(range(5), 2)
            a, b = d[header + i * CHUNK: header + (i + 1) * CHUNK], d[header + j * CHUNK: header + (j + 1) * CHUNK]
            d[header + i * CHUNK: header + (i + 1) * CHUNK] = b
            if kind == "swap-chunks":
                d[header + j * CHUNK: header + (j + 1) * CHUNK] = a
            return d
        rewrite(blob_path(home, big), edit)
        detail = f"{kind} in {big[:12]}"
    elif kind == "swap-blobs":
        other = blobs_of(db, 2)[0]
        os.chmod(blob_path(home, big), 0o600)
        shutil.copyfile(blob_path(home, other), blob_path(home, big))
        detail = "replace version 1's weights blob by version 2's"
    elif kind in ("statement", "bundle"):
        column = "dsse" if kind == "statement" else "model-signing"
        (document,) = db.execute("SELECT document FROM attestations a JOIN versions v ON v.id = a.version_id WHERE v.version = '1' AND kind = ?",
                                 (column,)).fetchone()
        document = bytearray(document)
        offset = rng.randrange(len(document))
        # A different character, never the same one (that would be no mutation at all).
        document[offset] = ord(rng.choice([ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" if ord(ch) != document[offset]]))
        db.execute("UPDATE attestations SET document = ? WHERE kind = ? AND version_id = (SELECT id FROM versions WHERE version = '1')",
                   (bytes(document), column))
        detail = f"edit byte {offset} of the {column} document"
    elif kind == "row":
        edit = rng.choice([
            "UPDATE versions SET epsilon = 0.5 WHERE version = '1'",
            "UPDATE versions SET delta = 1e-9 WHERE version = '1'",
            "UPDATE versions SET digest = (SELECT digest FROM versions WHERE version = '2') WHERE version = '1'",
            "UPDATE files SET size = size + 1 WHERE version_id = (SELECT id FROM versions WHERE version = '1') AND path = 'weights.bin'",
            "UPDATE files SET plaintext_sha256 = (SELECT plaintext_sha256 FROM files WHERE path = 'weights.bin' AND version_id = "
            "(SELECT id FROM versions WHERE version = '2')) WHERE path = 'weights.bin' AND version_id = (SELECT id FROM versions WHERE version = '1')",
            "UPDATE files SET path = 'weights2.bin' WHERE path = 'weights.bin' AND version_id = (SELECT id FROM versions WHERE version = '1')",
        ])
        db.execute(edit)
        detail = edit
    elif kind == "wrapped-key":
        (stanza,) = db.execute("SELECT stanza FROM wrapped_keys WHERE recipient_key_id = ? AND version_id = (SELECT id FROM versions WHERE version = '1')",
                               (key_id,)).fetchone()
        stanza = bytearray(stanza)
        offset = rng.randrange(len(stanza))
        stanza[offset] ^= 1 << rng.randrange(8)
        db.execute("UPDATE wrapped_keys SET stanza = ? WHERE recipient_key_id = ? AND version_id = (SELECT id FROM versions WHERE version = '1')",
                   (bytes(stanza), key_id))
        detail = f"flip a bit of byte {offset} of alice's wrapped key"
    else:
        # Entries covered by the signed head (later ones are chained but unsigned until the next `audit sign`).
        (count,) = db.execute("SELECT max(seq) FROM audit_heads").fetchone()
        seq = rng.randrange(1, count + 1)
        edit = rng.choice([f"UPDATE audit_log SET reason = reason || ' ' WHERE seq = {seq}",
                           f"UPDATE audit_log SET principal = 'mallory' WHERE seq = {seq}",
                           f"DELETE FROM audit_log WHERE seq = {seq}"])
        db.execute("DROP TRIGGER IF EXISTS audit_is_never_deleted")
        db.execute(edit)
        detail = edit
    db.commit()
    db.close()
    return kind, detail


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--oci", action="store_true", help="blobs in a docker-registry; only blob mutations, in its storage")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    global OCI_STORAGE
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        env = cofferlib.environment(work, passphrase="campaign passphrase")
        backends = []
        if args.oci:
            registry = stack.enter_context(cofferlib.oci_registry())
            backends = ["--blobs", f"oci+http://{registry}/tamper"]
        pristine = populate(args.coffer, work, env, backends)
        if args.oci:
            OCI_STORAGE = f"{registry.work}/storage"
            # The registry's blobs are shared by every trial: kept aside and put back after each.
            saved = f"{work}/saved-blobs"
            shutil.copytree(f"{OCI_STORAGE}/docker/registry/v2/blobs", saved)
        key_id = json.loads(open(f"{work}/alice.pub").read())["id"]
        # Control: an untouched copy passes every check, so a failure below is the mutation's doing. (A copy: the
        # checks append audit entries, which would then sit past the signed head, where no chain can catch an edit.)
        control = f"{work}/control"
        shutil.copytree(pristine, control)
        for check in (["verify", "m:1", "--read-data", "--identity", f"{work}/alice.key"], ["audit", "verify"]):
            result = run(args.coffer, *check, "--home", control, env=env)
            if result.returncode:
                sys.exit(f"control check failed: {' '.join(check)}: {result.stderr.decode().strip()}")
        detected, released, missed = 0, 0, []
        kinds = {}
        for trial in range(args.trials):
            home = f"{work}/trial"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(pristine, home)
            kind, detail = mutate(home, rng, key_id)
            kinds[kind] = kinds.get(kind, 0) + 1
            out = f"{work}/out"
            shutil.rmtree(out, ignore_errors=True)
            checks = [
                run(args.coffer, "verify", "m:1", "--read-data", "--identity", f"{work}/alice.key", "--home", home, env=env),
                run(args.coffer, "pull", "m:1", "--identity", f"{work}/alice.key", "--out", out, "--home", home, env=env),
                run(args.coffer, "audit", "verify", "--home", home, env=env),
            ]
            if any(c.returncode != 0 for c in checks):
                detected += 1
            else:
                missed.append(f"trial {trial}: {kind}: {detail}")
            if checks[1].returncode != 0 and os.path.isdir(out):
                for root, _, files in os.walk(out):
                    released += sum(os.path.getsize(os.path.join(root, name)) for name in files)
            if args.oci:
                shutil.rmtree(f"{OCI_STORAGE}/docker/registry/v2/blobs")
                shutil.copytree(saved, f"{OCI_STORAGE}/docker/registry/v2/blobs")
        print(f"# tools/campaign/tamper: seed {seed}{'; blobs in an OCI registry' if args.oci else ''}; mutations by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        print(f"tried {args.trials}  detected {detected}  plaintext bytes released {released}")
        for line in missed[:20]:
            print(f"MISSED {line}")
        sys.exit(0 if detected == args.trials and released == 0 else 1)


if __name__ == "__main__":
    main()
