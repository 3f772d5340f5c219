import CofferCrypto
import CofferRegistry
import CofferRunner
import CofferTraining
import Foundation

/// The parsers Coffer runs on bytes it did not write itself, one fuzz target each. A target must never crash,
/// hang or trip a sanitizer, whatever the input: it either parses or throws.
enum FuzzTarget: String, CaseIterable {
    /// A sealed file's header with the wrapped-key stanzas it carries.
    case sealedHeader = "sealed-header"
    /// A DSSE envelope, the in-toto statement in its payload, and Coffer's model predicate in that; and JSONValue's
    /// parser against JSONDecoder on the same bytes.
    case dsse
    /// A safetensors header, as the checkpoint reader, the in-memory inference view and infer's streamed prediction read it.
    case safetensors
    /// A training recipe (`coffer train --config`).
    case trainingConfig = "training-config"
    /// A `coffer list --where` expression.
    case whereExpression = "where"
    /// An HTTP `Range` header, against a blob size taken from the input's first 8 bytes.
    case httpRange = "http-range"
    /// Query values the server parses itself: references, dataset ids, times, whole numbers.
    case query
    /// JSON bodies parsed by Coffer's own code: a client's prepared push (to a server), a server's ledger page,
    /// version package and state head (to a client).
    case jsonBody = "json-body"
    /// A ledger record's envelope and payload, applied to a fresh ledger state.
    case ledgerRecord = "ledger-record"
    /// A frame body on the agent's socket: a request (what a malicious client of the same uid sends the agent) and
    /// an answer (what a client reads from whatever listens at COFFER_AGENT_SOCK).
    case agentMessage = "agent-message"
    /// A frame body on the command runner's socket: a `run` request (what a client of the same uid sends the runner's
    /// fork) and an answer (what `coffer-run` reads from whatever listens at COFFER_RUNNER_SOCK).
    case runnerMessage = "runner-message"
    /// A change request's text (`coffer approve cfr1....`), pasted from a page or from anywhere else.
    case changeRequest = "change-request"
    /// A federated-training message: what a coordinator takes from a site (join, poll, each stage's submission, the
    /// unmasking shares' plaintext) and what a site takes from its coordinator (each stage's task), signed so that
    /// the content is reached (see ``FederatedFuzzing``).
    case flMessage = "fl-message"

    func run(_ bytes: [UInt8]) {
        switch self {
        case .sealedHeader:
            // A header that parses must be the one canonical encoding of what was parsed: no second spelling.
            if let (header, length) = try? SealedFileHeader.read(from: MemorySource(bytes)), header.encoded != Array(bytes[0..<length]) {
                fatalError("sealed header of \(length) bytes parses but re-encodes differently")
            }
        case .dsse:
            if let envelope = try? DSSEEnvelope(jsonBytes: bytes), let payload = Data(base64Encoded: envelope.payload) {
                if let statement = try? InTotoStatement(jsonBytes: Array(payload)) { _ = try? ModelStatement(statement) }
            }
            if let statement = try? InTotoStatement(jsonBytes: bytes) { _ = try? ModelStatement(statement) }
            // Statements are read by JSONValue's own parser: it must never accept what JSONDecoder refuses, nor read
            // it otherwise.
            if let parsed = try? JSONValue(parsing: bytes), (try? JSONDecoder().decode(JSONValue.self, from: Data(bytes))) != parsed {
                fatalError("JSONValue(parsing:) reads \(bytes.count) bytes that JSONDecoder refuses or reads otherwise")
            }
        case .safetensors:
            _ = try? Safetensors(header: bytes, fileLength: bytes.count)
            bytes.withUnsafeBytes { streamPrediction(over: $0) }
        case .trainingConfig:
            _ = try? TrainingRecipe(json: bytes, path: "/fuzz/recipe.json")
        case .whereExpression:
            _ = try? WhereExpression(parsing: String(decoding: bytes, as: UTF8.self))
        case .httpRange:
            guard bytes.count >= 8 else { return }
            let size = Int(truncatingIfNeeded: bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } >> 1)
            if let range = ByteRange.parse(String(decoding: bytes[8...], as: UTF8.self), size: size) {
                // What is sent lies within the blob and is never empty.
                if range.lowerBound < 0 || range.upperBound > size || range.isEmpty { fatalError("range \(range) outside 0..<\(size)") }
            }
        case .query:
            let text = String(decoding: bytes, as: UTF8.self)
            _ = try? ModelReference(parsing: text)
            _ = try? ModelReference.validate(datasetID: text)
            _ = try? Registry.parseTime(text, field: "since")
            _ = Int(text)
        case .jsonBody:
            let decoder = JSONDecoder()
            if let prepared = try? decoder.decode(PreparedPush.self, from: Data(bytes)) {
                if let dsse = Data(base64Encoded: prepared.dsse), let envelope = try? DSSEEnvelope(jsonBytes: Array(dsse)),
                    let payload = try? envelope.payloadBytes(), let statement = try? InTotoStatement(jsonBytes: payload)
                {
                    _ = try? ModelStatement(statement)
                }
            }
            _ = try? decoder.decode(LedgerPage.self, from: Data(bytes))
            _ = try? decoder.decode(VersionPackage.self, from: Data(bytes))
            _ = try? decoder.decode(StateHead.self, from: Data(bytes))
        case .ledgerRecord:
            guard let record = try? LedgerRecord(envelope: bytes) else { return }
            var state = LedgerState(registry: record.registry)
            try? state.apply(record)
        case .changeRequest:
            // What parses must say what it asks for, and be one of the kinds a page may ask for.
            if let request = try? ChangeRequest(text: String(decoding: bytes, as: UTF8.self)), request.summary.isEmpty {
                fatalError("a change request parses but asks for nothing")
            }
        case .runnerMessage:
            // What parses is the one encoding of what was parsed.
            if let request = RunnerRequest(decoding: bytes), request.encoded() != bytes {
                fatalError("a run request parses but re-encodes differently")
            }
            if let reply = RunnerReply(decoding: bytes), reply.encoded() != bytes { fatalError("a runner answer parses but re-encodes differently") }
        case .agentMessage:
            bytes.withUnsafeBytes { body in
                // Secret fields are named by range, to be copied from the frame: a range must lie inside it.
                switch try? AgentRequest(parsing: body) {
                case .add(_, let secrets, _) where secrets.count != 96 || secrets.upperBound > body.count:
                    fatalError("add secrets \(secrets) outside a body of \(body.count) bytes")
                case .lock(let range), .unlock(let range):
                    if range.isEmpty || range.upperBound > body.count { fatalError("passphrase \(range) outside a body of \(body.count) bytes") }
                default: break
                }
                if case .dataKey(let key) = try? AgentResponse(parsing: body), key.count != 32 || key.upperBound > body.count {
                    fatalError("data key \(key) outside a body of \(body.count) bytes")
                }
            }
        case .flMessage:
            FederatedFuzzing.run(bytes)
        }
    }

    /// The target named by `COFFER_FUZZ_TARGET`.
    static var selected: FuzzTarget {
        let name = ProcessInfo.processInfo.environment["COFFER_FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            let names = allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(Data("coffer-fuzz: set COFFER_FUZZ_TARGET to one of \(names)\n".utf8))
            exit(2)
        }
        return target
    }
}

#if COFFER_LIBFUZZER
/// libFuzzer's entry point (built with `-sanitize=fuzzer`: see tools/fuzz/run).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

nonisolated(unsafe) private var target = FuzzTarget.sealedHeader

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point under the name MODULE_main: hand the process to libFuzzer's driver.
@_cdecl("CofferFuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    target = FuzzTarget.selected
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
}
#else
/// Without libFuzzer: replays inputs (a corpus, or the crashes kept as regression tests) through one target.
///
/// `coffer-fuzz TARGET FILE|DIR...` runs every file and prints how many; a crash is a failure of the caller's test.
@main
struct Replay {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name), arguments.count > 1 else {
            print("usage: coffer-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE|DIR...")
            exit(2)
        }
        var count = 0
        for path in arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                print("coffer-fuzz: no such file or directory: \(path)")
                exit(2)
            }
            let files =
                isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { "\(path)/\($0)" } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                target.run(Array(data))
                count += 1
            }
        }
        print("coffer-fuzz \(name): \(count) inputs replayed, none crashed")
    }
}
#endif

/// The checkpoint view, and `coffer infer`'s streamed prediction over the same bytes (which it reads before their digest
/// is known to match): one row of the view's own features, or of `x0` when the bytes are no checkpoint, fed in spans of
/// a length the input's last byte picks.
private func streamPrediction(over file: UnsafeRawBufferPointer) {
    guard let last = file.last else { return }
    let columns = (try? CheckpointView(header: file))?.preprocessing.features ?? ["x0"]
    let text = columns.joined(separator: ",") + "\n" + columns.map { _ in "0.5" }.joined(separator: ",")
    guard let table = try? CSVTable(text: text, source: "fuzz.csv"), StreamingPrediction.streams(rows: table.rowCount) else { return }
    let stream = StreamingPrediction(table: table, fileLength: file.count)
    let span = 1 + Int(last) * 37
    var offset = 0
    while offset < file.count {
        let end = min(file.count, offset + span)
        stream.consume(UnsafeRawBufferPointer(rebasing: file[offset..<end]))
        offset = end
    }
    _ = try? stream.finish()
}
