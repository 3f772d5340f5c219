import CofferClient
import CofferCrypto
import CofferRegistry
import CofferServer
import CofferTestSupport
import CofferTraining
import Foundation
import Hummingbird
import HummingbirdTesting

/// A registry owned by alice (admin and publisher), with bob (reader, inference and publisher on m/) and carol
/// (reader on other/ only), m/risk:1 a small trained checkpoint at m/risk@prod, and bearer tokens for each.
final class Fixture: @unchecked Sendable {
    let root: URL
    let registry: Registry
    let registryIdentity: UnlockedIdentity
    let alice: UnlockedIdentity
    private(set) var tokens: [String: String] = [:]

    var home: String { path("home") }

    func path(_ name: String) -> String { root.appendingPathComponent(name).path }

    init() async throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-client-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let secret = SecureBytes(count: 8)
        secret.withUnsafeMutableBytes { $0.copyBytes(from: Array("pass1234".utf8)) }
        registry = try await Registry.create(
            at: root.appendingPathComponent("home").path,
            passphrase: secret,
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            backends: Backends(metadata: TestBackends.newMetadata(), blobs: TestBackends.newBlobs()),
            memory: ClientMemory(directory: root.appendingPathComponent("registry-memory").path)
        )
        let keyFile = Array(try Data(contentsOf: root.appendingPathComponent("home/registry.key")))
        registryIdentity = UnlockedIdentity(try Identity.decrypt(keyFile: keyFile, passphrase: secret))
        alice = UnlockedIdentity(try Identity.generate(name: "alice"))
        let bob = try Identity.generate(name: "bob")
        let carol = try Identity.generate(name: "carol")
        try await registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: Signer(registryIdentity))
        let signer = Signer(alice)
        try await registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: signer)
        try await registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [], by: signer)
        for role in [Role.reader, .inference, .publisher] {
            try await registry.grant(Grant(principal: "bob", role: role, scope: "m/"), by: signer)
        }
        try await registry.grant(Grant(principal: "carol", role: .reader, scope: "other/"), by: signer)
        try await registry.trust(alice.publicIdentity, by: signer)
        var request = PushRequest(model: "m/risk", paths: [try await TrainedCheckpoint.write(into: path("ckpt"))])
        request.alias = "prod"
        _ = try await registry.push(request, publisher: alice)
        for (name, principal, scope) in [
            ("admin", "alice", TokenScope.admin), ("bob-read", "bob", .read), ("bob-infer", "bob", .infer), ("carol-read", "carol", .read),
        ] {
            let created = try await registry.createToken(principal: principal, scope: scope, ttl: 600, by: signer)
            tokens[name] = created.token.text().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        }
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    /// The real application over this registry, on a port the system picks.
    func app() async throws -> some ApplicationProtocol {
        try await buildApplication(registry: registry, registryIdentity: registryIdentity, configuration: .init(port: 0))
    }

    /// A client of the server on `port` with the token named `token`; its pins live in `memory` under the fixture.
    func client(port: Int, token: String, memory: String = "client-memory", notices: Notices? = nil) throws -> CofferClient {
        try CofferClient(
            baseURL: URL(string: "http://127.0.0.1:\(port)")!,
            token: Secret(text: tokens[token] ?? token),
            memory: ClientMemory(directory: path(memory)),
            notice: { notices?.add($0) }
        )
    }
}

/// What a client said beside its answers.
final class Notices: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    func add(_ line: String) { lock.withLock { lines.append(line) } }
    var all: [String] { lock.withLock { lines } }
}

extension TestClientProtocol {
    /// The live server's port (`.live` testing always has one).
    var livePort: Int {
        get throws {
            guard let port else { throw CofferClientError.invalidInput("the live test server has no port") }
            return port
        }
    }
}
