"""Slow-client campaign: clients that hold a real `coffer serve` by asking and never reading, by stalling a body after a
fast start, or by trickling, are cut, the server's memory comes back, and an honest slow reader is served whole.

One registry holds a 16 MiB model. The server runs with `--max-connections` = the number of attackers and the
timeout given (10 s, the default, at full size). Attackers, on sockets with a 4 KiB receive buffer, each take one
connection: half ask for the blob and never read, half pipeline three such requests and never read; a few more stall
an upload's body after sending 1 MiB at once, and a few sign in with `Expect: 100-continue` and send nothing once asked
for the body (no credentials needed). Then a fresh client asks for /healthz: it must be served within three
timeouts (the cap is full until the attackers are cut). The server's RSS is sampled throughout: its peak, and what
is left once every attacker is cut, are reported. Last, an honest reader takes a 128 KiB range at 16 KiB/s (well
under what a deadline on writability allowed, above the minimum rate) and must get it whole.

Behind a proxy: nginx (as `cofferlib.nginx` runs it, not buffering answers) reads an answer in bursts, as its own
client drains its buffers, and stops reading for longer than the rule allows. A server started with `--client-timeout
1 --trusted-proxy 127.0.0.2`, nginx connecting from 127.0.0.2: an honest reader takes 8 MiB through it at 512 KiB/s
and must get it whole. The same reader through an nginx connecting from 127.0.0.1 (not trusted) is the control: it is
reported, as it was cut or not, and does not fail the run.

Exit status non-zero when the fresh client waits too long, an attacker is not cut, or the honest reader is.
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from cofferlib import check, coffer_binary, environment, http_json, keygen, nginx, start_server, stop_server  # noqa: E402


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def connect(port, receive_buffer=None):
    s = socket.socket()
    if receive_buffer:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    s.connect(("127.0.0.1", port))
    return s


def closed_by_server(s, deadline):
    """Reads what the server sent until it closes (True) or `deadline` passes with the connection open (False)."""
    s.settimeout(1)
    while time.monotonic() < deadline:
        try:
            if not s.recv(1 << 20):
                return True
        except socket.timeout:
            continue
        except OSError:  # reset: closed too
            return True
    return False


def read_through(port, blob, read, size, rate, receive_buffer=None):
    """Takes the first `size` bytes of `blob` from 127.0.0.1:`port` at `rate` bytes a second; returns the bytes got and
    the seconds."""
    s = connect(port, receive_buffer)
    s.sendall(f"GET /v1/blobs/{blob} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\nRange: bytes=0-{size - 1}\r\n"
              "Connection: close\r\n\r\n".encode())
    s.settimeout(30)
    got, began = 0, time.monotonic()
    try:
        while True:
            part = s.recv(min(65536, max(1, int(rate * (time.monotonic() - began)) - got + 1)))
            if not part:
                break
            got += len(part)
            ahead = got / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    except OSError:
        pass
    finally:
        s.close()
    return got, time.monotonic() - began


def behind_a_proxy(coffer, home, env, work, blob, read, failures):
    """The honest reader through nginx, trusted (must be served whole) and not (the control); returns the report."""
    size, rate = 8 << 20, 512 << 10
    process, base, _ = start_server(coffer, home, env, f"{work}/serve-proxied.log", "--client-timeout", "1", "--trusted-proxy", "127.0.0.2")
    port = base.rsplit(":", 1)[1]
    try:
        results = {}
        for source in ("127.0.0.2", None):
            with nginx([f"127.0.0.1:{port}"], source=source) as front:
                results[source] = read_through(int(front.rsplit(":", 1)[1]), blob, read, size, rate)
    finally:
        stop_server(process)
    (trusted, took), (control, control_took) = results["127.0.0.2"], results[None]
    # The answer's head comes first: whole is more than the range itself.
    if trusted <= size:
        failures.append(f"the honest reader through a trusted nginx at 512 KiB/s was cut after {trusted} bytes in {took:.1f} s")
    return (f"through nginx at 512 KiB/s (--client-timeout 1): trusted {trusted} bytes in {took:.1f} s; "
            f"control, not trusted: {control} bytes in {control_took:.1f} s ({'cut' if control <= size else 'not cut'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coffer", default=coffer_binary())
    parser.add_argument("--attackers", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10, help="the server's --client-timeout")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="coffer-slowclient-")
    env = environment(work)
    home = f"{work}/home"
    for name in ("alice", "bob"):
        keygen(args.coffer, f"{work}/{name}", env)
    check(args.coffer, "init", "--home", home, "--owner", f"{work}/alice.pub", env=env)
    admin = ["--identity", f"{work}/alice.key", "--home", home]
    check(args.coffer, "principal", "add", "bob", f"{work}/bob.pub", "--role", "reader", *admin, env=env)
    os.makedirs(f"{work}/model")
    with open(f"{work}/model/w.bin", "wb") as f:
        f.write(os.urandom(16 << 20))
    check(args.coffer, "push", "slow/model", f"{work}/model", *admin, env=env)
    blob = json.loads(check(args.coffer, "show", "slow/model:1", "--json", "--home", home, env=env))["files"][0]["sealed_sha256"]
    token = lambda who, scope: check(args.coffer, "token", "create", "--principal", who, "--scope", scope, "--ttl", "1h", *admin, env=env).strip()
    read, publish = token("bob", "read"), token("alice", "publish")

    stalls = askers = 4
    process, base, _ = start_server(args.coffer, home, env, f"{work}/serve.log", "--client-timeout", str(args.timeout),
                                    "--max-connections", str(args.attackers + stalls + askers))
    port = int(base.rsplit(":", 1)[1])
    failures = []
    try:
        baseline = rss_mib(process.pid)
        uploads = [http_json(base, "POST", "/v1/uploads", token=publish)[1]["id"] for _ in range(stalls)]
        request = f"GET /v1/blobs/{blob} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\n\r\n".encode()
        peak, sampling = [baseline], threading.Event()

        def sample():
            while not sampling.wait(0.2):
                peak.append(rss_mib(process.pid))
        threading.Thread(target=sample, daemon=True).start()

        started = time.monotonic()
        attackers = []
        for n in range(args.attackers):
            s = connect(port, receive_buffer=4096)
            s.sendall(request * (1 if n % 2 == 0 else 3))
            attackers.append(s)
        for upload in uploads:
            s = connect(port)
            s.sendall(f"PATCH /v1/uploads/{upload} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {publish}\r\nUpload-Offset: 0\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {4 << 20}\r\n\r\n".encode())
            s.sendall(bytes(1 << 20))
            attackers.append(s)
        for _ in range(askers):
            s = connect(port)
            s.sendall(b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
            attackers.append(s)
        held = time.monotonic() - started
        time.sleep(min(1, args.timeout / 4))  # every attacker accepted, and the cap full, before the fresh client comes
        fresh = connect(port)
        fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        fresh.settimeout(3 * args.timeout + 10)
        try:
            answer = fresh.recv(4096)
        except socket.timeout:
            answer = b""
        waited = time.monotonic() - started - held
        if not answer.startswith(b"HTTP/1.1 200"):
            failures.append(f"a fresh client was not served within {3 * args.timeout + 10:.0f} s of the cap filling")
        deadline = time.monotonic() + 3 * args.timeout + 10
        still_open = sum(not closed_by_server(s, deadline) for s in attackers)
        cut_after = time.monotonic() - started
        if still_open:
            failures.append(f"{still_open} of {len(attackers)} attackers were never cut")
        time.sleep(2)
        sampling.set()
        at_peak, after = max(peak), rss_mib(process.pid)

        got, took = read_through(port, blob, read, 131072, 16384, receive_buffer=4096)
        if got < 131072:
            failures.append(f"the honest reader at 16 KiB/s was cut after {got} bytes in {took:.1f} s")

        print(f"slow clients: {args.attackers} never-reading (half of them pipelined x3) + {stalls} stalled bodies + {askers} silent once asked, "
              f"--client-timeout {args.timeout:g} s; fresh client served {waited:.1f} s after the cap filled (the last attacker connected); "
              f"all attackers cut within {cut_after:.1f} s ({still_open} left open); server RSS {baseline:.0f} MiB before, "
              f"peak {at_peak:.0f}, {after:.0f} after; honest reader at 16 KiB/s: {got} bytes in {took:.1f} s")
    finally:
        stop_server(process)
    print(behind_a_proxy(args.coffer, home, env, work, blob, read, failures))
    for failure in failures:
        print(f"FAILED {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
