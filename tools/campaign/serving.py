"""`coffer serve` on a free loopback port for the campaigns, its log in a file (a pipe nobody reads until the end
fills up and blocks the server's logger)."""
import socket
import subprocess
import time
import urllib.error
import urllib.request


def start_server(coffer, home, env, log_path, *extra):
    """Starts the server and waits for /healthz; returns (process, base URL, log file opened for reading back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log = open(log_path, "w+b")
    process = subprocess.Popen([coffer, "serve", "--home", home, "--listen", f"127.0.0.1:{port}", *extra], env=env, stdout=log, stderr=log)
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                return process, base, log
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("coffer serve did not start")
