"""What the Python tools (campaigns, benchmarks, interop tests) share: running coffer, making identities, an
environment of their own, and `coffer serve` on a free loopback port.

Import it with `sys.path.insert(0, <repo>/tools/lib)`; every helper takes the coffer binary's path explicitly.
"""
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


def environment(work, passphrase="campaign passphrase", **extra):
    """The process environment for one tool run: a passphrase, and a client state (pins, remembered ledgers) and
    push outbox of its own under `work`, so a run neither reads nor leaves anything in the user's home."""
    return dict(os.environ, COFFER_PASSPHRASE=passphrase, COFFER_STATE_DIR=f"{work}/client-state", COFFER_OUTBOX=f"{work}/outbox",
                **{k: str(v) for k, v in extra.items()})


def run(coffer, *args, env, stdin=None):
    """Runs `coffer args...`; returns the CompletedProcess (stdout and stderr as bytes)."""
    return subprocess.run([coffer, *map(str, args)], env=env, capture_output=True, input=stdin)


def check(coffer, *args, env):
    """Runs `coffer args...` and returns its stdout as text; raises with coffer's one-line error if it failed."""
    result = run(coffer, *args, env=env)
    if result.returncode:
        raise RuntimeError(f"coffer {' '.join(map(str, args))}: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def keygen(coffer, path, env):
    """A new identity at `path` (.key, .pub, .pem) with a cheap Argon2id cost: campaigns make many."""
    check(coffer, "keygen", "--out", path, "--kdf-ops", "1", "--kdf-memory", "8192", env=env)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(coffer, home, env, log_path, *extra):
    """Starts `coffer serve` and waits for /healthz; returns (process, base URL, log file opened for reading back).

    The log goes to a file: a pipe nobody reads until the end fills up and blocks the server's logger."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(log_path, "w+b")
    process = subprocess.Popen([coffer, "serve", "--home", home, "--listen", f"127.0.0.1:{port}", *extra], env=env, stdout=log, stderr=log)
    for _ in range(400):
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                return process, base, log
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    log.seek(0)
    raise RuntimeError(f"coffer serve did not start: {log.read().decode(errors='replace')[-500:]}")
