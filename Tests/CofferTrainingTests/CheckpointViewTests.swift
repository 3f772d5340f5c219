import CofferTestSupport
import Foundation
import Testing

@testable import CofferTraining

/// Inference read in place from a checkpoint's bytes (what `coffer infer` and a server's session run over locked
/// memory) against the model loaded the ordinary way (`coffer predict`): the same floats, with fewer rows than
/// ``MatrixKernels/matrixVectorRows`` (the SIMD loop) and with more (sgemm), in a buffer aligned or not (an aligned copy).
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
        for count in [1, MatrixKernels.matrixVectorRows - 1, MatrixKernels.matrixVectorRows, 9] {
            let table = try CSVTable(text: lines.prefix(1 + count).joined(separator: "\n"), source: "rows.csv")
            let expected = model.predict(try preprocessing.features(of: table), count: count)
            for misalignment in [0, 1] {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count + misalignment, alignment: 16)
                defer { buffer.deallocate() }
                let file = UnsafeMutableRawBufferPointer(rebasing: buffer[misalignment...])
                bytes.withUnsafeBytes { file.copyMemory(from: $0) }
                let view = try CheckpointView(header: UnsafeRawBufferPointer(file))
                let predicted = try view.predict(table, weights: UnsafeRawBufferPointer(file))
                #expect(predicted == expected, "\(count) rows, misaligned by \(misalignment)")
            }
        }
    }
}
