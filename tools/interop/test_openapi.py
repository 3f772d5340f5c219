"""docs/openapi.yaml against a running `coffer serve`, with schemathesis from PyPI: requests generated from the
schema (valid and invalid), every response checked for a documented status, content type, headers and body
schema, no 5xx, invalid input refused, undeclared methods answered 405, and auth required where declared.

The document's `/v1/fl/*` routes belong to `coffer fl serve` (the coordinator of federated training): they are
checked the same way against a running coordinator."""
import os
import re
import signal
import subprocess
from pathlib import Path

from test_federated import fl_sites
from test_interop import COFFER, ENV, coffer
from test_server import OPENAPI, owned_registry, serve
import cofferlib  # noqa: E402  (tools/lib, on the path test_server sets)

ROOT = Path(__file__).resolve().parent.parent.parent
SCHEMATHESIS = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "st"


# Binary federation bodies go as bytes (schemathesis_hooks.py); the document is checked in both runs, so both load it.
HOOKS = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks",
             PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])))


def test_the_server_conforms_to_its_openapi_document(tmp_path):
    home, admin = owned_registry(tmp_path)
    coffer("synth", "--rows", "200", "--features", "3", "--out", tmp_path / "data")
    coffer("train", "--config", tmp_path / "data" / "recipe.json", "--out", tmp_path / "ckpt")
    coffer("push", "m/risk", tmp_path / "ckpt", "--alias", "prod", *admin)
    coffer("budget", "set", "census", "--epsilon", "4", "--delta", "1e-5", *admin)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    port = cofferlib.free_port()
    server = serve(home, port)
    try:
        seed = os.environ.get("COFFER_SCHEMATHESIS_SEED", "1")
        result = subprocess.run(
            [SCHEMATHESIS, "--config-file", ROOT / "tools" / "interop" / "schemathesis.toml", "run", ROOT / "docs" / "openapi.yaml",
             "--url", f"http://127.0.0.1:{port}", "-H", f"Authorization: Bearer {token}", "--max-examples", "20", "--seed", seed,
             "--exclude-path-regex", FL_ROUTES],
            capture_output=True, text=True, timeout=600, env=HOOKS)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert selected and selected.groups() == (str(operations(fl=False)), str(operations())), "every operation of coffer serve was exercised"
    assert server.returncode == 0


FL_ROUTES = "^/v1/fl/"


def operations(fl=None):
    """The document's operations: all of them, or only (fl=True) or all but (fl=False) those of `coffer fl serve`."""
    return sum(1 for path, item in OPENAPI["paths"].items() for method in item
               if method in ("get", "put", "post", "delete", "patch") and (fl is None or path.startswith("/v1/fl/") == fl))


def test_fl_serve_conforms_to_its_openapi_routes(tmp_path):
    """The coordinator waits for its three sites to join while schemathesis sends it what the schema describes: no
    request it can generate is signed, so every body is refused (401, 400, 413 or 405) with a documented status, type
    and headers, and nothing makes it fail (5xx) or stop."""
    env = dict(ENV)
    fl_sites(tmp_path, env, 3, 10)
    port = cofferlib.free_port()
    server = subprocess.Popen([COFFER, "fl", "serve", "--recipe", tmp_path / "recipe.json", "--identity", tmp_path / "coordinator.key",
                               "--listen", f"127.0.0.1:{port}", "--join-timeout", "600",
                               *[a for i in range(3) for a in ("--site", tmp_path / f"site{i}.pub")]],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seed = os.environ.get("COFFER_SCHEMATHESIS_SEED", "1")
        result = subprocess.run(
            [SCHEMATHESIS, "--config-file", ROOT / "tools" / "interop" / "schemathesis.toml", "run", ROOT / "docs" / "openapi.yaml",
             "--url", f"http://127.0.0.1:{port}", "--max-examples", "20", "--seed", seed, "--include-path-regex", FL_ROUTES],
            capture_output=True, text=True, timeout=600, env=HOOKS)
        assert server.poll() is None, "coffer fl serve stopped under schemathesis"
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert selected and selected.groups() == (str(operations(fl=True)), str(operations())), "every operation of fl serve was exercised"
    # SIGTERM before any site joined: the coordinator says so in one line.
    assert err.endswith("coffer: interrupted: the coordinator stopped before the federation ended\n"), err
