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
        let token = try await Self.token(tokenText, registry: registry)
        try await self.init(registry: registry, token: token, countingUse: countingUse, auditingOpen: auditingOpen ?? countingUse, now: now)
    }

    /// The token that `text` spells; a malformed one is refused and audited like any other.
    private static func token(_ text: borrowing SecureBytes, registry: Registry) async throws(CofferRegistryError) -> SessionToken {
        do { return try SessionToken(text: text) } catch {
            try await registry.audit(principal: "-", action: "infer", target: "-", outcome: .refused, reason: "malformed session token")
            throw error
        }
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
            try await Self.open(file, of: claimed, into: sink, registry: registry)
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
        guard let checkpoint, let model = files.first(where: { $0.path == Checkpoint.modelFile }) else { throw Self.notACheckpoint(info) }
        do {
            let predictions = try plaintext.withUnsafeBytes { bytes throws(CofferTrainingError) in
                try checkpoint.predict(table, weights: UnsafeRawBufferPointer(rebasing: bytes[model.range]))
            }
            return (checkpoint, predictions)
        } catch {
            throw .invalidInput(error.description)
        }
    }

    /// One `coffer infer`: the session's model opened, the rows of `table` predicted, and one use taken per row once the
    /// predictions exist (a prediction that fails is audited as such and takes none). Nothing is returned unless every
    /// byte of the model matched its signed digest and the session had the uses.
    ///
    /// Fewer than four rows are predicted as the model decrypts (``StreamingPrediction``), so the model is never whole in
    /// memory; more open it whole in locked memory first, for sgemm.
    public static func predictOnce(
        registry: Registry,
        tokenText: borrowing SecureBytes,
        table: CSVTable,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> (CheckpointView, [[Float]]) {
        let info: SessionInfo
        let outcome: Result<(CheckpointView, [[Float]]), CofferRegistryError>
        if StreamingPrediction.streams(rows: table.rowCount) {
            let token = try await Self.token(tokenText, registry: registry)
            let claimed = try await registry.claimSession(token, now: now, countingUse: false)
            info = claimed.info
            outcome = try await streamedPrediction(claimed, table: table, registry: registry)
        } else {
            let opened = try await InferenceSession(registry: registry, tokenText: tokenText, countingUse: false, auditingOpen: false, now: now)
            info = opened.info
            outcome = Result { () throws(CofferRegistryError) in try opened.predict(table) }
        }
        switch outcome {
        case .failure(let error):
            try? await registry.recordFailedPrediction(session: info.id, principal: info.principal, reason: error.description)
            throw error
        case .success(let prediction):
            try await registry.useSession(id: info.id, principal: info.principal, uses: table.rowCount)
            return prediction
        }
    }

    /// Decrypts the session's model into a ``StreamingPrediction``. A failure to open it is thrown (and audited); the
    /// prediction's own failure is returned.
    private static func streamedPrediction(
        _ claimed: ClaimedSession,
        table: CSVTable,
        registry: Registry
    ) async throws(CofferRegistryError) -> Result<(CheckpointView, [[Float]]), CofferRegistryError> {
        guard let file = claimed.files.first(where: { $0.path == Checkpoint.modelFile }) else { return .failure(notACheckpoint(claimed.info)) }
        let stream = StreamingPrediction(table: table, fileLength: file.size)
        try await open(file, of: claimed, into: PredictionSink(stream), registry: registry)
        guard stream.view != nil else { return .failure(notACheckpoint(claimed.info)) }
        do { return .success(try stream.finish()) } catch { return .failure(.invalidInput(error.description)) }
    }

    /// Decrypts one of the session's files into `sink`; a failure is audited against the session.
    private static func open(
        _ file: ModelStatement.File,
        of claimed: ClaimedSession,
        into sink: any ByteSink,
        registry: Registry
    ) async throws(CofferRegistryError) {
        do {
            try await registry.open(file, dataKey: claimed.dataKey, into: sink, checkingBlobDigest: false)
        } catch {
            let info = claimed.info
            try? await registry.audit(principal: info.principal, action: "infer", target: info.id, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private static func notACheckpoint(_ info: SessionInfo) -> CofferRegistryError {
        .sessionRefused(
            "\(info.model):\(info.version) is not a Coffer checkpoint (a model.safetensors from coffer train or coffer fl, with its coffer.* metadata), the only kind infer runs: coffer infer --raw exports its plaintext, audited, to run it elsewhere"
        )
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

/// Decrypted bytes handed, in order, to a prediction (on the decryption pipeline's writer lane).
private final class PredictionSink: ByteSink {
    let stream: StreamingPrediction

    init(_ stream: StreamingPrediction) { self.stream = stream }

    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) { stream.consume(bytes) }
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
