import CSodium
import Foundation

/// A Coffer multi-task checkpoint read in place from the bytes of its `model.safetensors`, for inference
/// over memory the caller owns (a locked, guarded buffer): only the header is copied; every forward pass
/// reads the weights where they lie.
///
/// ```swift
/// let view = try CheckpointView(header: bytes)           // bytes: the decrypted model.safetensors
/// let predictions = try view.predict(table, weights: bytes)
/// ```
public struct CheckpointView: Sendable {
    public let architecture: Architecture
    public let preprocessing: Preprocessing
    /// Byte offsets (from the start of the file) of each layer's weight and bias: trunk first, then heads in task order.
    let layers: [(weight: Int, bias: Int, inputs: Int, outputs: Int)]
    let fileLength: Int

    /// Parses the header at the start of `bytes` (the whole file) and checks every tensor the architecture needs.
    public init(header bytes: UnsafeRawBufferPointer) throws(CofferTrainingError) {
        try self.init(header: bytes, fileLength: bytes.count)
    }

    /// The same from the first bytes of a file of `fileLength` bytes: `bytes` holds at least its header.
    init(header bytes: UnsafeRawBufferPointer, fileLength: Int) throws(CofferTrainingError) {
        guard let length = Safetensors.headerLength(bytes) else { throw .invalidCheckpoint("file shorter than the 8-byte header length") }
        guard length <= UInt64(Safetensors.maximumHeaderLength), 8 + Int(length) <= min(bytes.count, fileLength) else {
            throw .invalidCheckpoint("header length \(length) runs past the end of the file")
        }
        let file = try Safetensors(header: Array(bytes[0..<(8 + Int(length))]), fileLength: fileLength)
        guard file.metadata["format"] == Checkpoint.format else {
            throw .invalidCheckpoint("not a Coffer multi-task checkpoint (metadata format is \(file.metadata["format"] ?? "missing"))")
        }
        func decode<T: Decodable>(_ type: T.Type, _ key: String) throws(CofferTrainingError) -> T {
            guard let text = file.metadata[key], let value = try? JSONDecoder().decode(T.self, from: Data(text.utf8)) else {
                throw .invalidCheckpoint("metadata \(key) is missing or malformed")
            }
            return value
        }
        architecture = try decode(Architecture.self, "coffer.architecture")
        try architecture.validate()
        preprocessing = try decode(Preprocessing.self, "coffer.preprocessing")
        // What a prediction indexes by the architecture's sizes: checked here, before any weight is read (infer reads
        // them as they decrypt, before the file's digest is known to match).
        let p = preprocessing
        guard p.features.count == architecture.inputs, p.means.count == architecture.inputs, p.standardDeviations.count == architecture.inputs
        else {
            throw .invalidCheckpoint(
                "coffer.preprocessing has \(p.features.count) features, \(p.means.count) means and \(p.standardDeviations.count) standard deviations for \(architecture.inputs) inputs"
            )
        }
        guard p.tasks.count == architecture.tasks.count else {
            throw .invalidCheckpoint("coffer.preprocessing has \(p.tasks.count) tasks, the architecture \(architecture.tasks.count)")
        }
        for (task, source) in zip(architecture.tasks, p.tasks)
        where task.kind == .classification && (source.labels?.count ?? task.classes) != task.classes {
            throw .invalidCheckpoint("task \(task.name) has \(task.classes) classes and \(source.labels?.count ?? 0) labels")
        }
        /// The offset of tensor `name`, which must be `rows` x `columns` floats (a product that must not overflow: the
        /// widths come from the header).
        func offset(_ name: String, _ rows: Int, by columns: Int = 1) throws(CofferTrainingError) -> Int {
            let (count, overflow) = rows.multipliedReportingOverflow(by: columns)
            guard !overflow else { throw .invalidCheckpoint("tensor \(name) of \(rows) x \(columns) values is larger than any file") }
            guard let tensor = file.tensor(named: name) else { throw .invalidCheckpoint("tensor \(name) is missing") }
            guard tensor.dtype == "F32", tensor.elementCount == count else {
                throw .invalidCheckpoint(
                    "tensor \(name) is \(tensor.dtype) with \(tensor.elementCount) values, the architecture needs F32 x \(count)"
                )
            }
            return file.dataStart + tensor.offsets.lowerBound
        }
        var layers: [(Int, Int, Int, Int)] = []
        var width = architecture.inputs
        for (i, hidden) in architecture.trunk.enumerated() {
            layers.append((try offset("trunk.\(i).weight", hidden, by: width), try offset("trunk.\(i).bias", hidden), width, hidden))
            width = hidden
        }
        for task in architecture.tasks {
            layers.append(
                (
                    try offset("heads.\(task.name).weight", task.outputs, by: width), try offset("heads.\(task.name).bias", task.outputs),
                    width, task.outputs
                )
            )
        }
        self.layers = layers
        self.fileLength = fileLength
    }

    /// A head's predictions from its layer's outputs `z` for `n` rows: probabilities, or the values themselves.
    func taskPredictions(_ z: [Float], task: TaskSpec, rows n: Int) -> [Float] {
        switch task.kind {
        case .classification: (0..<n).flatMap { i in softmax(Array(z[(i * task.classes)..<((i + 1) * task.classes)])) }
        case .binary: z.map(sigmoid)
        case .regression: z
        }
    }

    /// Per-task predictions for the rows of `table` (as ``MultiTaskModel/predict(_:count:)``), reading the weights
    /// from `weights`, the same file bytes the view was made from.
    public func predict(_ table: CSVTable, weights: UnsafeRawBufferPointer) throws(CofferTrainingError) -> [[Float]] {
        guard weights.count == fileLength else { throw .invalidCheckpoint("weights are not the bytes this view was read from") }
        let n = table.rowCount
        var current = try preprocessing.features(of: table)
        let trunkCount = architecture.trunk.count
        func dense(_ layer: (weight: Int, bias: Int, inputs: Int, outputs: Int), _ x: [Float]) throws(CofferTrainingError) -> [Float] {
            var out = [Float](repeating: 0, count: n * layer.outputs)
            guard n > 0 else { return out }
            // Unaligned loads: the buffer is whatever the caller allocated, so read through memcpy-safe accessors.
            for o in 0..<layer.outputs {
                let b = weights.loadUnaligned(fromByteOffset: layer.bias + 4 * o, as: Float.self)
                for i in 0..<n { out[i * layer.outputs + o] = b }
            }
            let w = weights.baseAddress!.advanced(by: layer.weight)
            // Weights that are not 4-byte aligned (a caller's buffer, or a safetensors file whose writer did not pad its
            // header) are multiplied from an aligned copy in sodium memory (locked, wiped when freed), so that every
            // checkpoint gets the one product `coffer predict` computes, to the last bit.
            let count = layer.inputs * layer.outputs
            let aligned = Int(bitPattern: w) % MemoryLayout<Float>.alignment == 0
            let copy = aligned ? nil : sodium_malloc(4 * count)
            defer { sodium_free(copy) }
            guard aligned || copy != nil else {
                throw .invalidCheckpoint("its weights are not 4-byte aligned, and there is no memory to copy a layer of \(count) values")
            }
            copy?.copyMemory(from: w, byteCount: 4 * count)
            x.withUnsafeBufferPointer { x in
                out.withUnsafeMutableBufferPointer { out in
                    MatrixKernels.multiplyTransposed(
                        x.baseAddress!,
                        (copy.map(UnsafeRawPointer.init) ?? w).assumingMemoryBound(to: Float.self),
                        into: out.baseAddress!,
                        m: n,
                        n: layer.outputs,
                        k: layer.inputs
                    )
                }
            }
            return out
        }
        for l in 0..<trunkCount { current = try dense(layers[l], current).map { architecture.activation.apply($0) } }
        var predictions: [[Float]] = []
        for (t, task) in architecture.tasks.enumerated() {
            predictions.append(taskPredictions(try dense(layers[trunkCount + t], current), task: task, rows: n))
        }
        return predictions
    }
}
