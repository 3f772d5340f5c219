import CofferCrypto
import CofferFederated
import CofferTraining
import Foundation

/// The `fl-message` fuzz target: the federation's messages as the coordinator and a site take them, in process.
///
/// Signatures are checked before anything else, so bytes sent as they are would stop there. Instead the input is
/// signed with the key of an enrolled site (or of the coordinator), and the fields a message is refused on before its
/// content (session and site; a submission's round and stage, a task's sequence number) are set to pass: what is
/// fuzzed is the content, at every stage of a real round between a ``CoordinatorCore`` and three ``FederatedSite``s.
/// The first byte chooses what the rest of the input is:
///
/// | first byte mod 15 | the rest is |
/// | --- | --- |
/// | 0 | any message, JSON or binary, to every decoder (for JSON, MessageCoding and JSONDecoder alone, which must agree), and a `Coffer-Signature` header line before a body |
/// | 1, 2 | a join, a poll, to the coordinator |
/// | 3 ... 7 | site 0's submission at the advertise, share, masked, consistency or unmask stage |
/// | 8 ... 13 | the task site 0 gets at the advertise ... unmask stage, or the finished task |
/// | 14 | the plaintext of a site's unmasking shares, to the coordinator's parser |
///
/// A submission or task that decodes (JSON or binary) takes the fields it leaves out from the honest one it replaces, and
/// is sent in the honest one's form; one that does not is put, as bytes, into the stage's own field (the keys, a box of shares, the masked vector, a signature, the
/// sealed shares; the model of a task).
enum FederatedFuzzing {
    enum Mode {
        case decode, join, poll
        case submission(Stage)
        case task(Stage)
        case releasedShares
    }

    static let rounds: [Stage] = [.advertise, .share, .masked, .consistency, .unmask]
    static let modes: [Mode] = [.decode, .join, .poll] + rounds.map(Mode.submission) + (rounds + [.finished]).map(Mode.task) + [.releasedShares]

    static func run(_ bytes: [UInt8]) {
        guard let first = bytes.first, let fixture = Fixture.shared else { return }
        let payload = Array(bytes.dropFirst())
        switch modes[Int(first) % modes.count] {
        case .decode: decode(payload, fixture)
        case .join:
            guard let core = fixture.coordinatorCore() else { return }
            _ = try? core.join(SignedMessage.sign(payload, by: fixture.sites[0].identity))
            // As the session is checked before the recipe, a join that decodes is also tried in this session's name.
            if var join = try? MessageCoding.decode(JoinRequest.self, from: payload, what: "join") {
                join.session = core.sessionHex
                _ = try? core.join(SignedMessage.sign(MessageCoding.encode(join, as: MessageCoding.form(of: payload)), by: fixture.sites[0].identity))
            }
        case .poll:
            guard let core = fixture.coordinatorCore(), let site = fixture.site(0) else { return }
            guard let welcome = try? core.join(site.joinRequest(session: core.sessionHex)), (try? site.welcomed(welcome)) != nil else { return }
            _ = try? core.authenticatePoll(SignedMessage.sign(payload, by: fixture.sites[0].identity))
        case .submission(let stage): round(fixture, stage: stage, submission: payload)
        case .task(let stage): round(fixture, stage: stage, task: payload)
        case .releasedShares:
            payload.withUnsafeBytes { raw in
                guard
                    let entries = try? SecAggAggregator.parseReleasedShares(
                        raw,
                        seeds: [1, 2],
                        keys: [3],
                        limit: 3,
                        sender: "1",
                        name: { "\($0)" }
                    )
                else { return }
                // The coordinator copies 40 bytes from each offset: every one must lie inside the plaintext.
                for entry in entries where entry.offset < 0 || entry.offset + 40 > raw.count {
                    fatalError("a share at \(entry.offset) outside a plaintext of \(raw.count) bytes")
                }
            }
        }
    }

    /// Every message type's decoder; a header line and a body; a welcome to a site.
    private static func decode(_ payload: [UInt8], _ fixture: Fixture) {
        // MessageCoding cuts large base64 strings out of a JSON body before JSONDecoder parses the rest: it must read
        // what JSONDecoder alone reads, value for value, refusal for refusal. A binary body JSONDecoder cannot read:
        // what MessageCoding reads from it must come back the same from both forms it writes.
        func same<T: Codable & Equatable>(_ type: T.Type) {
            let coded = try? MessageCoding.decode(T.self, from: payload, what: "message")
            guard MessageCoding.form(of: payload) == .binary else {
                let plain = try? JSONDecoder().decode(T.self, from: Data(payload))
                precondition(plain == coded, "MessageCoding read \(T.self) otherwise than JSONDecoder")
                return
            }
            guard let coded else { return }
            for form in [MessageCoding.Form.json, .binary] {
                let again = try? MessageCoding.decode(T.self, from: MessageCoding.encode(coded, as: form), what: "message")
                precondition(again == coded, "\(T.self) read from a binary body did not survive being written as \(form)")
            }
        }
        same(JoinRequest.self)
        same(PollRequest.self)
        same(Submission.self)
        same(SiteTask.self)
        same(Welcome.self)
        same(Acknowledgement.self)
        if let newline = payload.firstIndex(of: 0x0A) {
            let header = String(decoding: payload[..<newline], as: UTF8.self)
            _ = try? SignedMessage(payload: Array(payload[(newline + 1)...]), headerValue: header)
        }
        if let site = fixture.site(0) { try? site.welcomed(SignedMessage.sign(payload, by: fixture.coordinator.identity)) }
    }

    /// Runs round 1 of a federation of three sites; at `stage`, site 0 submits `submission` instead of its own answer,
    /// or is given `task` instead of the coordinator's. Whatever is refused is refused; the round goes on to its end.
    private static func round(_ fixture: Fixture, stage: Stage, submission: [UInt8]? = nil, task: [UInt8]? = nil) {
        guard let core = fixture.coordinatorCore() else { return }
        let sites = (0..<fixture.sites.count).compactMap { fixture.site($0) }
        guard sites.count == fixture.sites.count else { return }
        for site in sites {
            guard let welcome = try? core.join(site.joinRequest(session: core.sessionHex)), (try? site.welcomed(welcome)) != nil else { return }
        }
        guard (try? core.begin()) != nil, core.startRound(1) == nil else { return }
        while let current = core.stage {
            for (i, site) in sites.enumerated() {
                guard var signed = core.task(for: site.keyID, after: site.lastSeq) else { continue }
                let fuzzed = i == 0 && current == stage
                if fuzzed, let task { signed = forge(task: task, replacing: signed, fixture) }
                guard var answer = try? site.handle(signed) else { continue }
                if fuzzed, let submission { answer = forge(submission: submission, replacing: answer, stage: stage, fixture) }
                if let opened = try? core.open(answer) { _ = try? core.submit(opened) }
            }
            if core.closeStage() != nil { break }
        }
        guard stage == .finished, let task else { return }
        core.finish(summary: "fuzzed")
        if let signed = core.task(for: sites[0].keyID, after: sites[0].lastSeq) {
            _ = try? sites[0].handle(forge(task: task, replacing: signed, fixture))
        }
    }

    /// `payload` as site 0's submission: its session, site, round and stage those of `honest`, signed by site 0.
    private static func forge(submission payload: [UInt8], replacing honest: SignedMessage, stage: Stage, _ fixture: Fixture) -> SignedMessage {
        guard let own = try? MessageCoding.decode(Submission.self, from: honest.payload, what: "submission") else { return honest }
        var forged = own
        if let decoded = try? MessageCoding.decode(Submission.self, from: payload, what: "submission") {
            // What the input leaves out is the site's own answer: a vector alone is tried with the site's keys.
            forged = decoded
            (forged.session, forged.site, forged.round, forged.stage) = (own.session, own.site, own.round, own.stage)
            forged.encryptionKey = decoded.encryptionKey ?? own.encryptionKey
            forged.maskKey = decoded.maskKey ?? own.maskKey
            forged.keySignature = decoded.keySignature ?? own.keySignature
            forged.boxes = decoded.boxes ?? own.boxes
            forged.seedCommitment = decoded.seedCommitment ?? own.seedCommitment
            forged.vector = decoded.vector ?? own.vector
            forged.signature = decoded.signature ?? own.signature
            forged.sealedShares = decoded.sealedShares ?? own.sealedShares
        } else {
            switch stage {
            case .advertise: forged.encryptionKey = Base64Bytes(payload)
            case .share:
                if forged.boxes?.isEmpty == false { forged.boxes![0].box = Base64Bytes(payload) }
            case .masked: forged.vector = Base64Bytes(payload)
            case .consistency: forged.signature = Base64Bytes(payload)
            case .unmask, .finished: forged.sealedShares = Base64Bytes(payload)
            }
        }
        return SignedMessage.sign(MessageCoding.encode(forged, as: MessageCoding.form(of: honest.payload)), by: fixture.sites[0].identity)
    }

    /// `payload` as site 0's task: its session, site and sequence number those of `honest`, signed by the coordinator.
    private static func forge(task payload: [UInt8], replacing honest: SignedMessage, _ fixture: Fixture) -> SignedMessage {
        guard let own = try? MessageCoding.decode(SiteTask.self, from: honest.payload, what: "task") else { return honest }
        var forged = own
        if let decoded = try? MessageCoding.decode(SiteTask.self, from: payload, what: "task") {
            // A site checks the session, the addressee and the sequence number before anything else; the round and the
            // stage are the input's (a coordinator may send any). What the input leaves out is the coordinator's own
            // task: a round number alone is tried with a real roster and real keys.
            forged = decoded
            (forged.session, forged.site, forged.seq) = (own.session, own.site, own.seq)
            forged.previous = decoded.previous ?? own.previous
            forged.roster = decoded.roster ?? own.roster
            forged.parameters = decoded.parameters ?? own.parameters
            forged.model = decoded.model ?? own.model
            forged.standardisation = decoded.standardisation ?? own.standardisation
            forged.keys = decoded.keys ?? own.keys
            forged.survivors = decoded.survivors ?? own.survivors
            forged.boxes = decoded.boxes ?? own.boxes
            forged.masked = decoded.masked ?? own.masked
            forged.signatures = decoded.signatures ?? own.signatures
            forged.summary = decoded.summary ?? own.summary
        } else {
            forged.model = Base64Bytes(payload)
        }
        return SignedMessage.sign(MessageCoding.encode(forged, as: MessageCoding.form(of: honest.payload)), by: fixture.coordinator.identity)
    }

    /// What every input shares: identities, a recipe of a small model, and a site's rows (made once per process).
    final class Fixture: @unchecked Sendable {
        let coordinator: UnlockedIdentity
        let sites: [UnlockedIdentity]
        let recipe: FederatedRecipe
        let data: LocalData
        let configuration: FederationConfiguration

        static let shared: Fixture? = try? Fixture()

        private init() throws {
            coordinator = UnlockedIdentity(try Identity.generate(name: "coordinator"))
            sites = try (0..<3).map { UnlockedIdentity(try Identity.generate(name: "site\($0)")) }
            let json = """
                {"data": "unused.csv", "features": ["a", "b"], "tasks": [{"name": "y", "kind": "binary", "column": "y", "threshold": 0.5}],
                 "trunk": [4], "epochs": 1, "learning_rate": 0.05, "expected_batch_size": 8, "privacy": false, "seed": 1}
                """
            recipe = try FederatedRecipe(try TrainingRecipe(json: Array(json.utf8), path: "/fuzz/recipe.json"))
            let rows = (0..<20).map { i in "\(Double(i) / 10),\(Double(i % 7) - 3),\(i % 2)" }
            let path = NSTemporaryDirectory() + "/coffer-fuzz-fl-\(getpid()).csv"
            try (["a,b,y"] + rows).joined(separator: "\n").appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: path) }
            data = try LocalData(path: path, recipe: recipe)
            var configuration = FederationConfiguration()
            configuration.rounds = 1
            configuration.threshold = .count(2)
            configuration.standardisation = PublicStandardisation(means: [0, 0], standardDeviations: [1, 1])
            self.configuration = configuration
        }

        func coordinatorCore() -> CoordinatorCore? {
            try? CoordinatorCore(configuration: configuration, recipe: recipe, identity: coordinator, sites: sites.map { $0.identity.publicIdentity })
        }

        func site(_ i: Int) -> FederatedSite? {
            try? FederatedSite(identity: sites[i], coordinator: coordinator.identity.publicIdentity, recipe: recipe, data: data, rounds: 1)
        }
    }
}
