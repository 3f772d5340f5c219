import CofferCrypto
import Foundation
import NIOCore
import Testing

@testable import CofferRegistry

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A whole registry whose blobs live in an OCI registry (docker-registry 2.8 started by the tests): the registry core
/// over ``OCIBlobStore`` through `backends.json`, not the store alone.
@Suite struct OCIRegistryTests {
    /// A registry on the plain test registry, in a repository of its own.
    func registry() async throws -> (RegistryFixture, OCITestRegistry.Instance, String) {
        let instance = try OCITestRegistry.plain.get()
        let repository = "reg/\(UUID().uuidString.lowercased().prefix(13))"
        let f = try await RegistryFixture(backends: Backends(blobs: instance.url(repository)))
        return (f, instance, repository)
    }

    /// A trusted publisher of `f`.
    func publisher(_ f: RegistryFixture) async throws -> UnlockedIdentity {
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        return alice
    }

    /// Where docker-registry's filesystem driver keeps a blob's bytes.
    func blobFile(_ digest: String, in instance: OCITestRegistry.Instance) -> String {
        "\(instance.storage)/docker/registry/v2/blobs/sha256/\(digest.prefix(2))/\(digest)/data"
    }

    @Test("push, pull and verify with the blobs in an OCI registry; nothing sealed stays in the home; a reopened registry reads them")
    func pushPullVerify() async throws {
        let (f, instance, repository) = try await registry()
        let alice = try await publisher(f)
        let dir = try f.makeModel("model", ["model.safetensors": bytes(3_000_000), "config.json": Array(#"{"a":1}"#.utf8)])
        let pushed = try await f.registry.push(PushRequest(model: "team/fraud", paths: [dir]), publisher: alice)
        #expect(pushed.version == "1")
        #expect(!FileManager.default.fileExists(atPath: f.home + "/blobs"), "no blob directory for an OCI registry")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: f.home + "/tmp")) ?? []).isEmpty, "no sealed file left behind")

        let stored = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "team/fraud:1")).id)
        for file in stored.files { #expect(FileManager.default.fileExists(atPath: blobFile(file.sealedSHA256, in: instance))) }

        let reopened = try await f.reopen()
        let pulled = try await reopened.pull(try ModelReference(parsing: "team/fraud"), identity: alice, into: f.path("out"))
        #expect(pulled.files == ["config.json", "model.safetensors"])
        #expect(try f.read("out/model.safetensors") == bytes(3_000_000))
        let deep = try await reopened.verify(try ModelReference(parsing: "team/fraud:1"), readingDataWith: alice)
        #expect(deep.readData)
        let fsck = try await reopened.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")

        // The version is a ModelPack manifest that the store reads back as published.
        let store = try OCIBlobStore(url: instance.url(repository), temporaryDirectory: f.path("oci-tmp"), environment: instance.environment)
        let described = try await store.describeVersion(OCIVersionLayout.tag(model: "team/fraud", version: "1"))
        #expect(described.version.digest == pushed.digest)
        #expect(Set(described.version.files.map(\.sealedSHA256)) == Set(stored.files.map(\.sealedSHA256)))
    }

    @Test("fsck checks each version's manifest: a missing one is unpublished (gc writes it again), another in its place a problem")
    func fsckChecksTheManifests() async throws {
        let (f, instance, repository) = try await registry()
        let alice = try await publisher(f)
        for version in 1...2 {
            let dir = try f.makeModel("model\(version)", ["w.bin": bytes(1000 + version)])
            _ = try await f.registry.push(PushRequest(model: "team/fraud", paths: [dir]), publisher: alice)
        }
        var report = try await f.registry.fsck()
        #expect(report.isClean && report.unpublished.isEmpty, "\(report.problems)")

        // A push stopped between its commit and its manifest, as a killed server leaves it.
        let store = try OCIBlobStore(url: instance.url(repository), temporaryDirectory: f.path("oci-tmp"), environment: instance.environment)
        let first = try #require(
            try await store.client.getManifest(OCIVersionLayout.tag(model: "team/fraud", version: "1"), accept: [OCIVersionLayout.manifestMediaType])
        )
        var request = URLRequest(url: URL(string: "http://\(instance.address)/v2/\(repository)/manifests/sha256:\(first.digest)")!)
        request.httpMethod = "DELETE"
        let (_, deleted) = try await URLSession.shared.data(for: request)
        #expect((deleted as? HTTPURLResponse)?.statusCode == 202)
        report = try await f.registry.fsck()
        #expect(report.isClean && report.unpublished == ["team/fraud:1"], "\(report.problems)")
        #expect(try await f.registry.gc(grace: 0).republished == 1)
        report = try await f.registry.fsck()
        #expect(report.isClean && report.unpublished.isEmpty, "\(report.problems)")

        // Another manifest under a version's tag is not that version: a problem, which gc does not paper over.
        _ = try await store.client.putManifest(
            first.bytes,
            mediaType: first.mediaType,
            reference: OCIVersionLayout.tag(model: "team/fraud", version: "2")
        )
        report = try await f.registry.fsck()
        #expect(
            report.problems.contains { $0.hasPrefix("team/fraud:2: its OCI manifest: tag ") && $0.contains("not the one its statement makes") },
            "\(report.problems)"
        )
        #expect(try await f.registry.gc(grace: 0).republished == 0)
    }

    @Test("a blob changed inside the OCI registry's storage is refused at pull and reported by fsck; nothing is written")
    func tamperedBlobInTheOCIRegistry() async throws {
        let (f, instance, _) = try await registry()
        let alice = try await publisher(f)
        let dir = try f.makeModel("model", ["w.bin": bytes(200_000)])
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:1")).id)
        let path = blobFile(stored.files[0].sealedSHA256, in: instance)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))

        await expectRefusal("w.bin") { _ = try await f.registry.pull(try ModelReference(parsing: "m:1"), identity: alice, into: f.path("out")) }
        #expect(!FileManager.default.fileExists(atPath: f.path("out/w.bin")))
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.contains { $0.contains("m:1") && $0.contains("w.bin") }, "\(fsck.problems)")
    }

    @Test("erasing a version deletes its blobs from the OCI registry; gc finds nothing left to reclaim")
    func erasureReachesTheOCIRegistry() async throws {
        let (f, instance, repository) = try await registry()
        let alice = try await publisher(f)
        let admin = try f.registrySigner
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("a", ["w.bin": bytes(100_000, seed: 1)])]), publisher: alice)
        _ = try await f.registry.push(PushRequest(model: "m", paths: [try f.makeModel("b", ["w.bin": bytes(100_000, seed: 2)])]), publisher: alice)
        let first = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:1")).id)
        let second = try await f.registry.loadVersion(try await f.registry.resolve(try ModelReference(parsing: "m:2")).id)
        _ = try await f.registry.erase(model: "m", version: "1", by: admin)
        // Deleting a blob through the distribution API unlinks it from the repository (its bytes go at the OCI registry's own gc).
        let store = try OCIBlobStore(url: instance.url(repository), temporaryDirectory: f.path("oci-tmp"), environment: instance.environment)
        #expect(try await store.size(of: first.files[0].sealedSHA256) == nil)
        #expect(try await store.size(of: second.files[0].sealedSHA256) == second.files[0].sealedSize)
        let gc = try await f.registry.gc(grace: 0)
        #expect(gc.removedBlobs == 0)
        _ = try await f.registry.pull(try ModelReference(parsing: "m:2"), identity: alice, into: f.path("out"))
        #expect(try f.read("out/w.bin") == bytes(100_000, seed: 2))
    }
    @Test("an upload a replica advanced in the OCI registry but died before recording starts again at byte 0, and finishes whole")
    func uploadLostByADeadReplicaStartsAgain() async throws {
        let (f, instance, repository) = try await registry()
        let alice = try await publisher(f)
        let owner = Principal(name: "alice", keyID: alice.publicIdentity.keyID)
        let bytes = bytes(622_496, seed: 4)
        func body() -> BlobStream {
            BlobStream(
                length: bytes.count,
                AsyncThrowingStream {
                    $0.yield(ByteBuffer(bytes: bytes))
                    $0.finish()
                }
            )
        }
        let upload = try await f.registry.startUpload(by: owner)
        // The dead replica: its PATCH reached the OCI registry, its commit of the new Location never happened.
        let record = try await f.registry.uploadRecord(upload.id, of: owner)
        let replica = try OCIBlobStore(url: instance.url(repository), temporaryDirectory: f.path("oci-tmp"), environment: instance.environment)
        _ = try await replica.append(to: BlobUpload(id: upload.id, location: record.location, offset: 0), body())

        #expect(try await f.registry.upload(upload.id, of: owner).offset == 0)
        await #expect {
            _ = try await f.registry.appendUpload(upload.id, at: 0, body(), limit: 1 << 30, by: owner)
        } throws: { error in
            guard case .uploadRestarted = error as? CofferRegistryError else { return false }
            return "\(error)".hasSuffix("it is gone or stands at another offset: the upload starts again at byte 0")
        }
        #expect(try await f.registry.upload(upload.id, of: owner).offset == 0)
        #expect(try await f.registry.appendUpload(upload.id, at: 0, body(), limit: 1 << 30, by: owner).offset == bytes.count)
        let digest = Digest.hex(Digest.sha256(bytes))
        try await f.registry.finishUpload(upload.id, digest: digest, by: owner)
        #expect(try await replica.read(digest, range: nil).collect() == bytes)
    }
}
