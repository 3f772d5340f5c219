import CofferCrypto
import CofferRegistry
import CofferTraining
import Foundation
import HummingbirdTesting
import NIOCore
import Testing

@testable import CofferClient

/// Resumable uploads, pushes that resume after an interruption, and pulls checked against the client's own ledger.
struct PushPullTests {
    @Test func anUploadInterruptedResumesWhereTheServerSaysItStands() async throws {
        let f = try await Fixture()
        let blob = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try await f.app().test(.live) { live in
            let port = try live.livePort
            let first = try f.client(port: port, token: "admin")
            let started = try await first.startUpload()
            #expect(started.offset == 0)
            let part = try await first.append(to: started.id, at: 0, ByteBuffer(bytes: blob[0..<100_000]))
            #expect(part == UploadStatus(id: started.id, offset: 100_000))

            // Another client (a process started again) asks where the upload stands and goes on from there.
            let second = try f.client(port: port, token: "admin")
            #expect(try await second.upload(started.id).offset == 100_000)
            let stale = await #expect(throws: CofferClientError.self) {
                try await second.append(to: started.id, at: 0, ByteBuffer(bytes: blob[0..<100_000]))
            }
            #expect(stale?.status == 409 && stale?.description.contains("resume from 100000") == true, "\(String(describing: stale))")
            _ = try await second.append(to: started.id, at: 100_000, ByteBuffer(bytes: blob[100_000...]))
            let wrong = await #expect(throws: CofferClientError.self) {
                try await second.finishUpload(started.id, digest: String(repeating: "0", count: 64))
            }
            #expect(wrong?.status == 400, "\(String(describing: wrong))")

            let again = try await second.startUpload()
            _ = try await second.append(to: again.id, at: 0, ByteBuffer(bytes: blob))
            let digest = Digest.hex(Digest.sha256(blob))
            #expect(try await second.finishUpload(again.id, digest: digest) == UploadStored(digest: digest))
            let gone = await #expect(throws: CofferClientError.self) { try await second.upload(again.id) }
            #expect(gone?.status == 404)
        }
    }

    /// The server judges an uploaded statement by the rules a new version must meet, as a local push does before sealing:
    /// a client that skips its own check (here, resuming from an outbox whose statement was signed for other privacy
    /// metadata, which the client does not check again) is refused at commit, and nothing is committed (helper-71).
    @Test func anUploadedStatementThatBreaksTheRulesForNewVersionsIsRefusedAtCommit() async throws {
        let f = try await Fixture()
        try FileManager.default.createDirectory(atPath: f.path("model"), withIntermediateDirectories: true)
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: f.path("model/weights.bin")))
        var honest = PushRequest(model: "m/dp", paths: [f.path("model")])
        honest.privacy.mechanism = "dp-sgd"
        honest.privacy.delta = 1e-5
        honest.privacy.segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.1, steps: 100)]
        var unaccounted = honest
        unaccounted.privacy.standardisation = "dp"  // a DP release of the statistics that its history leaves out
        #expect(throws: CofferRegistryError.self) { try unaccounted.privacy.validateForPush() }
        let (request, prepare, registryKey) = (unaccounted, honest, try #require(try await f.registry.ledgerState().currentKey))
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "admin")
            let outbox = try PushOutbox.directory(for: client.baseURL, request: request, environment: ["COFFER_OUTBOX": f.path("outbox")])
            var prepared = try PreparedPush.prepare(prepare, publisher: f.alice.identity, registryKey: registryKey, version: "1", outbox: outbox)
            try prepared.sign(request, version: "1", publisher: f.alice.identity)
            try JSONEncoder().encode(prepared).write(to: URL(fileURLWithPath: "\(outbox)/prepared.json"))
            let refused = await #expect(throws: CofferClientError.self) {
                try await client.push(request, publisher: f.alice.identity, outbox: outbox)
            }
            #expect(
                refused?.description.hasSuffix(
                    "standardisation dp needs its release, {sample_rate: 1, steps: 1}, first in a history of two or more segments"
                ) == true,
                "\(String(describing: refused))"
            )
            await #expect(throws: CofferRegistryError.unknownModel("m/dp"), "nothing is committed") {
                try await f.registry.list(model: "m/dp", where: nil, limit: nil)
            }
        }
    }

    /// A push whose number another push took meanwhile hears 409 and signs for the next one: the server answers from
    /// the versions its state records, before the replay would refuse a second record for the number (CI: interop's
    /// pushes racing through nginx got 403 "records rep/raced:1 a second time", and the client gave up).
    @Test func aPushWhoseNumberWasTakenMeanwhileSignsForTheNext() async throws {
        let f = try await Fixture()
        for (name, byte) in [("mine", UInt8(1)), ("theirs", 2)] {
            try FileManager.default.createDirectory(atPath: f.path(name), withIntermediateDirectories: true)
            try Data(repeating: byte, count: 4096).write(to: URL(fileURLWithPath: f.path("\(name)/weights.bin")))
        }
        let request = PushRequest(model: "m/raced", paths: [f.path("mine")])
        let registryKey = try #require(try await f.registry.ledgerState().currentKey)
        try await f.app().test(.live) { live in
            let notices = Notices()
            let client = try f.client(port: try live.livePort, token: "admin", notices: notices)
            // Prepared and uploaded for number 1 (a push interrupted after its uploads), then number 1 is taken.
            let outbox = try PushOutbox.directory(for: client.baseURL, request: request, environment: ["COFFER_OUTBOX": f.path("outbox")])
            let prepared = try PreparedPush.prepare(request, publisher: f.alice.identity, registryKey: registryKey, version: "1", outbox: outbox)
            try JSONEncoder().encode(prepared).write(to: URL(fileURLWithPath: "\(outbox)/prepared.json"))
            let theirs = try await f.registry.push(PushRequest(model: "m/raced", paths: [f.path("theirs")]), publisher: f.alice)
            #expect(theirs.version == "1")
            let answer = try await client.push(request, publisher: f.alice.identity, outbox: outbox)
            #expect(notices.all.contains("resuming the push of m/raced:1 from \(outbox)"), "it committed for 1 first: \(notices.all)")
            #expect(answer.version == "2")
            #expect(try await f.registry.list(model: "m/raced", where: nil, limit: nil).map(\.version).sorted() == ["1", "2"])
        }
    }

    @Test func aPushCutShortResumesAndThePullGetsTheSameBytes() async throws {
        let f = try await Fixture()
        try FileManager.default.createDirectory(atPath: f.path("model"), withIntermediateDirectories: true)
        let weights = (0..<(3 << 20)).map { _ in UInt8.random(in: 0...255) }
        try Data(weights).write(to: URL(fileURLWithPath: f.path("model/weights.bin")))
        try Data(#"{"layers": 4}"#.utf8).write(to: URL(fileURLWithPath: f.path("model/config.json")))
        var prepared = PushRequest(model: "m/big", paths: [f.path("model")])
        prepared.alias = "prod"
        let request = prepared
        try await f.app().test(.live) { live in
            let notices = Notices()
            let client = try f.client(port: try live.livePort, token: "admin", notices: notices)
            let outbox = try PushOutbox.directory(for: client.baseURL, request: request, environment: ["COFFER_OUTBOX": f.path("outbox")])

            // The first attempt stops after the server took two pieces of the weights, as a killed process would.
            let pieces = Counter()
            let alice = f.alice
            let cut = Task {
                try await client.push(request, publisher: alice.identity, outbox: outbox, pieceSize: 256 << 10) { _, _, size in
                    if size > 1 << 20, pieces.increment() == 2 { withUnsafeCurrentTask { $0?.cancel() } }
                }
            }
            await #expect(throws: CofferClientError.self) { try await cut.value }
            await #expect(throws: CofferRegistryError.unknownModel("m/big"), "nothing is committed yet") {
                try await f.registry.list(model: "m/big", where: nil, limit: nil)
            }

            let pushed = try await client.push(request, publisher: f.alice.identity, outbox: outbox, pieceSize: 256 << 10)
            #expect(pushed.model == "m/big" && pushed.version == "1")
            #expect(notices.all.contains { $0.hasPrefix("resuming the push of m/big:1") }, "\(notices.all)")
            #expect(notices.all.contains { $0.contains("resuming the upload of blob") && $0.contains("at byte 524288") }, "\(notices.all)")
            #expect(!FileManager.default.fileExists(atPath: outbox), "the outbox goes once the version is committed")

            let pulled = try await client.pull(try ModelReference(parsing: "m/big@prod"), identity: f.alice.identity, into: f.path("pulled"))
            #expect(pulled.digest == pushed.digest && pulled.signer == "alice")
            #expect(try Data(contentsOf: URL(fileURLWithPath: f.path("pulled/weights.bin"))) == Data(weights))
            let verified = try await client.verify(try ModelReference(parsing: "m/big:1"))
            #expect(verified.files == 2 && verified.digest == pushed.digest)
            let shown = try await client.show(try ModelReference(parsing: "m/big@prod"))
            #expect(shown["verified"] == .bool(true) && shown["version"] == .string("1"), "\(shown)")
        }
    }

    @Test func theServersOwnCheckOfAVersionReachesTheClient() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "bob-read")
            let answer = try await client.serverVerify("m/risk@prod")
            let local = try await f.registry.verify(try ModelReference(parsing: "m/risk:1"))
            #expect(answer == VerifyAnswer(local, includeReadData: false), "\(answer)")
            #expect(answer.ok && answer.signer == "alice" && answer.readData == nil, "the server never decrypts, so never says it did")
            let missing = await #expect(throws: CofferClientError.self) { try await client.serverVerify("m/risk:9") }
            #expect(missing?.status == 404, "\(String(describing: missing))")
        }
    }

    /// A version committed between the client's sync and its package: its record lies beyond the replay, and the
    /// client syncs once more rather than call it tampering (helper-39).
    @Test func aVersionCommittedAfterTheSyncIsConfirmedAfterOneMoreSync() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "admin")
            var expected = try await client.expectation(try ModelReference(parsing: "m/risk:2"), registryKey: nil)
            let synced = expected.ledger.seq
            try FileManager.default.createDirectory(atPath: f.path("two"), withIntermediateDirectories: true)
            try Data((0..<5000).map { UInt8(truncatingIfNeeded: $0) }).write(to: URL(fileURLWithPath: f.path("two/w.bin")))
            let pushed = try await f.registry.push(PushRequest(model: "m/risk", paths: [f.path("two")]), publisher: f.alice)
            let package = try await client.package(for: &expected)
            #expect(pushed.version == "2" && package.digest == pushed.digest)
            #expect(expected.digest == pushed.digest && expected.ledger.seq > synced)

            // After a version numbered Int64.max there is no automatic next one: one line, not a trap (helper-38).
            let top = try await f.registry.push(PushRequest(model: "m/risk", version: String(Int64.max), paths: [f.path("two")]), publisher: f.alice)
            #expect(top.version == String(Int64.max))
            let next = PushRequest(model: "m/risk", paths: [f.path("two")])
            let outbox = try PushOutbox.directory(for: client.baseURL, request: next, environment: ["COFFER_OUTBOX": f.path("outbox")])
            let refused = await #expect(throws: CofferClientError.self) { try await client.push(next, publisher: f.alice.identity, outbox: outbox) }
            #expect(refused?.description.contains("has version 9223372036854775807, the highest number") == true, "\(String(describing: refused))")
        }
    }

    @Test func aPullIsRefusedToAPrincipalWithoutTheDecryptRole() async throws {
        let f = try await Fixture()
        try await f.app().test(.live) { live in
            let client = try f.client(port: try live.livePort, token: "bob-read")
            let bob = try Identity.generate(name: "bob")
            let refused = await #expect(throws: CofferClientError.self) {
                try await client.pull(try ModelReference(parsing: "m/risk@prod"), identity: bob, into: f.path("nothing"))
            }
            #expect(refused == .registry(.notARecipient("m/risk:1")), "\(String(describing: refused))")
            #expect(!FileManager.default.fileExists(atPath: f.path("nothing/model.safetensors")))
        }
    }
}

/// A count shared with a `@Sendable` callback.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0

    func increment() -> Int {
        lock.withLock {
            value += 1
            return value
        }
    }
}
