"""coffer serve on loopback, measured from Python (stdlib http.client, keep-alive connections):

1. GET /v1/version at a fixed 500 requests/s for 10 s from 16 threads: p50, p99, achieved rate.
2. 16 concurrent `coffer pull --registry` of a version of SIZE MiB against one local `coffer pull` of it, same run:
   aggregate throughput ratio (target >= 0.8).
3. 16 concurrent uploads of SIZE MiB each (POST, PATCH 4 MiB pieces, PUT with digest): the server's peak RSS
   (VmHWM from /proc; target < 256 MiB).
"""
import argparse
import glob
import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from cofferlib import environment, start_server  # noqa: E402

MIB = 1 << 20


def rss_mib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    coffer = args.coffer

    def c(*argv):
        result = subprocess.run([coffer, *map(str, argv)], env=env, capture_output=True)
        if result.returncode:
            sys.exit(f"coffer {' '.join(map(str, argv))}: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        env = environment(work, "bench passphrase")
        home = f"{work}/home"
        c("keygen", "--out", f"{work}/alice")
        c("init", "--home", home, "--owner", f"{work}/alice.pub")
        admin = ["--identity", f"{work}/alice.key", "--home", home]
        c("trust", "add", f"{work}/alice.pub", *admin)
        token = c("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "2h", *admin).strip()
        os.makedirs(f"{work}/model")
        with open(f"{work}/model/weights.bin", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        c("push", "m", f"{work}/model", *admin)
        shutil.rmtree(f"{work}/model")
        server, base, _ = start_server(coffer, home, env, f"{work}/serve.log")
        port = int(base.rsplit(":", 1)[1])
        headers = {"Authorization": f"Bearer {token}"}
        try:
            print(f"# tools/bench/server: {args.size_mib} MiB version, {args.clients} clients, loopback, 2 cores")

            # 1. Metadata at a fixed rate.
            latencies, errors, lock = [], [0], threading.Lock()
            duration, threads = 10.0, 16
            start = time.perf_counter() + 0.2

            def load(index):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                n = 0
                while True:
                    due = start + (n * threads + index) / args.rate
                    if due - start > duration:
                        return
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    t0 = time.perf_counter()
                    try:
                        conn.request("GET", "/v1/version?ref=m:1", headers=headers)
                        response = conn.getresponse()
                        response.read()
                        ok = response.status == 200
                    except OSError:
                        ok = False
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    with lock:
                        # Latency from when the request was due: queueing behind a slow one counts (no coordinated omission).
                        latencies.append(time.perf_counter() - due)
                        errors[0] += 0 if ok else 1
                    n += 1

            workers = [threading.Thread(target=load, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[int(len(latencies) * 0.99)] * 1000
            print(f"metadata GET /v1/version at {args.rate}/s for {duration:.0f} s: {len(latencies)} requests, {errors[0]} errors, "
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 < 20 ms)")

            # 2. Concurrent remote pulls against one local pull (median of 3; dirty pages flushed before each timing).
            samples = []
            for _ in range(3):
                os.sync()
                t0 = time.perf_counter()
                c("pull", "m:1", "--identity", f"{work}/alice.key", "--out", f"{work}/local", "--home", home)
                samples.append(time.perf_counter() - t0)
                shutil.rmtree(f"{work}/local")
            local = statistics.median(samples)
            procs = []
            os.sync()
            t0 = time.perf_counter()
            for i in range(args.clients):
                procs.append(subprocess.Popen([coffer, "pull", "m:1", "--registry", f"http://127.0.0.1:{port}", "--token", token,
                                               "--trust", f"{work}/alice.pub", "--identity", f"{work}/alice.key", "--out", f"{work}/remote{i}"],
                                              env=dict(env, COFFER_OUTBOX=f"{work}/outbox"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            failures = [p.stderr.read().decode() for p in procs if p.wait()]
            remote = time.perf_counter() - t0
            for i in range(args.clients):
                shutil.rmtree(f"{work}/remote{i}", ignore_errors=True)
            single = args.size_mib / local
            aggregate = args.clients * args.size_mib / remote
            print(f"one local pull: {local:.2f} s median of {', '.join(f'{t:.2f}' for t in samples)} ({single:.0f} MiB/s); {args.clients} concurrent remote pulls: {remote:.2f} s "
                  f"({aggregate:.0f} MiB/s aggregate), {len(failures)} failed; ratio {aggregate / single:.2f} (target >= 0.8)")

            # The server's share of that: the same downloads with clients that only read the ciphertext (no
            # verification, no decryption, no file), so the 2 cores go to serving.
            blob = os.path.basename(glob.glob(f"{home}/blobs/sha256/*/*")[0])
            reader = ("import http.client, sys\n"
                      "c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1])); c.request('GET', '/v1/blobs/' + sys.argv[2], headers={'Authorization': 'Bearer ' + sys.argv[3]})\n"
                      "r = c.getresponse(); b = bytearray(1 << 20); n = 0\n"
                      "while (k := r.readinto(b)): n += k\n"
                      "sys.exit(0 if r.status == 200 and n > 0 else 1)")
            t0 = time.perf_counter()
            readers = [subprocess.Popen([sys.executable, "-c", reader, str(port), blob, token]) for _ in range(args.clients)]
            failed = sum(1 for p in readers if p.wait())
            served = args.clients * args.size_mib / (time.perf_counter() - t0)
            print(f"{args.clients} concurrent ciphertext-only downloads: {served:.0f} MiB/s aggregate, {failed} failed; "
                  f"ratio to the local pull {served / single:.2f} (the server's capacity, with the clients' work left out)")

            # 3. Server RSS during concurrent uploads.
            baseline = rss_mib(server.pid)
            peak = [baseline]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mib(server.pid))
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()
            block = os.urandom(4 * MIB)

            def upload(index):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conn.request("POST", "/v1/uploads", headers=headers)
                upload_id = json.loads(conn.getresponse().read())["id"]
                digest = hashlib.sha256()
                offset = 0
                for _ in range(args.size_mib // 4):
                    digest.update(block)
                    conn.request("PATCH", f"/v1/uploads/{upload_id}", body=block, headers={**headers, "Upload-Offset": str(offset)})
                    conn.getresponse().read()
                    offset += len(block)
                conn.request("PUT", f"/v1/uploads/{upload_id}?digest={digest.hexdigest()}", headers=headers)
                conn.getresponse().read()

            t0 = time.perf_counter()
            uploaders = [threading.Thread(target=upload, args=(i,)) for i in range(args.clients)]
            for u in uploaders:
                u.start()
            for u in uploaders:
                u.join()
            elapsed = time.perf_counter() - t0
            stop.set()
            watcher.join()
            print(f"{args.clients} concurrent uploads of {args.size_mib} MiB: {elapsed:.1f} s; server RSS {baseline:.0f} MiB before, "
                  f"peak {peak[0]:.0f} MiB during (VmHWM {rss_mib(server.pid, 'VmHWM'):.0f} MiB) (target < 256 MiB)")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
