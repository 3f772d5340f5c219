import CSodium

/// A prediction of a few rows computed while a checkpoint's bytes go past once, in file order, as decryption produces
/// them: `coffer infer` needs each weight once, so the model need not be whole in memory at any moment.
///
/// A whole 100 MB model in fresh locked memory costs its page faults and its wipe: 34 ms of an `infer`'s 174 ms of CPU
/// in `perf record`, and the wipe and unmap ran after the prediction, on the critical path. Here the plaintext stays in
/// the decryption pipeline's three 1 MiB batches, which are reused. Each row of a layer's weights (one output's
/// weights, contiguous) is multiplied with the layer's input by the same dot kernel ``CheckpointView`` uses, over the
/// whole row, so the floats are the same to the last bit; a row that straddles two batches, or lies unaligned, is
/// first gathered into a locked row buffer. A layer whose input is not known yet when its bytes arrive (`heads.*` sort
/// before `trunk.*` in Coffer's files) is kept in locked memory until it is. A checkpoint whose tensors come in any
/// order still works, holding more.
///
/// The caller must not release the predictions before the whole file has been authenticated (its signed digest):
/// they are computed from bytes whose digest is not known to match until the end.
///
/// ```swift
/// let stream = StreamingPrediction(table: table, fileLength: size)
/// for batch in decrypted { stream.consume(batch) }
/// let (view, predictions) = try stream.finish()
/// ```
public final class StreamingPrediction {
    /// Below this many rows a prediction streams: the dot loop that reads each weight once
    /// (``MatrixKernels/matrixVectorRows``). More rows are multiplied by sgemm, which needs whole matrices.
    public static func streams(rows: Int) -> Bool { rows > 0 && rows < MatrixKernels.matrixVectorRows }

    private let table: CSVTable
    private let fileLength: Int
    private let rows: Int
    /// Bytes consumed so far: the file offset of the next byte.
    private var position = 0
    /// The header's bytes until the view is parsed from them.
    private var header: LockedBytes?
    public private(set) var view: CheckpointView?
    /// What stopped the prediction (a header that is not a checkpoint's, with ``view`` nil; or the input's columns); the
    /// rest of the file is then only counted.
    private var failure: CofferTrainingError?
    private var layers: [LayerState] = []
    /// Every layer's weight and bias ranges in the file, in file order.
    private var pieces: [(range: Range<Int>, layer: Int, isBias: Bool)] = []
    /// The weights of every layer that comes before its input is known, and every layer's bias: one locked allocation
    /// each, however many layers the header names.
    private var held: LockedBytes?
    private var biases: LockedBytes?
    /// Weight bytes kept in locked memory until their layer's input is known (known once the header is read).
    private(set) var heldBytes = 0
    /// Each completed layer's output for the rows (after the activation for the trunk's).
    private var outputs: [[Float]?] = []
    /// A weight row being gathered across batches, or copied for alignment; `partial` bytes of it so far.
    private var row: LockedBytes?
    private var partial = 0

    private struct LayerState {
        let weight: Range<Int>
        let bias: Range<Int>
        let inputs: Int
        let outputs: Int
        /// Where in `held` the weight tensor goes, when its bytes come before its input is known.
        var heldAt: Int? = nil
        /// Where in `biases` the bias goes.
        var biasAt = 0
        var weightBytes = 0
        var biasCount = 0
        var rowsDone = 0
        /// `rows x outputs` dot products, without the bias.
        var dots: [Float]
    }

    public init(table: CSVTable, fileLength: Int) {
        _ = GaussianNoise.ready
        self.table = table
        self.fileLength = fileLength
        self.rows = table.rowCount
    }

    /// The next bytes of the file, in order.
    public func consume(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let start = position
        position += bytes.count
        guard failure == nil else { return }
        var skip = 0
        if view == nil {
            skip = gatherHeader(bytes)
            guard failure == nil, view != nil else { return }
        }
        let span = (start + skip)..<position
        // In file order, each layer completed as soon as it can be: a batch that ends one layer and starts the next must
        // give the next its input before its rows arrive, or they would be held.
        for piece in pieces {
            let part = piece.range.clamped(to: span)
            guard !part.isEmpty else { continue }
            let bytes = base + (part.lowerBound - start)
            if piece.isBias {
                let offset = part.lowerBound - piece.range.lowerBound
                biases!.pointer.advanced(by: layers[piece.layer].biasAt + offset).copyMemory(from: bytes, byteCount: part.count)
                layers[piece.layer].biasCount += part.count
            } else {
                consumeWeights(piece.layer, bytes, part.count)
            }
            completeLayers()
        }
    }

    /// The view and the per-task predictions, as ``CheckpointView/predict(_:weights:)`` gives them, once the whole
    /// file has been consumed. Throws what stopped the prediction.
    public func finish() throws(CofferTrainingError) -> (CheckpointView, [[Float]]) {
        if let failure { throw failure }
        guard let view, position == fileLength, outputs.allSatisfy({ $0 != nil }) else {
            throw .invalidCheckpoint("the file ended after \(position) of its \(fileLength) bytes, before its tensors")
        }
        let trunk = view.architecture.trunk.count
        let predictions = view.architecture.tasks.enumerated().map { t, task in
            view.taskPredictions(outputs[trunk + t]!, task: task, rows: rows)
        }
        return (view, predictions)
    }

    /// Gathers the header from the file's first bytes and parses it once whole; returns how many of `bytes` it took.
    private func gatherHeader(_ bytes: UnsafeRawBufferPointer) -> Int {
        let start = position - bytes.count
        // The 8-byte length first, then a buffer of the header's size.
        let have = min(start, 8)
        let lengthTaken = min(8 - have, bytes.count)
        if header == nil { header = LockedBytes(count: 8) }
        header!.pointer.advanced(by: have).copyMemory(from: bytes.baseAddress!, byteCount: lengthTaken)
        guard start + lengthTaken >= 8 else { return bytes.count }
        let length = Safetensors.headerLength(UnsafeRawBufferPointer(start: header!.pointer, count: 8))!
        guard length <= UInt64(Safetensors.maximumHeaderLength), 8 + Int(length) <= fileLength else {
            failure = .invalidCheckpoint("header length \(length) runs past the end of the file")
            return bytes.count
        }
        let end = 8 + Int(length)
        if header!.count < end {
            let whole = LockedBytes(count: end)
            whole.pointer.copyMemory(from: header!.pointer, byteCount: 8)
            header = whole
        }
        let from = max(start, 8)
        let taken = min(end, position) - from
        if taken > 0 { header!.pointer.advanced(by: from).copyMemory(from: bytes.baseAddress! + (from - start), byteCount: taken) }
        guard position >= end else { return bytes.count }
        defer { header = nil }
        let parsed: CheckpointView
        do {
            parsed = try CheckpointView(header: UnsafeRawBufferPointer(start: header!.pointer, count: end), fileLength: fileLength)
        } catch {
            failure = error
            return bytes.count
        }
        // A view with a failure is a checkpoint the input does not fit (a missing column), not a file that is not one.
        view = parsed
        do {
            inputs0 = try parsed.preprocessing.features(of: table)
            layers = parsed.layers.map { layer in
                LayerState(
                    weight: layer.weight..<(layer.weight + 4 * layer.inputs * layer.outputs),
                    bias: layer.bias..<(layer.bias + 4 * layer.outputs),
                    inputs: layer.inputs,
                    outputs: layer.outputs,
                    dots: [Float](repeating: 0, count: rows * layer.outputs)
                )
            }
            outputs = Array(repeating: nil, count: layers.count)
            pieces = layers.indices.flatMap { l in [(layers[l].weight, l, false), (layers[l].bias, l, true)] }
                .sorted { $0.range.lowerBound < $1.range.lowerBound }
            // A layer's output is known once its own bytes and its input's are in: from the file offsets alone, which
            // layers' weights begin before that for their input, and so are held.
            var known: [Int] = []
            var biasBytes = 0
            for l in layers.indices {
                let before = previous(l).map { known[$0] } ?? 0
                if layers[l].weight.lowerBound < before {
                    layers[l].heldAt = heldBytes
                    heldBytes += layers[l].weight.count
                }
                layers[l].biasAt = biasBytes
                biasBytes += layers[l].bias.count
                known.append(max(layers[l].weight.upperBound, layers[l].bias.upperBound, before))
            }
            held = heldBytes > 0 ? LockedBytes(count: heldBytes) : nil
            biases = LockedBytes(count: biasBytes)
            row = LockedBytes(count: 4 * (layers.map(\.inputs).max() ?? 1))
        } catch {
            failure = error
        }
        return end - start
    }

    /// The features of the rows: the first trunk layer's input.
    private var inputs0: [Float] = []

    /// The layer whose output is layer `l`'s input: the previous trunk layer, or the trunk's last for a head; nil for
    /// the first, whose input is the features.
    private func previous(_ l: Int) -> Int? {
        let trunk = view!.architecture.trunk.count
        let previous = l < trunk ? l - 1 : trunk - 1
        return previous < 0 ? nil : previous
    }

    /// The input of layer `l`, once known.
    private func input(of l: Int) -> [Float]? { previous(l).map { outputs[$0] } ?? inputs0 }

    private func consumeWeights(_ l: Int, _ bytes: UnsafeRawPointer, _ count: Int) {
        let offset = layers[l].weightBytes
        layers[l].weightBytes += count
        if let at = layers[l].heldAt {
            held!.pointer.advanced(by: at + offset).copyMemory(from: bytes, byteCount: count)
            return
        }
        // Not held: its input was complete before its first byte (the pieces go in file order).
        guard let x = input(of: l) else {
            failure = .invalidCheckpoint("layer \(l) arrived before its input")
            return
        }
        let rowLength = 4 * layers[l].inputs
        let row = row!.pointer
        var next = bytes
        var left = count
        if partial > 0 {
            let taken = min(rowLength - partial, left)
            row.advanced(by: partial).copyMemory(from: next, byteCount: taken)
            (partial, next, left) = (partial + taken, next + taken, left - taken)
            guard partial == rowLength else { return }
            multiplyRow(l, UnsafeRawPointer(row), x)
            partial = 0
        }
        while left >= rowLength {
            if Int(bitPattern: next) % MemoryLayout<Float>.alignment == 0 {
                multiplyRow(l, next, x)
            } else {
                row.copyMemory(from: next, byteCount: rowLength)
                multiplyRow(l, UnsafeRawPointer(row), x)
            }
            (next, left) = (next + rowLength, left - rowLength)
        }
        if left > 0 {
            row.copyMemory(from: next, byteCount: left)
            partial = left
        }
    }

    /// The dot products of the next row of layer `l`'s weights with each input row.
    private func multiplyRow(_ l: Int, _ weights: UnsafeRawPointer, _ x: [Float]) {
        let (k, n, r) = (layers[l].inputs, layers[l].outputs, layers[l].rowsDone)
        let w = weights.assumingMemoryBound(to: Float.self)
        x.withUnsafeBufferPointer { x in
            for i in 0..<rows { layers[l].dots[i * n + r] = MatrixKernels.dot(x.baseAddress! + i * k, w, k) }
        }
        layers[l].rowsDone += 1
    }

    /// Multiplies the rows of held layers whose input is now known, and completes every layer with all its rows and
    /// its bias, in the order the network runs them (one completion can make the next layer's input known).
    private func completeLayers() {
        var progressed = true
        while progressed {
            progressed = false
            for l in layers.indices where outputs[l] == nil {
                guard let x = input(of: l) else { continue }
                if let at = layers[l].heldAt {
                    let rowLength = 4 * layers[l].inputs
                    while layers[l].rowsDone < layers[l].weightBytes / rowLength {
                        multiplyRow(l, UnsafeRawPointer(held!.pointer) + at + layers[l].rowsDone * rowLength, x)
                    }
                }
                guard layers[l].rowsDone == layers[l].outputs, layers[l].biasCount == layers[l].bias.count else { continue }
                let n = layers[l].outputs
                let bias = UnsafeRawPointer(biases!.pointer) + layers[l].biasAt
                // The bias plus the dot product, as CheckpointView adds the product to an output that holds the bias.
                var z = layers[l].dots
                for i in 0..<rows {
                    for o in 0..<n { z[i * n + o] = bias.loadUnaligned(fromByteOffset: 4 * o, as: Float.self) + z[i * n + o] }
                }
                let isTrunk = l < view!.architecture.trunk.count
                outputs[l] = isTrunk ? z.map { view!.architecture.activation.apply($0) } : z
                progressed = true
            }
        }
    }
}

/// Bytes in libsodium's guarded, locked heap, wiped when freed: the header, a weight row, the held layers, the biases.
private final class LockedBytes {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(count: Int) {
        guard let pointer = sodium_malloc(max(count, 1)) else { fatalError("sodium_malloc failed: out of memory for \(count) bytes") }
        self.pointer = pointer
        self.count = count
    }

    deinit { sodium_free(pointer) }
}
