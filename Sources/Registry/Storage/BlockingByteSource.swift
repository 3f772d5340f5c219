public import CofferCrypto
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A ``BlobStream`` read as CofferCrypto's blocking ``ByteSource``, so that the chunk pipeline's own threads can decrypt
/// a blob straight from a remote store.
///
/// A task on Swift's cooperative pool pulls the stream's buffers into a queue of at most `limit` bytes (it suspends,
/// never blocks, when the queue is full); ``read(into:)`` blocks on a condition variable until bytes are there. An error
/// of the stream (a registry that failed, a blob whose SHA-256 is wrong) reaches the reader once the bytes before it are
/// read; releasing the source, or ``cancel()``, cancels the task and with it the request.
///
/// - Important: Call ``read(into:)`` only from a thread that is **not** on Swift's cooperative pool (a pipeline thread,
///   `Offload.run`, a `Thread`): it blocks, and the task it waits for needs a pool thread to run. On a pool of one thread
///   per core, a few readers blocking there would wait for ever.
///
/// ```swift
/// let source = BlockingByteSource(try await store.read(digest, range: nil))
/// try await Offload.run { try pipeline.open(from: source, ...) }
/// ```
public final class BlockingByteSource: ByteSource, Sendable {
    private struct State {
        var buffers: [ByteBuffer] = []
        var head = 0
        var bytes = 0
        var finished = false
        var failure: (any Error)?
        var cancelled = false
        var spaceWaiter: CheckedContinuation<Void, Never>?
    }

    /// The `description` used when the stream fails with an error that is not a registry error.
    public let name: String
    private let limit: Int
    private let length: Int?
    private let state = Mutex(State())
    // A pthread condition needs its mutex: both are only touched with `conditionMutex` held.
    private let condition = Condition()
    private let task = Mutex<Task<Void, Never>?>(nil)
    private let consumed = Mutex(0)

    private let opening: Mutex<(@Sendable () async throws -> BlobStream)?>

    /// - Parameters:
    ///   - stream: the bytes, read once.
    ///   - name: how a failure is described (the store's name).
    ///   - limit: the most bytes held at once; 8 MiB keeps the pipeline fed across network hiccups (it decrypts about
    ///     1 GiB/s, the network brings less) without letting one reader pile up a blob.
    public convenience init(_ stream: BlobStream, name: String = "blob stream", limit: Int = 8 << 20) {
        self.init(length: stream.length, name: name, limit: limit) { stream }
        startIfNeeded()
    }

    /// A source that opens its stream at the first read: sources made for every file of a version cost nothing (no
    /// request, no buffer) until the pipeline comes to them. `length` is the blob's size when known.
    public init(
        length: Int?,
        name: String = "blob stream",
        limit: Int = 8 << 20,
        opening open: @escaping @Sendable () async throws -> BlobStream
    ) {
        self.name = name
        self.limit = max(limit, 1)
        self.length = length
        opening = Mutex(open)
    }

    private func startIfNeeded() {
        guard
            let open = opening.withLock({ pending in
                defer { pending = nil }
                return pending
            })
        else { return }
        let started = Task { [weak self] in
            do {
                for try await buffer in try await open() {
                    guard let self else { return }
                    guard await self.push(buffer) else { return }
                }
                self?.end(nil)
            } catch {
                self?.end(error)
            }
        }
        task.withLock { $0 = started }
    }

    deinit {
        cancel()
    }

    /// The error the stream failed with, as it was thrown (a `CofferRegistryError` from a store): `read(into:)` can only
    /// throw `CofferCryptoError`, so it carries this one's description, and a caller that wants the original takes it here.
    public var failure: (any Error)? { state.withLock { $0.failure } }

    public var remainingHint: Int? { length.map { $0 - consumed.withLock { $0 } } }

    /// Stops reading: the producing task is cancelled (and with it the HTTP request), and a blocked `read` returns.
    public func cancel() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.cancelled = true
            defer { state.spaceWaiter = nil }
            return state.spaceWaiter
        }
        waiter?.resume()
        task.withLock { $0?.cancel() }
        condition.broadcast()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        // A read on a pool thread is a hang waiting to happen (see the type's note); debug builds, and so every test,
        // stop at the first one instead of hanging when the pool's threads are all taken.
        assert(withUnsafeCurrentTask { $0 == nil }, "BlockingByteSource.read(into:) called from a task on Swift's cooperative pool")
        startIfNeeded()
        var filled = 0
        while filled < buffer.count {
            let ready = { self.state.withLock { $0.bytes > 0 || $0.finished || $0.cancelled } }
            let (copied, ended, error, waiter) = condition.wait(until: ready) {
                self.state.withLock { state -> (Int, Bool, (any Error)?, CheckedContinuation<Void, Never>?) in
                    var copied = 0
                    while copied < buffer.count - filled, state.head < state.buffers.count {
                        let available = state.buffers[state.head].readableBytes
                        let n = min(available, buffer.count - filled - copied)
                        state.buffers[state.head].withUnsafeReadableBytes { raw in
                            (buffer.baseAddress! + filled + copied).copyMemory(from: raw.baseAddress!, byteCount: n)
                        }
                        state.buffers[state.head].moveReaderIndex(forwardBy: n)
                        if n == available {
                            state.buffers[state.head] = ByteBuffer()
                            state.head += 1
                        }
                        copied += n
                    }
                    if state.head > 64 {
                        state.buffers.removeFirst(state.head)
                        state.head = 0
                    }
                    state.bytes -= copied
                    var waiter: CheckedContinuation<Void, Never>?
                    if state.bytes < limit {
                        waiter = state.spaceWaiter
                        state.spaceWaiter = nil
                    }
                    let drained = state.bytes == 0
                    return (copied, drained && (state.finished || state.cancelled), drained ? state.failure : nil, waiter)
                }
            }
            waiter?.resume()
            filled += copied
            consumed.withLock { $0 += copied }
            if let error {
                if let error = error as? CofferCryptoError { throw error }
                if let error = error as? CofferRegistryError, case .crypto(let inner) = error { throw inner }
                // `.io(path:reason:)` prints "path: reason": a registry error that already begins with the store's name
                // keeps its one line instead of naming the store twice.
                let text = Self.describe(error)
                let reason = text.hasPrefix("\(name): ") ? String(text.dropFirst(name.count + 2)) : text
                throw .io(path: name, reason: reason)
            }
            if ended {
                // A cancelled read is an error even when the producer, cancelled too, ended its stream as if complete.
                if state.withLock({ $0.cancelled }) { throw .io(path: name, reason: "reading was cancelled") }
                break
            }
        }
        return filled
    }

    private static func describe(_ error: any Error) -> String { String(describing: error) }

    /// Queues a buffer, suspending while the queue is full; false once the reader has cancelled.
    private func push(_ buffer: ByteBuffer) async -> Bool {
        // Queued at once when there is room (the usual case: a pull decrypts slower than loopback brings bytes, so the
        // queue is rarely full), without a continuation per buffer.
        while true {
            let outcome = state.withLock { state -> Bool? in
                guard !state.cancelled else { return false }
                guard state.bytes < limit else { return nil }
                if buffer.readableBytes > 0 {
                    state.buffers.append(buffer)
                    state.bytes += buffer.readableBytes
                }
                return true
            }
            if let outcome {
                if outcome { condition.broadcast() }
                return outcome
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.cancelled || state.bytes < limit { return true }
                    state.spaceWaiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    private func end(_ error: (any Error)?) {
        state.withLock { state in
            state.finished = true
            if state.failure == nil { state.failure = error }
        }
        condition.broadcast()
    }
}

/// A pthread condition variable with its mutex, for the one place a thread outside Swift concurrency waits for a task.
private final class Condition: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// Waits until `ready()` holds, then runs `body`, both with the mutex held so that no broadcast falls between them.
    func wait<T>(until ready: () -> Bool, _ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while !ready() { pthread_cond_wait(&condition, &mutex) }
        return body()
    }

    func broadcast() {
        pthread_mutex_lock(&mutex)
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }
}
