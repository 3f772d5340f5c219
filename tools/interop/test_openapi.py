"""docs/openapi.yaml against a running `coffer serve`, with schemathesis from PyPI: requests generated from the
schema (valid and invalid), every response checked for a documented status, content type, headers and body
schema, no 5xx, invalid input refused, undeclared methods answered 405, and auth required where declared."""
import os
import re
import signal
import subprocess
from pathlib import Path

from test_interop import COFFER, ENV, coffer
from test_server import OPENAPI, free_port, owned_registry, serve

ROOT = Path(__file__).resolve().parent.parent.parent
SCHEMATHESIS = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "st"


def test_the_server_conforms_to_its_openapi_document(tmp_path):
    home, admin = owned_registry(tmp_path)
    coffer("synth", "--rows", "200", "--features", "3", "--out", tmp_path / "data")
    coffer("train", "--config", tmp_path / "data" / "recipe.json", "--out", tmp_path / "ckpt")
    coffer("push", "m/risk", tmp_path / "ckpt", "--alias", "prod", *admin)
    coffer("budget", "set", "census", "--epsilon", "4", "--delta", "1e-5", *admin)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    port = free_port()
    server = serve(home, port)
    try:
        seed = os.environ.get("COFFER_SCHEMATHESIS_SEED", "1")
        result = subprocess.run(
            [SCHEMATHESIS, "--config-file", ROOT / "tools" / "interop" / "schemathesis.toml", "run", ROOT / "docs" / "openapi.yaml",
             "--url", f"http://127.0.0.1:{port}", "-H", f"Authorization: Bearer {token}", "--max-examples", "20", "--seed", seed],
            capture_output=True, text=True, timeout=600)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    operations = sum(1 for item in OPENAPI["paths"].values() for method in item if method in ("get", "put", "post", "delete", "patch"))
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert selected and selected.groups() == (str(operations), str(operations)), "every operation of docs/openapi.yaml was exercised"
    assert server.returncode == 0
