import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// A prediction made as a checkpoint's bytes go past (what `coffer infer` of a few rows runs while the model decrypts)
/// against the model loaded the ordinary way: the same floats however the bytes are cut, aligned or not, with layers that
/// arrive before their input is known.
@Suite(.ownThread)
struct StreamingPredictionTests {
    /// Eleven trunk layers: `trunk.10.*` sorts between `trunk.1.*` and `trunk.2.*`, and `heads.*` before them all, so
    /// some layers arrive before their input is known and are held until it is.
    static let trained = Result { try TrainedCheckpoint.train(trunk: [7, 5, 6, 4, 9, 3, 5, 6, 4, 5, 7]) }

    /// Feeds `bytes` from a buffer `misalignment` bytes off a 16-byte boundary, in spans of the given sizes (repeated).
    private func stream(_ bytes: [UInt8], rows table: CSVTable, spans: [Int], misalignment: Int = 0) -> StreamingPrediction {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count + misalignment, alignment: 16)
        defer { buffer.deallocate() }
        let file = UnsafeMutableRawBufferPointer(rebasing: buffer[misalignment...])
        bytes.withUnsafeBytes { file.copyMemory(from: $0) }
        let stream = StreamingPrediction(table: table, fileLength: bytes.count)
        var offset = 0
        var turn = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + spans[turn % spans.count])
            stream.consume(UnsafeRawBufferPointer(rebasing: file[offset..<end]))
            (offset, turn) = (end, turn + 1)
        }
        return stream
    }

    private func table(rows count: Int, columns: String = "") throws -> CSVTable {
        let lines = try SyntheticData(rows: 9, features: 3, classes: 3, seed: 9).csv().split(separator: "\n")
        let header = columns.isEmpty ? String(lines[0]) : columns
        return try CSVTable(text: ([header] + lines[1...count].map(String.init)).joined(separator: "\n"), source: "rows.csv")
    }

    @Test func streamedPredictionsAreTheLoadedModelsHoweverTheBytesAreCut() throws {
        let trained = try Self.trained.get()
        let bytes = try Checkpoint.encode(trained)
        let trunk = trained.model.architecture.trunk
        let held = 4 * trunk[10] * (trunk[9] + trained.model.architecture.tasks.map(\.outputs).reduce(0, +))
        var generator = SeededGenerator(seed: 11)
        let uneven = (0..<40).map { _ in Int.random(in: 1...700, using: &generator) }
        for count in 1..<MatrixKernels.matrixVectorRows {
            #expect(StreamingPrediction.streams(rows: count))
            let rows = try table(rows: count)
            let expected = trained.model.predict(try trained.preprocessing.features(of: rows), count: count)
            for spans in [[bytes.count], [1], [3], [8, 4096], uneven] {
                for misalignment in [0, 1] {
                    let streamed = stream(bytes, rows: rows, spans: spans, misalignment: misalignment)
                    let (view, predicted) = try streamed.finish()
                    #expect(predicted == expected, "\(count) rows, spans \(spans.prefix(3)), misaligned by \(misalignment)")
                    #expect(view.architecture == trained.model.architecture)
                    #expect(streamed.heldBytes == held, "only the heads and trunk.10 wait for their input, however the bytes are cut")
                }
            }
        }
        #expect(!StreamingPrediction.streams(rows: 0) && !StreamingPrediction.streams(rows: MatrixKernels.matrixVectorRows))
    }

    @Test func whatStopsAPredictionIsReportedAtTheEnd() throws {
        let bytes = try Checkpoint.encode(try Self.trained.get())
        let rows = try table(rows: 1)

        // The stream is told the whole length, then given all but the last five bytes.
        let short = StreamingPrediction(table: rows, fileLength: bytes.count)
        bytes.dropLast(5).withUnsafeBytes { short.consume($0) }
        #expect(
            throws: CofferTrainingError.invalidCheckpoint("the file ended after \(bytes.count - 5) of its \(bytes.count) bytes, before its tensors")
        ) {
            try short.finish()
        }

        let missing = stream(bytes, rows: try table(rows: 1, columns: "x0,x9,x2,y0,y1,y2"), spans: [100])
        #expect(missing.view != nil, "a checkpoint the input does not fit is still a checkpoint")
        #expect(throws: CofferTrainingError.self) { try missing.finish() }

        let other = try Safetensors.encode(tensors: [("w", [2], [1, 2])], metadata: ["format": "something-else"])
        let notOne = stream(other, rows: rows, spans: [5])
        #expect(notOne.view == nil)
        #expect(throws: CofferTrainingError.invalidCheckpoint("not a Coffer multi-task checkpoint (metadata format is something-else)")) {
            try notOne.finish()
        }

        // A preprocessing that does not fit the architecture is refused before any weight is multiplied: a prediction
        // would index past the features (and infer reads the weights before the file's digest is checked).
        var misfit = try Self.trained.get()
        misfit.preprocessing.features.removeLast()
        let narrow = stream(try Checkpoint.encode(misfit), rows: rows, spans: [64])
        #expect(narrow.view == nil)
        #expect(throws: CofferTrainingError.invalidCheckpoint("coffer.preprocessing has 2 features, 3 means and 3 standard deviations for 3 inputs"))
        {
            try narrow.finish()
        }
        misfit = try Self.trained.get()
        let classification = try #require(misfit.model.architecture.tasks.firstIndex { $0.kind == .classification })
        misfit.preprocessing.tasks[classification].labels = ["only one"]
        #expect(throws: CofferTrainingError.self) { try stream(try Checkpoint.encode(misfit), rows: rows, spans: [64]).finish() }

        // Widths whose product overflows are refused, not trapped on.
        let headerEnd = 8 + Int(try #require(bytes.withUnsafeBytes { Safetensors.headerLength($0) }))
        let header = try #require(String(bytes: bytes[8..<headerEnd], encoding: .utf8))
        let wide = header.replacingOccurrences(of: "\\\"trunk\\\":[7,", with: "\\\"trunk\\\":[4611686018427387904,")
        #expect(wide != header)
        var widened = Array(wide.utf8)
        while widened.count % 8 != 0 { widened.append(UInt8(ascii: " ")) }
        let length = (0..<8).map { UInt8(truncatingIfNeeded: widened.count >> (8 * $0)) }
        let overflowing = stream(length + widened + bytes[headerEnd...], rows: rows, spans: [512])
        #expect(overflowing.view == nil)
        #expect(throws: CofferTrainingError.self) { try overflowing.finish() }

        let huge = stream([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0] + bytes[8...], rows: rows, spans: [3])
        #expect(huge.view == nil)
        #expect(throws: CofferTrainingError.invalidCheckpoint("header length 4294967295 runs past the end of the file")) { try huge.finish() }
    }
}
