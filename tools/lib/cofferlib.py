"""What the Python tools (campaigns, benchmarks, interop tests) share: running coffer, making identities, an
environment of their own, and `coffer serve` on a free loopback port.

Import it with `sys.path.insert(0, <repo>/tools/lib)`; every helper takes the coffer binary's path explicitly.
"""
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def coffer_binary():
    """The coffer binary the tools drive: COFFER_BIN, else the debug build of this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.environ.get("COFFER_BIN", os.path.join(root, ".build", "debug", "coffer"))


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


def start_service(coffer, service, env):
    """Starts `coffer agent` or `coffer runner` (`service`; its socket in env's XDG_RUNTIME_DIR) and returns (socket
    path, pid) from the `COFFER_AGENT_SOCK=...; COFFER_AGENT_PID=...` lines it prints for a shell's eval."""
    lines = dict(part.strip().split("=", 1) for part in check(coffer, service, "start", env=env).split(";") if "=" in part)
    name = f"COFFER_{service.upper()}"
    return lines[f"{name}_SOCK"].strip("'"), int(lines[f"{name}_PID"])


def keygen(coffer, path, env):
    """A new identity at `path` (.key, .pub, .pem) with a cheap Argon2id cost: campaigns make many."""
    check(coffer, "keygen", "--out", path, "--kdf-ops", "1", "--kdf-memory", "8192", env=env)


def free_port():
    """A loopback port free now. Under pytest-xdist each worker draws from a range of its own (below Linux's ephemeral
    ports, 32768 and up), so that a port one worker was handed and has not bound yet is never handed to another."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    while True:
        port = 0 if worker is None else 10000 + 4000 * (int(worker.removeprefix("gw")) % 5) + random.randrange(4000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken
                continue
            return s.getsockname()[1]


def self_signed_certificate(directory, host="127.0.0.1"):
    """A P-256 certificate for `host` (an IP address, in its subjectAltName) valid for a day, made by openssl, for
    servers started with `--tls-cert`; returns the paths of (cert.pem, key.pem) in `directory`. Trusting the cert
    (`--ca-cert`) is trusting the server."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}", "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def start_server(coffer, home, env, log_path, *extra, port=None):
    """Starts `coffer serve` (on `port`, else on one the system picks: `--listen 127.0.0.1:0`) and waits for /healthz;
    returns (process, base URL, log file opened for reading back).

    The log goes to a file: a pipe nobody reads until the end fills up and blocks the server's logger."""
    log = open(log_path, "a+b")
    start = log.seek(0, os.SEEK_END)
    process = subprocess.Popen([coffer, "serve", "--home", home, "--listen", f"127.0.0.1:{port or 0}", *extra], env=env, stdout=log, stderr=log)
    base = None
    for _ in range(400):
        if base is None:  # the line `coffer: serving HOME on URL` comes once the socket takes connections
            log.seek(start)
            said = [line for line in log.read().decode(errors="replace").splitlines(keepends=True) if line.startswith("coffer: serving ")]
            base = said[0].split()[-1] if said and said[0].endswith("\n") else None
        try:
            if base is not None:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                    return process, base, log
        except (urllib.error.URLError, OSError):  # refused, reset, or a health check slower than 5 s on a busy machine
            pass
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    log.seek(0)
    # A crash's backtrace ends with library addresses: its first lines say what failed.
    lines = log.read().decode(errors="replace").splitlines()
    crash = next((i for i, line in enumerate(lines) if "Fatal error" in line or "💣" in line), None)
    shown = lines[crash:crash + 30] if crash is not None else lines[-10:]
    raise RuntimeError("coffer serve did not start:\n" + "\n".join(shown))


def stop_server(process, timeout=30):
    """Stops a server started by `start_server` with SIGTERM (a graceful shutdown), killing it if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class TamperingProxy:
    """A hostile server's stand-in: an HTTP proxy on a free loopback port in front of `upstream` (a base URL) whose
    `rewrite(method, path, status, headers, body)` may return another (status, headers, body). Bodies are read whole;
    use it as a context manager. `base` is the URL clients are pointed at."""

    def __init__(self, upstream, rewrite):
        import http.client
        import http.server
        import threading

        target = urllib.parse.urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                status, answer_headers, data = answer.status, dict(answer.getheaders()), answer.read()
                connection.close()
                status, answer_headers, data = rewrite(self.command, self.path, status, answer_headers, data) or (status, answer_headers, data)
                self.send_response(status)
                for key, value in answer_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def headless_chromium(width=1280, height=900):
    """Debian's Chromium, headless, driven by Selenium through Debian's /usr/bin/chromedriver (given explicitly, so
    Selenium never tries to download a driver). `--no-sandbox`: the tests run as root."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def postgres_database(prefix, url=None):
    """The URL of a new database of its own in the cluster `url` (default: COFFER_PG_URL, which tools/test sets; PGPASSFILE
    holds its password) names, made through psql as the URL's user; None when no cluster is named."""
    url = url or os.environ.get("COFFER_PG_URL")
    if not url:
        return None
    name = f"{prefix}_{os.urandom(6).hex()}"
    subprocess.run(["psql", url, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return url.rsplit("/", 1)[0] + "/" + name


# --- OCI registry ---
# docker-registry (distribution 2.8) on loopback, the few distribution-API requests the interop tests make with the
# standard library, and an implementation of docs/FORMAT.md's "OCI layout of a version" written from that document.

import base64
import contextlib
import hashlib
import http.client
import json
import shutil
import tempfile


def oci_json(value):
    """A layout document's bytes: compact JSON, keys sorted, `/` not escaped, UTF-8 (docs/FORMAT.md)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@contextlib.contextmanager
def oci_registry(credentials=None):
    """Runs docker-registry on a free loopback port with storage in a temporary directory, deletion enabled and, with
    `credentials=(user, password)`, htpasswd Basic auth; yields `127.0.0.1:PORT` (and the auth file path in
    `registry.auth_file` when there are credentials). Stopped and removed on exit."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry not found: apt-get install docker-registry")
    work = tempfile.mkdtemp(prefix="coffer-oci-")
    auth = ""
    auth_file = None
    if credentials:
        htpasswd = subprocess.run(["htpasswd", "-Bbn", *credentials], capture_output=True, check=True).stdout.decode()
        with open(f"{work}/htpasswd", "w") as f:
            f.write(htpasswd)
        auth = f"auth:\n  htpasswd:\n    realm: coffer-test\n    path: {work}/htpasswd\n"
    process = None
    try:
        for _ in range(3):
            port = free_port()
            with open(f"{work}/config.yml", "w") as f:
                f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                        f"    rootdirectory: {work}/storage\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
                        f"  secret: {os.urandom(16).hex()}\n{auth}")
            log = open(f"{work}/registry.log", "wb")
            process = subprocess.Popen([binary, "serve", f"{work}/config.yml"], stdout=log, stderr=log)
            for _ in range(200):
                if process.poll() is not None:
                    break
                if _listening(port):
                    address = f"127.0.0.1:{port}"
                    if credentials:
                        auth_file = f"{work}/auth.json"
                        token = base64.b64encode(":".join(credentials).encode()).decode()
                        with open(auth_file, "w") as f:
                            json.dump({"auths": {address: {"auth": token}}}, f)
                    yield OCIRegistry(address, auth_file, work)
                    return
                time.sleep(0.05)
            process.kill()
            process.wait()
            process = None
        raise RuntimeError(f"docker-registry did not start: {open(f'{work}/registry.log', 'rb').read()[-500:]!r}")
    finally:
        if process is not None:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class OCIRegistry(str):
    """`127.0.0.1:PORT`, with the registry's auth file (or None) and work directory."""

    def __new__(cls, address, auth_file, work):
        self = super().__new__(cls, address)
        self.auth_file = auth_file
        self.work = work
        return self


def _oci_request(address, method, path, body=None, headers=None):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def oci_put_blob(address, repository, data):
    """Uploads `data` as a blob (POST then monolithic PUT); returns its hex digest."""
    digest = hashlib.sha256(data).hexdigest()
    response, _ = _oci_request(address, "POST", f"/v2/{repository}/blobs/uploads/", headers={"Content-Length": "0"})
    assert response.status == 202, response.status
    location = response.getheader("Location")
    path = location.split("://", 1)[1].split("/", 1)[1] if "://" in location else location.lstrip("/")
    separator = "&" if "?" in path else "?"
    response, text = _oci_request(address, "PUT", f"/{path}{separator}digest=sha256:{digest}", body=data,
                                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    assert response.status == 201, (response.status, text)
    return digest


def oci_put_manifest(address, repository, reference, data, media_type):
    response, text = _oci_request(address, "PUT", f"/v2/{repository}/manifests/{reference}", body=data,
                                  headers={"Content-Type": media_type, "Content-Length": str(len(data))})
    assert response.status == 201, (response.status, text)
    return hashlib.sha256(data).hexdigest()


def oci_get_manifest(address, repository, reference, accept):
    """(Content-Type, bytes) of a manifest or index, or None when absent."""
    response, data = _oci_request(address, "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept})
    if response.status == 404:
        return None
    assert response.status == 200, response.status
    return response.getheader("Content-Type"), data


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = b"{}"


def oci_version_tag(model, version):
    """docs/FORMAT.md: SLUG-H, H = 32 hex digits of SHA-256(MODEL:VERSION), SLUG = MODEL:VERSION with / and : as _,
    a leading . or - as _, cut to 95 characters."""
    reference = f"{model}:{version}"
    digest = hashlib.sha256(reference.encode()).hexdigest()[:32]
    slug = reference.replace("/", "_").replace(":", "_")[:95]
    if slug[:1] in (".", "-"):
        slug = "_" + slug[1:]
    return f"{slug}-{digest}"


def oci_version_documents(version):
    """The documents docs/FORMAT.md's "OCI layout of a version" prescribes for `version`, a dict with model, version,
    digest (statement hex), created, publisher_key_id, files [{path, size, sha256, sealed_sha256, sealed_size}] and the
    envelope and bundle bytes. Returns a dict of bytes (config, manifest, statement_manifest, bundle_manifest, index)
    and the tag and manifest digest."""
    def descriptor(media_type, data, **extra):
        return dict(mediaType=media_type, digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data), **extra)

    config = oci_json({
        "config": {},
        "descriptor": {"createdAt": version["created"], "name": version["model"], "version": version["version"]},
        "modelfs": {"diffIds": ["sha256:" + f["sealed_sha256"] for f in version["files"]], "type": "layers"},
    })
    layers = [{
        "annotations": {"dev.coffer.plaintext.digest": "sha256:" + f["sha256"], "dev.coffer.plaintext.size": str(f["size"]),
                        "org.cncf.model.filepath": f["path"], "org.opencontainers.image.title": f["path"]},
        "digest": "sha256:" + f["sealed_sha256"], "mediaType": "application/vnd.coffer.sealed.v1", "size": f["sealed_size"],
    } for f in version["files"]]
    manifest = oci_json({
        "annotations": {"dev.coffer.model": version["model"], "dev.coffer.publisher.keyid": version["publisher_key_id"],
                        "dev.coffer.statement.digest": "sha256:" + version["digest"], "dev.coffer.version": version["version"],
                        "org.opencontainers.image.created": version["created"]},
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": descriptor("application/vnd.cncf.model.config.v1+json", config),
        "layers": layers, "mediaType": OCI_MANIFEST, "schemaVersion": 2,
    })
    subject = descriptor(OCI_MANIFEST, manifest)

    def artifact(kind, content, annotations):
        return oci_json({"annotations": annotations, "artifactType": kind, "config": descriptor("application/vnd.oci.empty.v1+json", OCI_EMPTY),
                         "layers": [descriptor(kind, content)], "mediaType": OCI_MANIFEST, "schemaVersion": 2, "subject": subject})

    dsse, bundle = "application/vnd.dsse.envelope.v1+json", "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement_annotations = {"dev.coffer.statement.digest": "sha256:" + version["digest"], "in-toto.io/predicate-type":
                             "https://coffer.dev/attestation/model/v1", "org.opencontainers.image.created": version["created"]}
    bundle_annotations = {"dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType":
                          "https://model_signing/signature/v1.0", "org.opencontainers.image.created": version["created"]}
    statement_manifest = artifact(dsse, version["envelope"], statement_annotations)
    bundle_manifest = artifact(bundle, version["bundle"], bundle_annotations)
    index = oci_json({"manifests": [descriptor(OCI_MANIFEST, statement_manifest, artifactType=dsse, annotations=statement_annotations),
                                    descriptor(OCI_MANIFEST, bundle_manifest, artifactType=bundle, annotations=bundle_annotations)],
                      "mediaType": OCI_INDEX, "schemaVersion": 2})
    return dict(tag=oci_version_tag(version["model"], version["version"]), manifest_digest=hashlib.sha256(manifest).hexdigest(),
                config=config, manifest=manifest, statement_manifest=statement_manifest, bundle_manifest=bundle_manifest, index=index)


def oci_publish(address, repository, version, sealed):
    """Publishes `version` (as for oci_version_documents) with its sealed files' bytes (`sealed`: path -> bytes) in the
    order docs/FORMAT.md gives; returns the documents."""
    documents = oci_version_documents(version)
    for data in [*sealed.values(), documents["config"], OCI_EMPTY, version["envelope"], version["bundle"]]:
        oci_put_blob(address, repository, data)
    oci_put_manifest(address, repository, documents["tag"], documents["manifest"], OCI_MANIFEST)
    for name in ("statement_manifest", "bundle_manifest"):
        oci_put_manifest(address, repository, "sha256:" + hashlib.sha256(documents[name]).hexdigest(), documents[name], OCI_MANIFEST)
    oci_put_manifest(address, repository, "sha256-" + documents["manifest_digest"], documents["index"], OCI_INDEX)
    return documents


# --- nginx in front of replicas ---

@contextlib.contextmanager
def nginx(upstreams, source=None):
    """Debian's nginx on a free loopback port, round-robin over `upstreams` (`127.0.0.1:PORT` of each `coffer serve`),
    streaming request and response bodies (uploads and blobs are not buffered to disk), a dead upstream taken out for
    2 s after one failure and a request that failed to connect tried on the next; connecting to them from `source`
    (another loopback address, such as 127.0.0.2, to tell its connections from direct clients'). Yields the base URL;
    stopped and removed on exit."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise RuntimeError("nginx not found: apt-get install nginx-light")
    work = tempfile.mkdtemp(prefix="coffer-nginx-")
    port = free_port()
    servers = "".join(f"    server {u} max_fails=1 fail_timeout=2s;\n" for u in upstreams)
    # As root, nginx's workers would drop to nobody, who cannot use this private directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = " ".join(f"{kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(f"""{user}worker_processes 1;
error_log {work}/error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  {temp}
  upstream coffer {{
{servers}    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    {f"proxy_bind {source};" if source else ""}
    location / {{
      proxy_pass http://coffer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_next_upstream error timeout;
      proxy_read_timeout 300s;
    }}
  }}
}}
""")
    process = subprocess.Popen([binary, "-p", work, "-c", f"{work}/nginx.conf", "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{work}/stderr.log", "wb"))
    try:
        for _ in range(200):
            if _listening(port):
                break
            if process.poll() is not None:
                raise RuntimeError(f"nginx did not start: {open(f'{work}/stderr.log', 'rb').read()[-500:]!r}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


def http_json(base, method, path, token=None, body=None, headers=None, timeout=120):
    """One request with the standard library; returns (status, parsed JSON or raw bytes, response headers)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, method=method, data=data)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None and not isinstance(body, bytes):
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, got = error.code, error.read(), dict(error.headers)
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, raw, got


WEB_SIGNIN_COOKIE = "__Host-coffer_signin"
WEB_SESSION_COOKIE = "__Host-coffer_session"


def web_sign_in(base, token, context=None, headers=None):
    """Signs in to a server's web pages without a browser (the form, its cookie, the post): the post's status, body
    and Set-Cookie lines."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    with opener.open(base + "/signin", timeout=30) as form:
        cookie = next(v.split(";")[0] for k, v in form.headers.items() if k.lower() == "set-cookie" and v.startswith(WEB_SIGNIN_COOKIE + "="))
        html = form.read().decode()
    csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    body = urllib.parse.urlencode({"csrf": csrf, "token": token}).encode()
    request = urllib.request.Request(base + "/signin", data=body, method="POST", headers={"Cookie": cookie, **(headers or {})})
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode(), response.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers.get_all("Set-Cookie") or []
