"""A hostile server (a proxy rewriting a real `coffer serve`'s answers) against the coffer client: whatever it
answers ends in one line and exit status 1, never a trap (exit 132), and nothing it sends reaches the terminal as a
control sequence. Found by helper-38's review."""
import json
import sys
from pathlib import Path

from test_interop import COFFER, ENV, coffer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
import cofferlib  # noqa: E402


def served_registry(tmp_path):
    """alice's registry served on loopback, with m:1 pushed: (server process, base URL, token, alice's client args)."""
    home = tmp_path / "home"
    coffer("keygen", "--out", tmp_path / "alice")
    coffer("init", "--home", home, "--owner", tmp_path / "alice.pub")
    admin = ["--identity", tmp_path / "alice.key", "--home", home]
    coffer("trust", "add", tmp_path / "alice.pub", *admin)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(bytes(range(256)) * 4096)
    coffer("push", "m", tmp_path / "model", *admin)
    token = coffer("token", "create", "--principal", "alice", "--scope", "admin", "--ttl", "1h", *admin).stdout.decode().strip()
    process, base, _ = cofferlib.start_server(COFFER, home, ENV, tmp_path / "serve.log")
    env = dict(ENV, COFFER_STATE_DIR=str(tmp_path / "state"), COFFER_OUTBOX=str(tmp_path / "outbox"))
    return process, base, token, env, ["--identity", tmp_path / "alice.key", "--registry-key", home / "registry.pub"]


def one_line_failure(result):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.count(b"\n") == 1 and result.stderr.startswith(b"coffer: "), result.stderr
    return result.stderr.decode()


def test_bad_upload_offsets_end_the_push_in_one_line(tmp_path):
    server, base, token, env, identity = served_registry(tmp_path)
    try:
        # Before the blob, past it, a PATCH answer that does not move on, and one that moves on by a byte (a stall).
        for offset in (-5, 1 << 62, 0, 1):
            def rewrite(method, path, status, headers, body, offset=offset):
                if method == "PATCH" and path.startswith("/v1/uploads/") and status == 200:
                    return status, headers, json.dumps({"id": path.split("/")[3], "offset": offset}).encode()
            with cofferlib.TamperingProxy(base, rewrite) as proxy:
                result = cofferlib.run(COFFER, "push", "m", tmp_path / "model", "--registry", proxy.base, "--token", token, *identity,
                                       env=dict(env, COFFER_OUTBOX=str(tmp_path / f"outbox{offset}")))
            line = one_line_failure(result)
            assert "the upload of blob" in line and f"stands at byte {offset}, after a piece of " in line, line
        versions = json.loads(cofferlib.check(COFFER, "list", "--json", "--registry", base, "--token", token, env=env))
        assert [v["version"] for v in versions] == ["1"], "no version was committed"
    finally:
        cofferlib.stop_server(server)


def test_server_text_reaches_the_terminal_escaped(tmp_path):
    server, base, token, env, identity = served_registry(tmp_path)
    hostile = "denied\x1b]0;pwned\x07\x1b[8m hidden\r\x9b2J"
    try:
        def refuse(method, path, status, headers, body):
            if path.startswith("/v1/versions"):
                return 403, {"Content-Type": "application/json"}, json.dumps({"error": {"message": hostile}}).encode()
        with cofferlib.TamperingProxy(base, refuse) as proxy:
            line = one_line_failure(cofferlib.run(COFFER, "list", "--registry", proxy.base, "--token", token, env=env))
        assert not any(c in line for c in "\x1b\x07\r\x9b"), repr(line)
        # (The client joins the lines of a message with spaces, a carriage return among them.)
        assert "denied\\u001b]0;pwned\\u0007\\u001b[8m hidden \\u009b2J" in line, repr(line)

        # A listing far larger than the versions asked for is refused before it is decoded.
        def flood(method, path, status, headers, body):
            if path.startswith("/v1/versions"):
                return 200, {"Content-Type": "application/json"}, b"[" + b",".join([b'{"model":"m","version":"1"}'] * 200_000) + b"]"
        with cofferlib.TamperingProxy(base, flood) as proxy:
            line = one_line_failure(cofferlib.run(COFFER, "list", "--limit", "10", "--registry", proxy.base, "--token", token, env=env))
        assert "its answer is over the" in line and "bytes this client reads of it" in line, line
    finally:
        cofferlib.stop_server(server)


def test_an_explicit_version_without_its_ledger_record_is_refused(tmp_path):
    server, base, token, env, identity = served_registry(tmp_path)
    try:
        def strip_record(method, path, status, headers, body):
            if path.startswith("/v1/package") and status == 200:
                package = json.loads(body)
                package.pop("record", None)
                return status, headers, json.dumps(package).encode()
        out = tmp_path / "out"
        with cofferlib.TamperingProxy(base, strip_record) as proxy:
            line = one_line_failure(cofferlib.run(COFFER, "pull", "m:1", "--out", out, "--registry", proxy.base, "--token", token,
                                                  *identity, env=env))
        assert "m:1: the server sent no ledger record for it" in line, line
        assert not out.exists() or not any(out.iterdir()), "nothing pulled"
    finally:
        cofferlib.stop_server(server)


def test_a_resumed_upload_at_a_bad_offset_ends_the_push_in_one_line(tmp_path):
    """The offset a server answers when a push resumes (GET /v1/uploads/ID) is checked as a PATCH's answer is. One
    proxy throughout: a push resumes from the outbox of the same registry URL."""
    server, base, token, env, identity = served_registry(tmp_path)
    (tmp_path / "model" / "w.bin").write_bytes(bytes(range(256)) * 8192)  # another version's blob
    tamper = {"offset": None}

    def rewrite(method, path, status, headers, body):
        if method == "PATCH" and tamper["offset"] is None:
            # The bytes went up, unfinished: the upload stays on the server, and its ID in the outbox, to resume.
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": {"message": "not now"}}).encode()
        if method == "GET" and path.startswith("/v1/uploads/") and status == 200 and tamper["offset"] != "honest":
            return status, headers, json.dumps({"id": path.split("/")[3], "offset": tamper["offset"]}).encode()
    try:
        with cofferlib.TamperingProxy(base, rewrite) as proxy:
            push = ["push", "m", tmp_path / "model", "--token", token, *identity, "--registry", proxy.base]
            assert "answered 400: not now" in one_line_failure(cofferlib.run(COFFER, *push, env=env))
            assert list((tmp_path / "outbox").rglob("*.upload")), "the first attempt left its upload to resume"
            for offset in (-5, 1 << 62):
                tamper["offset"] = offset
                result = cofferlib.run(COFFER, *push, env=env)
                notice, line = result.stderr.decode().splitlines()  # the resume's notice, then the failure
                assert result.returncode == 1 and notice.startswith("coffer: resuming the push of m:2"), result.stderr
                assert f"stands at byte {offset}, of " in line and "after a piece" not in line, line
            # The honest answer, resumed: the push completes.
            tamper["offset"] = "honest"
            result = cofferlib.run(COFFER, *push, env=env)
            assert result.returncode == 0 and b"resuming the upload of blob" in result.stderr, result.stderr
        versions = json.loads(cofferlib.check(COFFER, "list", "--json", "--registry", base, "--token", token, env=env))
        assert sorted(v["version"] for v in versions) == ["1", "2"], versions
    finally:
        cofferlib.stop_server(server)
