import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// Inference read in place from a checkpoint's bytes (what `coffer infer` runs over locked memory) against the
/// model loaded the ordinary way, through each of its three products: one matrix-vector product per row below
/// ``CheckpointView/matrixProductRows`` rows, sgemm from there, element by element when the buffer is unaligned.
@Suite(.ownThread)
struct CheckpointViewTests {
    @Test func predictionsMatchTheLoadedModelForEveryRowCountAndAlignment() async throws {
        let directory = try await TrainedCheckpoint.write(
            into: FileManager.default.temporaryDirectory.appendingPathComponent("coffer-view-\(UUID().uuidString)").path
        )
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (model, preprocessing) = try Checkpoint.load(directory: directory)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory).appendingPathComponent("model.safetensors")))
        let lines = try SyntheticData(rows: 9, features: 3, classes: 3, seed: 9).csv().split(separator: "\n")
        for count in [1, CheckpointView.matrixProductRows - 1, CheckpointView.matrixProductRows, 9] {
            let table = try CSVTable(text: lines.prefix(1 + count).joined(separator: "\n"), source: "rows.csv")
            let expected = model.predict(try preprocessing.features(of: table), count: count)
            for misalignment in [0, 1] {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count + misalignment, alignment: 16)
                defer { buffer.deallocate() }
                let file = UnsafeMutableRawBufferPointer(rebasing: buffer[misalignment...])
                file.copyMemory(from: UnsafeRawBufferPointer(start: bytes, count: bytes.count))
                let view = try CheckpointView(header: UnsafeRawBufferPointer(file))
                let predicted = try view.predict(table, weights: UnsafeRawBufferPointer(file))
                #expect(predicted.count == expected.count && predicted.first?.count == expected.first?.count, "\(count) rows")
                for (p, e) in zip(predicted.joined(), expected.joined()) {
                    #expect(abs(p - e) <= 1e-5 * max(1, abs(e)), "\(count) rows, misaligned by \(misalignment): \(p) vs \(e)")
                }
            }
        }
    }
}
