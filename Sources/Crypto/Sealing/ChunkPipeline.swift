import CSodium
import Dispatch
import Synchronization

/// Streams chunks through seal or open on all cores with bounded memory.
///
/// Five kinds of lane run at once over three rotating batch buffers: the calling thread reads batch
/// k+1, one worker lane per core transforms its share of batch k's chunks, a hasher lane hashes each
/// batch's input in order, and once a batch is transformed, a writer lane writes it and an output hasher lane hashes
/// it, each at its own pace; a batch is filled again once all three are done with it. Lanes are
/// threads of the pipeline's own (see ``Lane``); an input known to fit one batch is transformed and written inline, and
/// hashed beside that from ``smallestBatchHashedBeside`` on. Reading and writing
/// are the costliest steps on a virtual machine's page cache, so they must not share a thread.
/// Memory is 3 x batch x (input + output stride), whatever the stream's length; a ``MemoryRegionSink`` is
/// written in place, without output buffers or a copy. One byte of look-ahead tells which chunk is the last,
/// so pipes work as well as files.
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

    /// Chunks per batch: at least two per core, and about 1 MiB of plaintext; fewer when the input is known to be small.
    ///
    /// A batch has one slot more than the chunks its input fills, since a batch that reads its last chunk without
    /// reaching the end cannot know that chunk is final; so a known input is one batch up to `full` chunks inclusive.
    /// At `full` (a model of exactly 1 MiB), two batches took the threaded pipeline: a push cost 77 ms of CPU where
    /// 1,040,000 bytes cost 66 (medians of 20, same run).
    func batchChunks(remaining: Int?) -> Int {
        let full = max(2 * ProcessInfoCores.count, (1 << 20) / chunkSize)
        guard let remaining else { return full }
        return max(1, min(full + 1, remaining / inputStride + 1))
    }

    /// The input size from which a single batch's hashes run on threads of their own, beside its transform and its
    /// write: SHA-256 costs twice what XChaCha20-Poly1305 does here, and the two hashes were 3 ms of a 1 MiB push's
    /// 6.3 ms seal, one after the other. A thread costs about 0.05 ms to start, a 256 KiB hash 0.2. With the sealed
    /// side in ordinary memory (``Batch``), a 1 MiB push through the runner went from 49.1 to 47.2 ms and a 16 MiB one
    /// from 91.8 to 88.3 (medians of 15, same run, alternated).
    static let smallestBatchHashedBeside = 256 << 10

    func run(source: any ByteSource, sink: any ByteSink) throws(CofferCryptoError) -> Result {
        let remaining = source.remainingHint
        if (remaining ?? Int.max) >= ChunkCipher.worthLoading { ChunkCipher.loadFasterCipher() }
        let capacity = batchChunks(remaining: remaining)
        let oneBatch = remaining.map { $0 < capacity * inputStride } ?? false
        let region = sink as? MemoryRegionSink
        // The second and third batches are made when first needed, beside the first batch's work: locking and filling
        // each one's plaintext side (sodium_malloc) took about 0.5 ms before the first read.
        let rotation = oneBatch ? 1 : 3
        var buffers: [Batch] = []
        let state = PipelineState(inputHasher: inputHasher, outputHasher: outputHasher)
        // The workers yield to the lanes that hash: a hash is one serial pass, the longest lane of an open that checks
        // its digest (SHA-256 costs about twice what decryption does), while the workers share their work between them.
        // Workers at nice 5 against 0, release builds alternated, medians of per-round ratios (a noisy machine): `coffer
        // infer` of one row on the session benchmark's 100 MB model 0.958x wall over 41 rounds (0.991x over 31), the same
        // CPU; push and pull through the agent, 11 rounds of 16 MiB 0.988x and 0.952x, 7 of 256 MiB 1.016x and 0.987x.
        let workerNice: Int32 = inputHasher != nil || outputHasher != nil ? 5 : 0
        let workers = (0..<(oneBatch ? 1 : ProcessInfoCores.count)).map {
            Lane(name: "coffer-worker\($0)", inline: oneBatch, nice: workerNice)
        }
        // One batch is transformed and written on this thread, but a large enough one is hashed beside that, each hash
        // on a thread of its own.
        let hashesInline = oneBatch && (remaining ?? 0) < Self.smallestBatchHashedBeside
        let hasherLane = Lane(name: "coffer-hash", inline: hashesInline || inputHasher == nil)
        let writerLane = Lane(name: "coffer-write", inline: oneBatch)
        // The output is hashed on a lane of its own, in parallel with writing it: both cost as much as encryption.
        let outputHasherLane = Lane(name: "coffer-hash-out", inline: hashesInline || outputHasher == nil)

        // Which hashes run, known here: the reading thread never looks at the hashers, which their lanes update (a
        // hasher's copy-on-write context is swapped when not uniquely referenced: helper-81 saw a debug build's reads
        // race with it).
        let hashes = (input: inputHasher != nil, output: outputHasher != nil)
        // The sink and the progress callback are only ever used on the writer lane, one batch after another,
        // and run() waits for that lane to drain before it returns.
        let writerOnly = UncheckedSendable(value: (sink: sink, progress: progress))
        // The previous batch's look-ahead byte, in that batch's own buffer.
        var carry: UnsafeRawPointer? = nil
        var nextIndex = firstIndex
        var turn = 0
        var finished = false

        do {
            while !finished && !state.failed {
                if buffers.count < rotation { buffers.append(Batch(pipeline: self, capacity: capacity, ownsOutput: region == nil)) }
                let batch = buffers[turn % rotation]
                turn += 1
                batch.free.wait()
                let (length, eof) = try batch.fill(from: source, carry: &carry)
                finished = eof
                try batch.layout(length: length, firstIndex: nextIndex, endsStream: eof && sourceEndIsStreamEnd)
                if let region { batch.output = try region.reserve(batch.outputLength).baseAddress }
                nextIndex += UInt64(batch.chunkCount)
                batch.start(workers: workers, hasherLane: hasherLane, hashes: hashes, state: state)
                // The output's hash and its write each follow the transform on a lane of their own, not one after the
                // other's previous batch: a 16 MiB push's pipeline took 25.3 -> 21.3 ms when the write no longer waited
                // for the input's hash, and the writer lane then paced it at the slower of the two for each batch.
                if hashes.output {
                    outputHasherLane.async {
                        batch.transformed.wait()
                        if !state.failed && batch.firstError() == nil { state.outputHasher?.update(batch.output(count: batch.outputLength)) }
                        batch.partDone()
                    }
                }
                writerLane.async {
                    batch.transformed.wait()
                    defer { batch.partDone() }
                    guard !state.failed else { return }
                    if let error = batch.firstError() { return state.fail(error) }
                    // A region sink already holds the output: the workers wrote it there.
                    if region == nil {
                        do throws(CofferCryptoError) {
                            try writerOnly.value.sink.write(batch.output(count: batch.outputLength))
                        } catch {
                            return state.fail(error)
                        }
                    }
                    state.inputBytes += batch.inputLength
                    state.outputBytes += batch.outputLength
                    writerOnly.value.progress?(state.inputBytes)
                }
            }
        } catch {
            state.fail(error)
        }
        // Every error is caught above, so the lanes always end here.
        writerLane.finish()
        outputHasherLane.finish()
        hasherLane.finish()
        for lane in workers { lane.finish() }
        if let error = state.error { throw error }
        return Result(
            inputBytes: state.inputBytes,
            outputBytes: state.outputBytes,
            chunks: nextIndex - firstIndex,
            inputSHA256: state.inputHasher?.finalize(),
            outputSHA256: state.outputHasher?.finalize()
        )
    }
}

/// A value handed to another lane that the compiler cannot prove safe; each use says why it is.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}

/// What the lanes of one pipeline run share. Each field has one writer lane; `error` is guarded by a lock.
private final class PipelineState: @unchecked Sendable {
    /// Written only on the hasher lane.
    var inputHasher: StreamingSHA256?
    /// Written only on the output hasher lane, one batch after another in the writer lane's order.
    var outputHasher: StreamingSHA256?
    /// Written only on the writer lane.
    var inputBytes = 0
    var outputBytes = 0
    private let firstError = Mutex<CofferCryptoError?>(nil)

    init(inputHasher: StreamingSHA256?, outputHasher: StreamingSHA256?) {
        self.inputHasher = inputHasher
        self.outputHasher = outputHasher
    }

    var error: CofferCryptoError? { firstError.withLock { $0 } }
    var failed: Bool { error != nil }

    func fail(_ error: CofferCryptoError) {
        firstError.withLock { if $0 == nil { $0 = error } }
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
    /// The batch's own output buffer, or `nil` when each batch is given its place in a region sink.
    private let ownOutput: UnsafeMutableRawPointer?
    /// Where the workers write this batch's output.
    var output: UnsafeMutableRawPointer?
    let inputCapacity: Int
    let outputCapacity: Int
    /// Whether the input is the plaintext (sealing) and the output the sealed text, or the other way round (opening).
    private let plaintextIsInput: Bool
    /// Left by each worker once its share of the chunks is transformed.
    let transformed = DispatchGroup()
    /// The parts of the batch's work still running (its write, and its input's and output's hashes); the last to end
    /// frees the batch.
    private let pending = Atomic<Int>(0)
    /// Signalled when the last part of this batch's work is done and it may be filled again.
    let free: DispatchSemaphore = {
        // Created at 0 and signalled once, not created at 1: libdispatch traps when a semaphore is freed below its
        // initial value, which a batch abandoned on an error (waited for, never written) would be.
        let semaphore = DispatchSemaphore(value: 0)
        semaphore.signal()
        return semaphore
    }()
    private(set) var inputLength = 0
    private(set) var chunkCount = 0
    private var firstIndex: UInt64 = 0
    private var endsStream = false
    /// One slot per chunk, written by that chunk's worker only.
    private let errors: UnsafeMutablePointer<CofferCryptoError?>

    init(pipeline: ChunkPipeline, capacity: Int, ownsOutput: Bool) {
        self.pipeline = pipeline
        self.capacity = capacity
        self.inputCapacity = capacity * pipeline.inputStride
        self.outputCapacity = capacity * pipeline.outputStride
        // The plaintext side lives in sodium_malloc memory, locked against swap and wiped when freed; the sealed side
        // is ordinary memory: locking, filling and wiping both sides took 1.0-1.4 ms of a 1 MiB push.
        plaintextIsInput = pipeline.direction == .seal
        // One byte more for the look-ahead, a plaintext byte when sealing.
        self.input = plaintextIsInput ? sodium_malloc(inputCapacity + 1)! : .allocate(byteCount: inputCapacity + 1, alignment: 64)
        self.ownOutput = ownsOutput ? (plaintextIsInput ? .allocate(byteCount: outputCapacity, alignment: 64) : sodium_malloc(outputCapacity)!) : nil
        self.output = ownOutput
        self.errors = .allocate(capacity: capacity)
        self.errors.initialize(repeating: nil, count: capacity)
    }

    deinit {
        if plaintextIsInput {
            sodium_free(input)
            ownOutput?.deallocate()
        } else {
            input.deallocate()
            if let ownOutput { sodium_free(ownOutput) }
        }
        errors.deinitialize(count: capacity)
        errors.deallocate()
    }

    var outputLength: Int {
        guard chunkCount > 0 else { return 0 }
        let delta = pipeline.outputStride - pipeline.inputStride
        return inputLength + delta * chunkCount
    }

    /// Reads up to a full batch, then one more byte to learn whether the input ends here. That byte stays in this
    /// batch's buffer, past its input, and `carry` points at it: the next batch starts with it.
    func fill(from source: any ByteSource, carry: inout UnsafeRawPointer?) throws(CofferCryptoError) -> (Int, Bool) {
        var length = 0
        if let byte = carry {
            input.copyMemory(from: byte, byteCount: 1)
            length = 1
        }
        length += try source.read(into: UnsafeMutableRawBufferPointer(start: input + length, count: inputCapacity - length))
        guard length == inputCapacity else {
            carry = nil
            return (length, true)
        }
        let lookAhead = input + inputCapacity
        let n = try source.read(into: UnsafeMutableRawBufferPointer(start: lookAhead, count: 1))
        carry = n == 1 ? UnsafeRawPointer(lookAhead) : nil
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
                throw .malformedChunk("empty final chunk after chunk 0")
            }
        }
        if !endsStream && last != stride {
            throw .truncated("chunk \(firstIndex + UInt64(chunkCount - 1)) is short")
        }
        guard firstIndex + UInt64(chunkCount) - 1 <= ChunkCipher.maximumChunkIndex else {
            throw .malformedChunk("more than 2^56 chunks")
        }
        for j in 0..<chunkCount { errors[j] = nil }
    }

    /// Gives each worker lane its share of the chunks and, if the input is hashed, queues this batch on the hasher lane.
    /// The batch is free again once its write and each hash (the output's one queued by the caller) called ``partDone()``.
    func start(workers: [Lane], hasherLane: Lane, hashes: (input: Bool, output: Bool), state: PipelineState) {
        pending.store(1 + (hashes.input ? 1 : 0) + (hashes.output ? 1 : 0), ordering: .relaxed)
        if hashes.input {
            hasherLane.async {
                if !state.failed { state.inputHasher?.update(UnsafeRawBufferPointer(start: self.input, count: self.inputLength)) }
                self.partDone()
            }
        }
        for (w, worker) in workers.enumerated() {
            transformed.enter()
            worker.async {
                for j in stride(from: w, to: self.chunkCount, by: workers.count) { self.transform(chunk: j) }
                self.transformed.leave()
            }
        }
    }

    /// One part of the batch's work has ended; the last one frees the batch.
    func partDone() {
        if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { free.signal() }
    }

    private func transform(chunk j: Int) {
        let inStride = pipeline.inputStride
        let outStride = pipeline.outputStride
        let isLastInBatch = j == chunkCount - 1
        let length = isLastInBatch ? inputLength - j * inStride : inStride
        let index = firstIndex + UInt64(j)
        let last = isLastInBatch && endsStream
        let source = UnsafeRawBufferPointer(start: input + j * inStride, count: length)
        let destination = output! + j * outStride
        switch pipeline.direction {
        case .seal:
            pipeline.cipher.seal(source, into: destination, index: index, last: last)
        case .open:
            errors[j] = pipeline.cipher.openOrDiagnose(source, into: destination, index: index, last: last)
        }
    }

    func firstError() -> CofferCryptoError? { (0..<chunkCount).lazy.compactMap { self.errors[$0] }.first }

    func output(count: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: output, count: count) }
}
