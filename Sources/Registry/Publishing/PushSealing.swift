public import CofferCrypto
import Dispatch
import Foundation
import Synchronization

/// The sealing of a push's files under one fresh data key, on a thread of its own, so that it runs while the push does
/// what comes before it needs them: opening the registry and unlocking the publisher's identity (when started with
/// ``Registry/startSealing(_:home:)``), reading the ledger and judging the push.
///
/// Only ciphertext is written, into the blob store's temporary folder; each sealed file waits there, flushed to the disk,
/// for the push to take it into the store, and at most one waits while the next is sealed. A push that fails, or a
/// caller that gives up before pushing, calls ``cancel()``: the sealing stops within one batch and, once it returns,
/// every temporary file is gone, so a refused push leaves what it left before, a moment later. A sealing serves one push.
///
/// One task consumes it: the push it is given to (``Registry/push(_:publisher:sealing:progress:)``), or the caller that
/// cancels it. The steps come through a ``Channel`` rather than an `AsyncStream`, which ends early for a cancelled task:
/// a push then took the files it had for all of them (helper-80's review).
public final class PushSealing: Sendable {
    let dataKey = KeyBox(SecretKey.random())
    private let stop = Stop()
    /// Signalled once for each file the sealing may start: at first, then each time the push takes a sealed file.
    private let mayStart = DispatchSemaphore(value: 0)
    private let progress = ProgressRelay()
    private let steps = Channel()
    private let claimed = Atomic<Bool>(false)
    private let taken = Mutex<(inputs: Result<[InputFile], CofferRegistryError>?, delivered: Int)>((nil, 0))
    private let request: (paths: [String], contents: [PushRequest.Content], chunkSize: Int)
    /// The registry whose temporary folder the sealed files are written to (its home resolved to an absolute path, once),
    /// when started by ``Registry/startSealing(_:home:)``: a push into another registry would rename them across
    /// registries.
    let home: String?

    enum Step: @unchecked Sendable {
        case inputs([InputFile])
        case sealed(ModelStatement.File, AtomicOutputFile)
        case failed(CofferRegistryError)
    }

    /// Starts sealing the files `request` names into temporaries that `makeTemporary` creates (in the registry at
    /// `home`, when the sealing is started before that registry is open).
    init(_ request: PushRequest, home: String? = nil, makeTemporary: @escaping @Sendable () throws(CofferRegistryError) -> AtomicOutputFile) {
        let chunkSize = request.chunkSize
        self.request = (request.paths, request.contents, chunkSize)
        self.home = home
        mayStart.signal()
        Thread { [dataKey, stop, mayStart, progress, steps] in
            // The last step: after it, nothing of this thread's is left to remove (a temporary goes when its scope ends).
            defer { steps.end() }
            let inputs: [InputFile]
            do throws(CofferRegistryError) {
                inputs = try InputFile.collect(request)
            } catch {
                return steps.send(.failed(error))
            }
            steps.send(.inputs(inputs))
            var done = 0
            for input in inputs {
                mayStart.wait()
                guard !stop.requested else { return }
                do throws(CofferRegistryError) {
                    let temporary = try makeTemporary()
                    let before = done
                    let file = try Registry.seal(input, dataKey: dataKey.key, chunkSize: chunkSize, into: temporary, stop: stop) {
                        progress.report(before + $0)
                    }
                    // The sync a push would make when it stores the file, made now, beside the push's own work.
                    do throws(CofferCryptoError) { try temporary.flush() } catch { throw .crypto(error) }
                    done += file.size
                    steps.send(.sealed(file, temporary))
                } catch {
                    return steps.send(.failed(error))
                }
            }
        }.start()
    }

    /// Whether this sealing seals the files `request` names, as the push of `request` must.
    func isFor(_ request: PushRequest) -> Bool {
        request.paths == self.request.paths && request.contents == self.request.contents && request.chunkSize == self.request.chunkSize
    }

    /// Takes the sealing for one push: false when a push (or a cancel) had it already.
    func claim() -> Bool { !claimed.exchange(true, ordering: .relaxed) }

    /// Where the sealing reports the plaintext bytes sealed so far (from the first file), once the caller has a place to
    /// show them: a push started before its passphrase prompt must not draw a progress bar over it.
    func report(to reporter: (@Sendable (Int) -> Void)?) { progress.hook.withLock { $0 = reporter } }

    /// The files the request names, once collected (the errors of `InputFile.collect`).
    func files() async throws(CofferRegistryError) -> [InputFile] {
        if let inputs = taken.withLock({ $0.inputs }) { return try inputs.get() }
        let inputs: Result<[InputFile], CofferRegistryError> =
            switch await steps.receive() {
            case .inputs(let files): .success(files)
            case .failed(let error): .failure(error)
            case .sealed, nil: .failure(.invalidInput("the push's sealing ended before it read its files"))
            }
        taken.withLock { $0.inputs = inputs }
        return try inputs.get()
    }

    /// The next file sealed, in the order of ``files()``, or nil once every one was taken; the sealing of the one after
    /// it starts. A sealing that ends before its last file (stopped, or a file it could not seal) is an error, never a
    /// shorter list.
    func next() async throws(CofferRegistryError) -> (ModelStatement.File, AtomicOutputFile)? {
        let count = try await files().count
        let delivered = taken.withLock { $0.delivered }
        guard delivered < count else { return nil }
        switch await steps.receive() {
        case .sealed(let file, let temporary):
            taken.withLock { $0.delivered += 1 }
            mayStart.signal()
            // As fresh as a file just written to whoever sweeps temporaries and blobs by age (gc), however long it waited.
            temporary.touch()
            return (file, temporary)
        case .failed(let error): throw error
        case .inputs: throw .invalidInput("the push's sealing read its files twice")
        case nil:
            throw .invalidInput(
                stop.requested
                    ? "the push's sealing was stopped" : "the push's sealing ended after \(delivered) of its \(count) files"
            )
        }
    }

    /// Stops the sealing and waits for its thread to end; every temporary file not yet taken is then removed. Idempotent;
    /// the sealing serves no push afterwards.
    public func cancel() async {
        claimed.store(true, ordering: .relaxed)
        stop.request()
        mayStart.signal()
        while await steps.receive() != nil {}
    }

    /// Steps from the sealing's thread to its consumer, in order, until the thread's last; a consumer's task being
    /// cancelled does not end it (an `AsyncStream` ends for a cancelled task).
    final class Channel: Sendable {
        private struct State {
            var steps: [Step] = []
            var ended = false
            var waiting: [CheckedContinuation<Step?, Never>] = []
        }
        private let state = Mutex(State())

        func send(_ step: Step) {
            let waiter = state.withLock { state -> CheckedContinuation<Step?, Never>? in
                if !state.waiting.isEmpty { return state.waiting.removeFirst() }
                state.steps.append(step)
                return nil
            }
            waiter?.resume(returning: step)
        }

        func end() {
            let waiting = state.withLock { state in
                state.ended = true
                defer { state.waiting = [] }
                return state.waiting
            }
            for waiter in waiting { waiter.resume(returning: nil) }
        }

        /// The next step, or nil once the thread has ended and every step was received.
        func receive() async -> Step? {
            await withCheckedContinuation { continuation in
                let ready: Step?? = state.withLock { state in
                    if !state.steps.isEmpty { return .some(state.steps.removeFirst()) }
                    if state.ended { return .some(nil) }
                    state.waiting.append(continuation)
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }
    }

    /// The caller's progress callback, set when it has one.
    final class ProgressRelay: Sendable {
        let hook = Mutex<(@Sendable (Int) -> Void)?>(nil)
        func report(_ bytes: Int) { hook.withLock { $0 }?(bytes) }
    }

    /// Set once to stop the sealing: its reads fail from then on.
    final class Stop: Sendable {
        private let flag = Atomic<Bool>(false)
        var requested: Bool { flag.load(ordering: .relaxed) }
        func request() { flag.store(true, ordering: .relaxed) }
    }
}

/// A file's bytes that end with an error once the push they are sealed for has stopped.
final class StoppableSource: ByteSource {
    private let base: any ByteSource
    private let stop: PushSealing.Stop

    init(_ base: any ByteSource, stop: PushSealing.Stop) {
        self.base = base
        self.stop = stop
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        if stop.requested { throw .io(path: "push", reason: "stopped") }
        return try base.read(into: buffer)
    }

    var remainingHint: Int? { base.remainingHint }
}

extension Registry {
    /// Starts sealing `request`'s files for the registry at `home` before it is opened, so that the sealing runs while
    /// the caller opens it and unlocks the publisher's identity; give it to ``push(_:publisher:sealing:progress:)``, or
    /// ``PushSealing/cancel()`` it when giving up. Nil when that registry's blobs are not in its directory (the push then
    /// seals after opening, as the store's own temporaries need the store).
    public static func startSealing(_ request: PushRequest, home: String) -> PushSealing? {
        // Resolved once, here: a relative home named again at each temporary would follow a caller that changes directory
        // while the sealing runs into another folder.
        guard let root = Directories.resolved(home), let backends = try? Backends.of(home: root), backends.blobsInHome else { return nil }
        let store = DirectoryBlobStore(root: root)
        return PushSealing(request, home: root) { () throws(CofferRegistryError) in try store.makeTemporary() }
    }

    /// Seals one input file under `dataKey` into `output` (its own nonce prefix), with both digests.
    static func seal(
        _ input: InputFile,
        dataKey: borrowing SecretKey,
        chunkSize: Int,
        into output: AtomicOutputFile,
        stop: PushSealing.Stop? = nil,
        progress: @escaping (Int) -> Void
    ) throws(CofferRegistryError) -> ModelStatement.File {
        var source: any ByteSource
        do { source = try input.open() } catch { throw .crypto(error) }
        if let stop { source = StoppableSource(source, stop: stop) }
        let summary: SealedFile.Summary
        do {
            summary = try SealedFile.seal(
                from: source,
                to: output,
                dataKey: dataKey,
                stanzas: [],
                chunkSize: chunkSize,
                digests: true,
                progress: progress
            )
        } catch {
            throw .crypto(error)
        }
        return .init(
            path: input.path,
            size: summary.plaintextLength,
            plaintextSHA256: Digest.hex(summary.plaintextSHA256!),
            sealedSHA256: Digest.hex(summary.sealedSHA256!),
            sealedSize: summary.sealedLength
        )
    }
}
