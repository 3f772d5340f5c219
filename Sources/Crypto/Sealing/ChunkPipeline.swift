import CSodium
import Dispatch

/// Streams chunks through seal or open on all cores with bounded memory.
///
/// Two batch buffers alternate: while workers transform batch k (one task per chunk, plus one task
/// hashing the batch's input), the calling thread writes batch k-1 (hashing its output) and reads
/// batch k+1. Memory is 2 x batch x (input + output stride), whatever the stream's length. One byte
/// of look-ahead tells which chunk is the last, so pipes work as well as files.
struct ChunkPipeline {
    enum Direction { case seal, open }

    let direction: Direction
    let cipher: ChunkCipher
    let chunkSize: Int
    /// Index of the first chunk the source holds (non-zero for range reads).
    var firstIndex: UInt64 = 0
    /// Whether the source's end is the end of the sealed stream (false for a range that stops early).
    var sourceEndIsStreamEnd = true
    /// Hash of the input so far (e.g. seeded with a header), continued over every batch; `nil` for none.
    var inputHasher: StreamingSHA256? = nil
    /// Hash of the output so far, continued over every batch; `nil` for none.
    var outputHasher: StreamingSHA256? = nil
    var progress: ((Int) -> Void)? = nil

    struct Result {
        var inputBytes = 0
        var outputBytes = 0
        var chunks: UInt64 = 0
        var inputSHA256: [UInt8]? = nil
        var outputSHA256: [UInt8]? = nil
    }

    var inputStride: Int { direction == .seal ? chunkSize : chunkSize + ChunkCipher.tagLength }
    var outputStride: Int { direction == .seal ? chunkSize + ChunkCipher.tagLength : chunkSize }

    /// Chunks per batch: at least two per core, and about 2 MiB of plaintext; fewer when the input is known to be small.
    func batchChunks(remaining: Int?) -> Int {
        let full = max(2 * ProcessInfoCores.count, (2 << 20) / chunkSize)
        guard let remaining else { return full }
        return max(1, min(full, remaining / inputStride + 1))
    }

    func run(source: any ByteSource, sink: any ByteSink) throws(CofferCryptoError) -> Result {
        let capacity = batchChunks(remaining: source.remainingHint)
        let buffers = [Batch(pipeline: self, capacity: capacity), Batch(pipeline: self, capacity: capacity)]
        var result = Result()
        var inputHasher = self.inputHasher
        var outputHasher = self.outputHasher
        var carry: UInt8? = nil
        var nextIndex = firstIndex
        var pending: Batch? = nil
        var turn = 0
        var finished = false

        func drain(_ batch: Batch) throws(CofferCryptoError) {
            batch.group.wait()
            if let error = batch.firstError() { throw error }
            if let digest = batch.inputDigest { inputHasher = digest }
            try batch.withOutput { output throws(CofferCryptoError) in
                outputHasher?.update(output)
                try sink.write(output)
            }
            result.inputBytes += batch.inputLength
            result.outputBytes += batch.outputLength
            progress?(result.inputBytes)
        }

        while !finished {
            let batch = buffers[turn % 2]
            turn += 1
            let (length, eof) = try batch.fill(from: source, carry: &carry)
            finished = eof
            if length == 0 && nextIndex != firstIndex { break }  // the previous batch ended exactly at the end
            try batch.layout(length: length, firstIndex: nextIndex, endsStream: eof && sourceEndIsStreamEnd)
            nextIndex += UInt64(batch.chunkCount)
            // Input hashing chains batch to batch: start this batch's from the previous state.
            if let pending { pending.group.wait() }
            batch.start(inputDigest: pending?.inputDigest ?? inputHasher)
            if let pending { try drain(pending) }
            pending = batch
        }
        if let pending { try drain(pending) }
        result.chunks = nextIndex - firstIndex
        result.inputSHA256 = inputHasher?.finalize()
        result.outputSHA256 = outputHasher?.finalize()
        return result
    }
}

/// The number of cores workers may use.
enum ProcessInfoCores {
    static let count: Int = {
        #if canImport(Glibc)
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
        return 2
        #endif
    }()
}

#if canImport(Glibc)
import Glibc
#endif

/// One batch: an input and an output buffer, and the state of its chunks.
private final class Batch: @unchecked Sendable {
    let pipeline: ChunkPipeline
    let capacity: Int
    let input: UnsafeMutableRawPointer
    let output: UnsafeMutableRawPointer
    let inputCapacity: Int
    let outputCapacity: Int
    let group = DispatchGroup()
    private(set) var inputLength = 0
    private(set) var chunkCount = 0
    private var firstIndex: UInt64 = 0
    private var endsStream = false
    /// One slot per chunk, written by that chunk's worker only.
    private let errors: UnsafeMutablePointer<CofferCryptoError?>
    private(set) var inputDigest: StreamingSHA256? = nil

    init(pipeline: ChunkPipeline, capacity: Int) {
        self.pipeline = pipeline
        self.capacity = capacity
        self.inputCapacity = capacity * pipeline.inputStride
        self.outputCapacity = capacity * pipeline.outputStride
        // Plaintext sides live in sodium_malloc memory: locked against swap and wiped when freed.
        self.input = sodium_malloc(inputCapacity)!
        self.output = sodium_malloc(outputCapacity)!
        self.errors = .allocate(capacity: capacity)
        self.errors.initialize(repeating: nil, count: capacity)
    }

    deinit {
        sodium_free(input)
        sodium_free(output)
        errors.deinitialize(count: capacity)
        errors.deallocate()
    }

    var outputLength: Int {
        guard chunkCount > 0 else { return 0 }
        let delta = pipeline.outputStride - pipeline.inputStride
        return inputLength + delta * chunkCount
    }

    /// Reads up to a full batch, then one more byte to learn whether the input ends here.
    func fill(from source: any ByteSource, carry: inout UInt8?) throws(CofferCryptoError) -> (Int, Bool) {
        var length = 0
        if let byte = carry {
            input.storeBytes(of: byte, as: UInt8.self)
            length = 1
        }
        length += try source.read(into: UnsafeMutableRawBufferPointer(start: input + length, count: inputCapacity - length))
        guard length == inputCapacity else {
            carry = nil
            return (length, true)
        }
        var next: [UInt8] = [0]
        let n = try next.withMutableBytes { buffer throws(CofferCryptoError) in try source.read(into: buffer) }
        carry = n == 1 ? next[0] : nil
        return (length, n == 0)
    }

    /// Splits `length` input bytes into chunks and checks the chunk lengths the format allows.
    func layout(length: Int, firstIndex: UInt64, endsStream: Bool) throws(CofferCryptoError) {
        let stride = pipeline.inputStride
        let tag = ChunkCipher.tagLength
        inputLength = length
        self.firstIndex = firstIndex
        self.endsStream = endsStream
        chunkCount = length == 0 ? 1 : (length + stride - 1) / stride
        let last = length - (chunkCount - 1) * stride
        if pipeline.direction == .open {
            if length == 0 { throw .truncated("no chunks after the header") }
            if last < tag { throw .truncated("chunk \(firstIndex + UInt64(chunkCount - 1)) is shorter than its tag") }
            if last == tag && firstIndex + UInt64(chunkCount) > 1 && endsStream {
                throw .malformedHeader("empty final chunk after chunk 0")
            }
        }
        if !endsStream && last != stride {
            throw .truncated("chunk \(firstIndex + UInt64(chunkCount - 1)) is short")
        }
        guard firstIndex + UInt64(chunkCount) - 1 <= ChunkCipher.maximumChunkIndex else {
            throw .malformedHeader("more than 2^56 chunks")
        }
        for j in 0..<chunkCount { errors[j] = nil }
    }

    /// Starts the chunk tasks and, if wanted, the hash of this batch's input chained from `digest`.
    func start(inputDigest digest: StreamingSHA256?) {
        inputDigest = nil
        if let digest {
            DispatchQueue.global().async(group: group) {
                var hasher = digest
                hasher.update(UnsafeRawBufferPointer(start: self.input, count: self.inputLength))
                self.inputDigest = hasher
            }
        }
        DispatchQueue.global().async(group: group) {
            DispatchQueue.concurrentPerform(iterations: self.chunkCount) { self.transform(chunk: $0) }
        }
    }

    private func transform(chunk j: Int) {
        let inStride = pipeline.inputStride
        let outStride = pipeline.outputStride
        let isLastInBatch = j == chunkCount - 1
        let length = isLastInBatch ? inputLength - j * inStride : inStride
        let index = firstIndex + UInt64(j)
        let last = isLastInBatch && endsStream
        let source = UnsafeRawBufferPointer(start: input + j * inStride, count: length)
        let destination = output + j * outStride
        switch pipeline.direction {
        case .seal:
            pipeline.cipher.seal(source, into: destination, index: index, last: last)
        case .open:
            errors[j] = pipeline.cipher.openOrDiagnose(source, into: destination, index: index, last: last)
        }
    }

    func firstError() -> CofferCryptoError? { (0..<chunkCount).lazy.compactMap { self.errors[$0] }.first }

    func withOutput<R>(_ body: (UnsafeRawBufferPointer) throws(CofferCryptoError) -> R) throws(CofferCryptoError) -> R {
        try body(UnsafeRawBufferPointer(start: output, count: outputLength))
    }
}
