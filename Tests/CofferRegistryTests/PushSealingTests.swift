import CofferCrypto
import Dispatch
import Foundation
import Synchronization
import Testing

@testable import CofferRegistry

/// A push's sealing, which runs beside the rest of the push (``PushSealing``): taken whole by one push, or stopped with
/// nothing left behind, whatever happens to the task that consumes it.
struct PushSealingTests {
    /// A sealing for `request` as `coffer push` starts it, before opening the registry; for blobs in an OCI registry (the
    /// second pass of tools/test), where only the push starts one, as `Registry.push` makes its own.
    private func startSealing(_ request: PushRequest, _ f: RegistryFixture) throws -> PushSealing {
        let early = Registry.startSealing(request, home: f.home)
        #expect((early == nil) == RegistryFixture.blobsInOCI, "a registry whose blobs are in its directory is sealed for early")
        return early ?? PushSealing(request) { [blobs = f.registry.blobs] () throws(CofferRegistryError) in try blobs.makeTemporary() }
    }

    /// A sealing started before the registry opens (as `coffer push` starts it) is taken by the push of its request, file
    /// after file; one given up on, or given to another request's push, stops and leaves no temporary file behind.
    @Test func aSealingStartedBeforeTheRegistryOpensIsPushedOrLeavesNothing() async throws {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        #expect(Registry.startSealing(PushRequest(model: "m", paths: [f.path("nothing")]), home: f.path("not-a-registry")) == nil)
        let large = bytes(20 << 20)  // several batches, sealed on the pipeline's threads
        let dir = try f.makeModel("model", ["a.json": Array("{}".utf8), "b.bin": large, "c.txt": []])
        let request = PushRequest(model: "m", paths: [dir])
        let temporaries = { try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp") }

        let pushed = try await f.registry.push(request, publisher: alice, sealing: try startSealing(request, f))
        #expect(pushed.files == 3 && pushed.bytes == large.count + 2)
        _ = try await f.registry.pull(try ModelReference(parsing: "m:1"), identity: alice, into: f.path("out"))
        #expect(try f.read("out/b.bin") == large && f.read("out/a.json") == Array("{}".utf8))
        #expect(try temporaries().isEmpty)

        let blobsBefore = f.blobDigests().count
        let other = try startSealing(PushRequest(model: "m", paths: [dir + "/b.bin"]), f)
        await #expect(throws: CofferRegistryError.invalidInput("the sealing given to push was started for another request")) {
            _ = try await f.registry.push(request, publisher: alice, sealing: other)
        }
        await #expect(throws: CofferRegistryError.versionExists("m:1")) {
            _ = try await f.registry.push(PushRequest(model: "m", version: "1", paths: [dir]), publisher: alice)
        }
        let abandoned = try startSealing(request, f)
        await abandoned.cancel()
        await abandoned.cancel()
        #expect(try temporaries().isEmpty)
        #expect(f.blobDigests().count == blobsBefore)
    }

    /// A sealing started for one registry's directory, given to another registry's push (a library caller's mistake:
    /// `coffer push` opens the registry it sealed for), is refused before anything is stored in either, and its
    /// temporaries are removed from the first; the same registry named another way is the same registry.
    @Test func aSealingStartedForOneRegistryIsRefusedByAnother() async throws {
        let f = try await RegistryFixture()
        let g = try await RegistryFixture()
        guard !RegistryFixture.blobsInOCI else { return }  // only a registry whose blobs are in its directory seals early
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        try await g.registry.trust(alice.publicIdentity, by: try g.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(3 << 20)])
        let request = PushRequest(model: "m", paths: [dir])
        let elsewhere = try #require(Registry.startSealing(request, home: f.home))
        // The sealing names its home with every link resolved (the temporary folder may be reached through one).
        let home = try #require(Directories.resolved(f.home))
        let refusal = "the sealing given to push was started for the registry at \(home), not the one at \(g.home)"
        await #expect(throws: CofferRegistryError.invalidInput(refusal)) {
            _ = try await g.registry.push(request, publisher: alice, sealing: elsewhere)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp").isEmpty)
        #expect(f.blobDigests().isEmpty && g.blobDigests().isEmpty)
        let spelled = try #require(Registry.startSealing(request, home: f.home + "/./"))
        #expect(spelled.home == home, "the home is resolved once, when the sealing starts")
        #expect(try await f.registry.push(request, publisher: alice, sealing: spelled).files == 1)
        // A symbolic link to the home is the same registry; one in g's folder to f's home is still f (helper-81).
        let link = g.path("alias")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: f.home)
        let linked = try #require(Registry.startSealing(request, home: link))
        #expect(linked.home == home)
        #expect(try await f.registry.push(request, publisher: alice, sealing: linked).files == 1)
        let misnamed = try #require(Registry.startSealing(request, home: link))
        await #expect(throws: CofferRegistryError.self) { _ = try await g.registry.push(request, publisher: alice, sealing: misnamed) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp").isEmpty && g.blobDigests().isEmpty)
    }

    /// A push whose task is cancelled while the sealing runs (a caller's timeout, a server shutting down) commits every
    /// file or none: the sealing's steps do not end with the task, as an `AsyncStream`'s did (helper-80 found a version
    /// of one file of three committed on PostgreSQL). Nothing is left in tmp/ once the push returns.
    @Test(arguments: MetadataBackend.available) func aPushWhoseTaskIsCancelledCommitsAllItsFilesOrNone(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(8 << 20), "b.bin": bytes(8 << 20, seed: 2), "c.bin": bytes(8 << 20, seed: 3)])
        let registry = f.registry
        let handle = Mutex<Task<PushResult, any Error>?>(nil)
        let gate = DispatchSemaphore(value: 0)
        let task = Task { () async throws -> PushResult in
            gate.wait()
            return try await registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice) { bytes in
                if bytes > (10 << 20) { handle.withLock { $0?.cancel() } }
            }
        }
        handle.withLock { $0 = task }
        gate.signal()
        switch await task.result {
        case .success(let pushed): #expect(pushed.files == 3, "a cancelled push committed \(pushed.files) of its 3 files")
        case .failure: #expect(f.blobDigests().isEmpty, "a failed push left blobs")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp").isEmpty)
    }

    /// `cancel()` from a cancelled task still waits for the sealing's thread: its temporary is gone when it returns.
    @Test func cancelWaitsForTheSealingEvenInACancelledTask() async throws {
        let f = try await RegistryFixture()
        let dir = try f.makeModel("model", ["a.bin": bytes(64 << 20)])
        let sealing = try startSealing(PushRequest(model: "m", paths: [dir]), f)
        try await Task.sleep(for: .milliseconds(30))
        await Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await sealing.cancel()
        }.value
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp").isEmpty)
    }

    /// A sealing serves one push: given again after a push that failed with it, or after a cancel, it is refused, where it
    /// had committed a version with no file.
    @Test func aSealingServesOnePush() async throws {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["a.bin": bytes(1 << 20)])
        _ = try await f.registry.push(PushRequest(model: "m", version: "1", paths: [dir]), publisher: alice)
        let taken = PushRequest(model: "m", version: "1", paths: [dir])
        let sealing = try startSealing(taken, f)
        await #expect(throws: CofferRegistryError.versionExists("m:1")) { _ = try await f.registry.push(taken, publisher: alice, sealing: sealing) }
        let again = CofferRegistryError.invalidInput("the sealing given to push served a push or was cancelled already")
        await #expect(throws: again) { _ = try await f.registry.push(taken, publisher: alice, sealing: sealing) }
        let cancelled = try startSealing(taken, f)
        await cancelled.cancel()
        await #expect(throws: again) { _ = try await f.registry.push(taken, publisher: alice, sealing: cancelled) }
        #expect(f.blobDigests().count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp").isEmpty)
    }
}
