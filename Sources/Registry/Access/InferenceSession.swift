public import CofferCrypto
public import CofferTraining
public import Foundation

/// A model opened for inference through a session: every file verified and decrypted into sodium memory
/// (guarded pages, `mlock`ed as far as RLIMIT_MEMLOCK allows, wiped when the session value goes away).
/// Plaintext never reaches a file.
///
/// ```swift
/// let session = try InferenceSession(registry: registry, token: token)
/// let predictions = try session.predict(table)        // multi-task checkpoints
/// try session.withFile("weights.pt") { bytes in ... }   // any other artifact
/// ```
public struct InferenceSession: ~Copyable {
    public let info: SessionInfo
    /// Each file's path and its byte range in `plaintext`.
    public let files: [(path: String, range: Range<Int>)]
    let plaintext: SecureBytes
    let checkpoint: CheckpointView?

    /// Parses the token's text first: a malformed token is refused and audited like any other.
    /// `countingUse: false` opens the model without taking a use or auditing one: the caller predicts first and takes
    /// one use per row answered with ``Registry/useSession(id:principal:uses:now:)``, which audits it. An export
    /// (`auditingOpen: false`) takes its use here and is audited by ``export(_:registry:_:)`` as what it is.
    public init(
        registry: Registry,
        tokenText: borrowing SecureBytes,
        countingUse: Bool = true,
        auditingOpen: Bool? = nil,
        now: Date = Date()
    ) async throws(CofferRegistryError) {
        let token: SessionToken
        do { token = try SessionToken(text: tokenText) } catch {
            try await registry.audit(principal: "-", action: "infer", target: "-", outcome: .refused, reason: "malformed session token")
            throw error
        }
        try await self.init(registry: registry, token: token, countingUse: countingUse, auditingOpen: auditingOpen ?? countingUse, now: now)
    }

    /// `countingUse: false` opens the model without taking a use (the server counts each prediction instead);
    /// `auditingOpen` records the opening itself as an `infer` entry (a server's load of the model).
    public init(
        registry: Registry,
        token: borrowing SessionToken,
        countingUse: Bool = true,
        auditingOpen: Bool = true,
        now: Date = Date()
    ) async throws(CofferRegistryError) {
        let claimed = try await registry.claimSession(token, now: now, countingUse: countingUse)
        let info = claimed.info
        var files: [(String, Range<Int>)] = []
        var offset = 0
        // Each file starts on a 64-byte boundary, so tensors keep the alignment safetensors gives them.
        for file in claimed.files {
            files.append((file.path, offset..<(offset + file.size)))
            offset += (file.size + 63) / 64 * 64
        }
        let plaintext = SecureBytes(count: max(offset, 1))
        for (file, entry) in zip(claimed.files, files) {
            let sink = plaintext.withUnsafeMutableBytes { MemoryRegionSink(UnsafeMutableRawBufferPointer(rebasing: $0[entry.1])) }
            do {
                try await registry.open(file, dataKey: claimed.dataKey, into: sink, checkingBlobDigest: false)
            } catch {
                try? await registry.audit(principal: info.principal, action: "infer", target: info.id, outcome: .failed, reason: error.description)
                throw error
            }
        }
        var checkpoint: CheckpointView? = nil
        if let model = files.first(where: { $0.0 == Checkpoint.modelFile }) {
            checkpoint = try? plaintext.withUnsafeBytes { bytes throws(CofferTrainingError) in
                try CheckpointView(header: UnsafeRawBufferPointer(rebasing: bytes[model.1]))
            }
        }
        if auditingOpen {
            try await registry.audit(
                principal: info.principal,
                action: "infer",
                target: info.id,
                outcome: .ok,
                reason: "\(info.model):\(info.version)"
            )
        }
        self.info = info
        self.files = files
        self.plaintext = plaintext
        self.checkpoint = checkpoint
    }

    /// Whether the model is a Coffer multi-task checkpoint that ``predict(_:)`` can run.
    public var isMultiTaskModel: Bool { checkpoint != nil }

    /// Per-task predictions for the rows of `table`, with the weights read in place from sodium memory.
    public func predict(_ table: CSVTable) throws(CofferRegistryError) -> (CheckpointView, [[Float]]) {
        guard let checkpoint, let model = files.first(where: { $0.path == Checkpoint.modelFile }) else {
            throw .sessionRefused(
                "\(info.model):\(info.version) is not a Coffer checkpoint (a model.safetensors from coffer train or coffer fl, with its coffer.* metadata), the only kind infer runs: coffer infer --raw exports its plaintext, audited, to run it elsewhere"
            )
        }
        do {
            let predictions = try plaintext.withUnsafeBytes { bytes throws(CofferTrainingError) in
                try checkpoint.predict(table, weights: UnsafeRawBufferPointer(rebasing: bytes[model.range]))
            }
            return (checkpoint, predictions)
        } catch {
            throw .invalidInput(error.description)
        }
    }

    /// Refuses, before any use is taken or anything decrypted, a token whose session's principal may not export
    /// plaintext (reader and decrypt on the model): `coffer infer --raw` asks this first.
    public static func authorizeExport(registry: Registry, tokenText: borrowing SecureBytes) async throws(CofferRegistryError) {
        let token = try SessionToken(text: tokenText)
        let info = try await registry.claimSession(token, now: Date(), countingUse: false).info
        let principal = Principal(name: info.principal, keyID: "")
        let target = "\(info.model):\(info.version)"
        try await registry.require(.reader, on: info.model, by: principal, action: "export", target: target)
        try await registry.require(.decrypt, on: info.model, by: principal, action: "export", target: target)
    }

    /// Releases one decrypted file's plaintext to `body` (`coffer infer --raw`): that is a pull, not an inference, so
    /// the session's principal needs the reader and decrypt roles on the model, not only inference; the release is
    /// audited as its own action, `export`. Returns nil when the version has no such file.
    public func export<R>(
        _ path: String,
        registry: Registry,
        _ body: (UnsafeRawBufferPointer) throws(CofferCryptoError) -> R
    ) async throws(CofferRegistryError) -> R? {
        let principal = Principal(name: info.principal, keyID: "")
        let target = "\(info.model):\(info.version)"
        try await registry.require(.reader, on: info.model, by: principal, action: "export", target: target)
        try await registry.require(.decrypt, on: info.model, by: principal, action: "export", target: target)
        guard files.contains(where: { $0.path == path }) else { return nil }
        let result: R?
        do { result = try withFile(path, body) } catch {
            try? await registry.audit(principal: info.principal, action: "export", target: target, outcome: .failed, reason: error.description)
            throw .crypto(error)
        }
        try await registry.audit(
            principal: info.principal,
            action: "export",
            target: target,
            outcome: .ok,
            reason: "\(path) (session \(info.id), plaintext to stdout)"
        )
        return result
    }

    /// Read access to one decrypted file for the duration of `body`.
    public func withFile<R, E: Error>(_ path: String, _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R? {
        guard let file = files.first(where: { $0.path == path }) else { return nil }
        return try plaintext.withUnsafeBytes { bytes throws(E) in try body(UnsafeRawBufferPointer(rebasing: bytes[file.range])) }
    }
}

/// Per-task predictions as JSON rows: `{task: {class, probabilities}}` for a classification (the class label when
/// the checkpoint names them), `{task: value}` otherwise, where a target trained transformed is named with its
/// transform (`"visits (log1p)"`: the value is log1p of the visits, not the visits). `coffer predict`, `coffer infer`
/// and the server's predict.
public func predictionRows(_ predictions: [[Float]], tasks: [TaskSpec], preprocessing: Preprocessing, rows count: Int) -> [JSONValue] {
    (0..<count).map { i in
        var row: [String: JSONValue] = [:]
        for (t, task) in tasks.enumerated() {
            switch task.kind {
            case .classification:
                let probabilities = Array(predictions[t][(i * task.classes)..<((i + 1) * task.classes)])
                let best = probabilities.indices.max { probabilities[$0] < probabilities[$1] }!
                let labels = preprocessing.tasks[t].labels
                row[task.name] = .object([
                    "class": labels.map { .string($0[best]) } ?? .number(Double(best)),
                    "probabilities": .array(probabilities.map { .number(Double($0)) }),
                ])
            case .binary, .regression:
                let transform = preprocessing.tasks[t].transform
                row[transform.map { "\(task.name) (\($0))" } ?? task.name] = .number(Double(predictions[t][i]))
            }
        }
        return .object(row)
    }
}
