import CofferCrypto
import Foundation
import GRDB
import Synchronization
import Testing

@testable import CofferRegistry

struct PushPullTests {
    private func privacy() -> PrivacyMetadata {
        var p = PrivacyMetadata()
        p.mechanism = "dp-sgd"
        p.epsilon = 2.5966
        p.delta = 1e-5
        p.noiseMultiplier = 1.1
        p.samplingRate = 256.0 / 60000
        p.steps = 14062
        p.pruningRatio = 0.5
        return p
    }

    @Test(arguments: MetadataBackend.available) func pushPullRoundTripOfAModelDirectory(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["model.safetensors": bytes(200_000), "config/arch.json": Array(#"{"layers":3}"#.utf8), "empty": []])
        var request = PushRequest(model: "team/fraud", paths: [dir])
        request.privacy = privacy()
        request.alias = "prod"
        request.tags = ["owner": "risk"]
        let pushed = try await f.registry.push(request, publisher: alice)
        #expect(pushed.version == "1")
        #expect(pushed.files == 3)

        let second = try await f.registry.push(PushRequest(model: "team/fraud", paths: [dir]), publisher: alice)
        #expect(second.version == "2")
        // A push's records (the first with its alias record) are adopted as they were applied, not read back: the state
        // this process and this user's memory hold, as the commit left them, is the one a replay of the stored ledger gives.
        let adopted = try #require(f.registry.ledger.withLock { $0 })
        let remembered = try f.memory.remembered(adopted.registry)?.state
        let replayed = try await Registry(at: f.home, memory: nil).ledgerState()
        #expect(adopted.latest["team/fraud"]?.version == "2" && adopted.alias("prod", of: "team/fraud") != nil)
        #expect(adopted == replayed && remembered == replayed)

        let pulled = try await f.registry.pull(try ModelReference(parsing: "team/fraud@prod"), identity: alice, into: f.path("out"))
        #expect(pulled.version == "1")
        #expect(pulled.files == ["config/arch.json", "empty", "model.safetensors"])
        #expect(try f.read("out/model.safetensors") == bytes(200_000))
        #expect(try f.read("out/config/arch.json") == Array(#"{"layers":3}"#.utf8))
        #expect(try f.read("out/empty") == [])

        let report = try await f.registry.verify(try ModelReference(parsing: "team/fraud:1"))
        #expect(report.signer == "alice")
        let deep = try await f.registry.verify(try ModelReference(parsing: "team/fraud"), readingDataWith: alice)
        #expect(deep.version == "2" && deep.readData)
    }

    /// A model that exists only in memory (a federation's global model) is pushed without a file on disk, and is
    /// checked as a file would be: its path, and a path another input takes.
    @Test func contentsInMemoryArePushedAndPulledLikeFiles() async throws {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let weights = PushRequest.Content(path: "model.safetensors", bytes: bytes(300_000))
        let config = PushRequest.Content(path: "config/arch.json", bytes: Array(#"{"layers":3}"#.utf8))
        let dir = try f.makeModel("model", ["readme.txt": Array("on disk".utf8)])
        var request = PushRequest(model: "fl/global", contents: [weights, config])
        request.paths = [dir]
        let pushed = try await f.registry.push(request, publisher: alice)
        #expect(pushed.files == 3 && pushed.bytes == 300_000 + config.bytes.count + 7)
        let pulled = try await f.registry.pull(try ModelReference(parsing: "fl/global:1"), identity: alice, into: f.path("out"))
        #expect(pulled.files == ["config/arch.json", "model.safetensors", "readme.txt"])
        #expect(try f.read("out/model.safetensors") == weights.bytes)
        #expect(try f.read("out/config/arch.json") == config.bytes)

        let blobsBefore = f.blobDigests().count
        let escaping = PushRequest(model: "fl/global", contents: [.init(path: "../model.safetensors", bytes: [1])])
        await #expect(
            throws: CofferRegistryError.invalidPath("../model.safetensors", reason: "escapes the model directory or is not a plain relative path")
        ) {
            _ = try await f.registry.push(escaping, publisher: alice)
        }
        var twice = PushRequest(model: "fl/global", contents: [.init(path: "readme.txt", bytes: [1])])
        twice.paths = [dir]
        await #expect(throws: CofferRegistryError.duplicatePath("readme.txt")) { _ = try await f.registry.push(twice, publisher: alice) }
        #expect(f.blobDigests().count == blobsBefore)
    }

    /// The write-ahead log stays between commands; a database deleted without it leaves a log that SQLite would replay
    /// into any new database of that name. `init` removes it.
    @Test func initIgnoresALogLeftBesideNoDatabase() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("model", ["w.bin": bytes(1000)])]), publisher: alice)
        let log = "\(f.home)/registry.sqlite-wal"
        #expect((try FileManager.default.attributesOfItem(atPath: log)[.size] as? Int ?? 0) > 0, "the push is in the log")
        // (backends.json too, written when the run keeps blobs in an OCI registry: the new registry is the embedded one)
        for name in ["registry.sqlite", "registry.key", "registry.pub", "backends.json"] {
            try? FileManager.default.removeItem(atPath: "\(f.home)/\(name)")
        }
        let fresh = try await Registry.create(
            at: f.home,
            passphrase: passphrase("registry passphrase"),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            memory: ClientMemory(directory: f.path("other-client"))
        )
        #expect(try await fresh.fsck().problems.isEmpty)
        await #expect(throws: CofferRegistryError.unknownModel("m")) { _ = try await fresh.verify(try ModelReference(parsing: "m")) }
    }

    /// `init` makes the 256 fan-out folders of the blob directory, so that no push makes one (a pusher that found a
    /// folder another had just made could commit before the folder's own entry was durable). A store made without
    /// them gets all of them at its first push.
    @Test func theBlobFanOutFoldersAreMadeAllAtOnce() async throws {
        let f = try await RegistryFixture(.sqlite)
        let home = f.path("embedded")
        let registry = try await Registry.create(
            at: home,
            passphrase: passphrase("registry passphrase"),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            memory: ClientMemory(directory: f.path("embedded-client"))
        )
        let base = "\(home)/blobs/sha256"
        let all = (0...255).map { String(format: "%02x", $0) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: base).sorted() == all)
        for name in all { try FileManager.default.removeItem(atPath: "\(base)/\(name)") }
        let alice = try person("alice")
        let key = Array(try Data(contentsOf: URL(fileURLWithPath: "\(home)/registry.key")))
        let registrySigner = Signer(UnlockedIdentity(try Identity.decrypt(keyFile: key, passphrase: passphrase("registry passphrase"))))
        try await registry.trust(alice.publicIdentity, by: registrySigner)
        _ = try await registry.push(PushRequest(model: "m", paths: [try f.makeModel("model", ["w.bin": bytes(1000)])]), publisher: alice)
        #expect(try FileManager.default.contentsOfDirectory(atPath: base).sorted() == all)
        _ = try await registry.pull(try ModelReference(parsing: "m"), identity: alice, into: f.path("out"))
        #expect(try await registry.fsck().problems.isEmpty)
    }

    /// A version numbered Int64.max leaves no next number: an automatic push says so in one line (it trapped adding 1,
    /// locally and in the HTTP client, found by helper-38's review).
    @Test(arguments: MetadataBackend.available) func anAutomaticVersionPastTheHighestNumberIsRefused(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        let dir = try f.makeModel("model", ["w.bin": bytes(1000)])
        _ = try await f.registry.push(PushRequest(model: "m", version: String(Int64.max), paths: [dir]), publisher: alice)
        await expectRefusal("m has version 9223372036854775807, the highest number: name the next one (m:VERSION)") {
            _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        }
        #expect(try await f.registry.list(model: "m", where: nil, limit: nil).map(\.version) == [String(Int64.max)])
    }

    @Test(arguments: MetadataBackend.available) func existingVersionAndBadInputsAreRefusedAndNothingIsStored(on backend: MetadataBackend) async throws
    {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        let dir = try f.makeModel("model", ["w.bin": bytes(1000)])
        _ = try await f.registry.push(PushRequest(model: "m", version: "v1", paths: [dir]), publisher: alice)
        let blobsBefore = f.blobDigests().count
        await #expect(throws: CofferRegistryError.versionExists("m:v1")) {
            _ = try await f.registry.push(PushRequest(model: "m", version: "v1", paths: [dir]), publisher: alice)
        }
        await #expect(throws: CofferRegistryError.invalidName("../m")) {
            _ = try await f.registry.push(PushRequest(model: "../m", paths: [dir]), publisher: alice)
        }
        await #expect(throws: CofferRegistryError.invalidVersion("a b")) {
            _ = try await f.registry.push(PushRequest(model: "m", version: "a b", paths: [dir]), publisher: alice)
        }
        var negative = PushRequest(model: "m", paths: [dir])
        negative.privacy.epsilon = -1
        await #expect(throws: CofferRegistryError.invalidPrivacy("epsilon must be a finite number >= 0, got -1.0")) {
            _ = try await f.registry.push(negative, publisher: alice)
        }
        var badDelta = PushRequest(model: "m", paths: [dir])
        badDelta.privacy.delta = 1
        await #expect(throws: CofferRegistryError.invalidPrivacy("delta must be in [0, 1), got 1.0")) {
            _ = try await f.registry.push(badDelta, publisher: alice)
        }
        try FileManager.default.createSymbolicLink(atPath: f.path("model/link"), withDestinationPath: "/etc/passwd")
        await #expect(throws: CofferRegistryError.self) { _ = try await f.registry.push(PushRequest(model: "m2", paths: [dir]), publisher: alice) }
        #expect(f.blobDigests().count == blobsBefore)
        await #expect(throws: CofferRegistryError.unknownModel("m2")) { _ = try await f.registry.verify(try ModelReference(parsing: "m2")) }
    }

    @Test(arguments: MetadataBackend.available) func pullRefusesUntrustedSignersAndNonRecipients(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        let bob = try person("bob")
        let dir = try f.makeModel("model", ["w.bin": bytes(5000)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        await #expect(throws: CofferRegistryError.untrustedSigner(keyID: alice.publicIdentity.keyID)) {
            _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: alice, into: f.path("out"))
        }
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        await #expect(throws: CofferRegistryError.notARecipient("m:1")) {
            _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("out"))
        }
        #expect(!f.exists("out/w.bin"))
        var shared = PushRequest(model: "m", paths: [dir])
        shared.recipients = [bob.publicIdentity]
        _ = try await f.registry.push(shared, publisher: alice)
        _ = try await f.registry.pull(try ModelReference(parsing: "m:2"), identity: bob, into: f.path("out"))
        #expect(try f.read("out/w.bin") == bytes(5000))
    }

    /// The version's rows and its audit entry are one transaction: if the entry cannot be written, nothing is pushed.
    @Test func aPushCommitsTogetherWithItsAuditEntry() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["w.bin": bytes(1000)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        await #expect(try f.registry.auditEntries().contains { $0.action == "push" && $0.target == "m:1" && $0.outcome == .ok })
        try await DatabaseQueue(path: "\(f.home)/registry.sqlite").write { db in
            try db.execute(
                sql: """
                    CREATE TRIGGER refuse_push_entries BEFORE INSERT ON audit_log WHEN NEW.action = 'push' AND NEW.outcome = 'ok'
                    BEGIN SELECT RAISE(ABORT, 'audit log refused'); END
                    """
            )
        }
        await #expect(throws: CofferRegistryError.self) { _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice) }
        await #expect(try f.registry.list(model: "m", where: nil, limit: 10).count == 1, "no version without its audit entry")
    }

    @Test func tamperedBlobIsDetectedAndNothingIsWritten() async throws {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(70_000), "b.bin": bytes(70_000, seed: 9)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m")).id)
        let blob = f.blobPath(stored.files[1].sealedSHA256)
        chmod(blob, 0o600)
        var data = Array(try Data(contentsOf: URL(fileURLWithPath: blob)))
        data[data.count / 2] ^= 1
        try Data(data).write(to: URL(fileURLWithPath: blob))
        await #expect(throws: CofferRegistryError.tampered("blob of b.bin does not match its signed SHA-256")) {
            _ = try await f.registry.verify(try ModelReference(parsing: "m"))
        }
        await #expect(throws: CofferRegistryError.self) {
            _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: alice, into: f.path("out"))
        }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: f.path("out"))) ?? []
        #expect(left.isEmpty, "left behind: \(left)")
    }

    @Test(arguments: MetadataBackend.available) func tamperedDatabaseRowsAreDetected(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(1000)])
        var request = PushRequest(model: "m", paths: [dir])
        request.privacy = privacy()
        _ = try await f.registry.push(request, publisher: alice)
        // Edit the privacy column behind the registry's back (dropping the immutability trigger, as an attacker with the file could).
        try await f.tamper("UPDATE versions SET epsilon = 0.1")
        await #expect(throws: CofferRegistryError.tampered("m:1: the privacy columns disagree with the signed statement")) {
            _ = try await f.registry.verify(try ModelReference(parsing: "m"))
        }
    }

    @Test func privacyFileFromATrainingCheckpointIsRead() async throws {
        let f = try await RegistryFixture()
        let json = """
            {"mechanism":"dp-sgd","epsilon":2.59,"epsilon_rdp":2.59,"epsilon_pld":2.39,"delta":1e-5,"max_grad_norm":1.0,"dataset_size":60000,
             "noise_mode":"standard",
             "segments":[{"sample_rate":0.004266,"noise_multiplier":1.1,"steps":14062}],
             "pruning":{"method":"global_magnitude","target_ratio":0.5,"achieved_sparsity":0.5001}}
            """
        try Data(json.utf8).write(to: URL(fileURLWithPath: f.path("privacy.json")))
        let p = try PrivacyMetadata(contentsOf: f.path("privacy.json"))
        #expect(p.epsilon == 2.59 && p.clippingNorm == 1.0 && p.steps == 14062 && p.noiseMultiplier == 1.1)
        #expect(p.pruningMethod == "global_magnitude" && p.pruningRatio == 0.5 && p.achievedSparsity == 0.5001)
        // A checkpoint from before 2026-12-06 does not say: its batches came from the seed and its statistics were exact.
        #expect(p.standardisation == "nonprivate" && p.batchSampling == "seeded")
        // Today's: the statistics' DP release first; the summary columns are DP-SGD's, and the new facts are signed.
        let withStatistics = """
            {"mechanism":"dp-sgd","epsilon":2.61,"delta":1e-5,"max_grad_norm":1.0,"dataset_size":60000,
             "segments":[{"sample_rate":1,"noise_multiplier":10,"steps":1},{"sample_rate":0.004266,"noise_multiplier":1.1,"steps":14062}],
             "standardisation":{"method":"dp","noise_multiplier":10,"sensitivity":11.3,"grid":9.5367431640625e-07},"batch_sampling":"secret",
             "pruning":{"method":"global_magnitude","target_ratio":0.5,"achieved_sparsity":0.5001}}
            """
        try Data(withStatistics.utf8).write(to: URL(fileURLWithPath: f.path("privacy.json")))
        let q = try PrivacyMetadata(contentsOf: f.path("privacy.json"))
        #expect(q.standardisation == "dp" && q.batchSampling == "secret")
        // Without its grid, a DP release written before the grid existed (its noise left low-order bits uncovered).
        try Data(withStatistics.replacingOccurrences(of: ",\"grid\":9.5367431640625e-07", with: "").utf8).write(
            to: URL(fileURLWithPath: f.path("privacy.json"))
        )
        #expect(try PrivacyMetadata(contentsOf: f.path("privacy.json")).standardisation == "nonprivate")
        try Data(withStatistics.utf8).write(to: URL(fileURLWithPath: f.path("privacy.json")))
        #expect(q.noiseMultiplier == 1.1 && q.samplingRate == 0.004266 && q.steps == 14062)
        guard case .object(let signed) = q.json else {
            Issue.record("the predicate is not an object")
            return
        }
        #expect(signed["standardisation"] == .string("dp") && signed["batch_sampling"] == .string("secret"))
        try Data(withStatistics.replacingOccurrences(of: "\"secret\"", with: "\"guessed\"").utf8).write(
            to: URL(fileURLWithPath: f.path("privacy.json"))
        )
        #expect(throws: CofferRegistryError.invalidPrivacy("batch_sampling must be secret or seeded, got guessed")) {
            _ = try PrivacyMetadata(contentsOf: f.path("privacy.json"))
        }
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: f.path("bad.json")))
        #expect(throws: CofferRegistryError.invalidPrivacy("\(f.path("bad.json")) is not a JSON object")) {
            _ = try PrivacyMetadata(contentsOf: f.path("bad.json"))
        }
    }
}

/// A session's rate bucket as replicas whose clocks differ draw from it.
struct SessionRateBucketTests {
    @Test func aReplicaWhoseClockIsBehindIsNotCreditedTheSameSecondsAgain() {
        // 10 per second, burst 20: alternating between a replica at t and one 3 s behind, over 10 s of requests.
        var bucket = SessionRateRecord(sessionID: "s", tokens: 20, updatedAt: 1000)
        var allowed = 0
        for i in 0..<100 {
            let now = 1000 + Double(i) * 0.1 - (i.isMultiple(of: 2) ? 0 : 3)
            let (after, wait) = bucket.taking(rate: 10, burst: 20, now: now)
            bucket = after
            if wait == nil { allowed += 1 }
        }
        // The limit allows 20 at once and 10 per second after: at most 20 + 10 * 9.9 = 119 over the whole 9.9 s even
        // for one replica; what matters is that the skew adds nothing: the behind replica's requests refill nothing.
        var honest = SessionRateRecord(sessionID: "s", tokens: 20, updatedAt: 1000)
        var honestAllowed = 0
        for i in 0..<100 {
            let (after, wait) = honest.taking(rate: 10, burst: 20, now: 1000 + Double(i) * 0.1)
            honest = after
            if wait == nil { honestAllowed += 1 }
        }
        #expect(allowed <= honestAllowed, "skewed \(allowed), one clock \(honestAllowed)")
        #expect(bucket.updatedAt == 1000 + 99 * 0.1 - 3 || bucket.updatedAt >= 1000 + 98 * 0.1, "time never goes back")
    }
}
