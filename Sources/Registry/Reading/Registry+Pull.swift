public import CofferCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a pull wrote.
public struct PullResult: Sendable, Equatable {
    public var model: String
    public var version: String
    public var digest: String
    public var signer: String
    public var files: [String]
    public var bytes: Int
}

extension Registry {
    /// The file name `model_signing verify` expects by convention.
    public static let modelSignatureName = "model.sig"

    /// Verifies and decrypts a version into `directory`.
    ///
    /// The signature is checked against the trusted signers and every database row against the signed
    /// statement before any key is unwrapped; each file is decrypted into a staging folder inside
    /// `directory`, each chunk authenticated and its plaintext digest checked in the same pass, and only when every file
    /// passed are they renamed into place. Any failure leaves no file of the version in `directory`.
    public func pull(
        _ reference: ModelReference,
        identity: UnlockedIdentity,
        into directory: String,
        progress: (@Sendable (Int) -> Void)? = nil
    )
        async throws(CofferRegistryError) -> PullResult
    {
        // One read of the ledger for the checks, and one for the version (`pullVersion`).
        let state = try await ledgerState()
        let actor = try await principal(for: identity.identity, in: state)
        try await require(.reader, on: reference.name, by: actor, action: "pull", target: reference.description, in: state)
        try await require(.decrypt, on: reference.name, by: actor, action: "pull", target: reference.description, in: state)
        do {
            let result = try await pullVersion(reference, identity: identity, into: directory, progress: progress)
            try await audit(
                principal: actor.name,
                action: "pull",
                target: "\(result.model):\(result.version)",
                outcome: .ok,
                reason: "\(result.files.count) files"
            )
            return result
        } catch {
            try? await audit(principal: actor.name, action: "pull", target: reference.description, outcome: .failed, reason: error.description)
            throw error
        }
    }

    private func pullVersion(
        _ reference: ModelReference,
        identity: UnlockedIdentity,
        into directory: String,
        progress: (@Sendable (Int) -> Void)?
    )
        async throws(CofferRegistryError) -> PullResult
    {
        // Read again just before the version's rows: a version or a rekey committed since the checks must be in the state
        // its rows are judged on, or it would read as tampering (helper-61).
        let state = try await ledgerState()
        let stored = try await loadVersion(try await resolveForUse(reference, in: state).id, in: state)
        try stored.ensureNotErased()
        let (statement, signer) = try await authenticate(stored, in: state)
        let dataKey = try await unwrapDataKey(stored, identity: identity)
        var sources: [String: Unchecked<any ByteSource>] = [:]
        for file in statement.files { sources[file.path] = try await blobSource(file.sealedSHA256, what: file.path) }
        let opened = sources
        let done = try await Offload.run { () throws(CofferRegistryError) -> Int in
            try Self.place(statement.files, into: directory, modelSignature: stored.modelSignature) {
                (file: ModelStatement.File, output: AtomicOutputFile, before: Int) throws(CofferRegistryError) in
                try Self.openBlob(
                    from: opened[file.path]!.value,
                    file,
                    dataKey: dataKey.key,
                    into: output,
                    checkingBlobDigest: false,
                    progress: progress.map { report in { report(before + $0) } }
                )
            }
        }
        return PullResult(
            model: stored.model,
            version: stored.version,
            digest: stored.digest,
            signer: signer.name,
            files: statement.files.map(\.path),
            bytes: done
        )
    }
}

extension Registry {
    /// Writes `files` into `directory` all or nothing: each is produced by `write` (which decrypts and verifies it)
    /// into a staging folder, and only when every one passed do they take their places, with the model-signing bundle
    /// beside them as `model.sig`. Returns the plaintext bytes written.
    ///
    /// Into a directory that does not exist yet, the staging folder is made beside it and becomes it by one rename: a
    /// crash leaves the whole version there or none of it. Into an existing directory the files are renamed one by
    /// one: a failure or an interrupt (``TemporaryFiles``) removes those already placed, but a crash in the middle of
    /// the renames can leave some. No rename replaces what appeared at its target meanwhile
    /// (``CofferRegistryError/destinationExists(_:)``).
    static func place(
        _ files: [ModelStatement.File],
        into directory: String,
        modelSignature: Data?,
        write: (ModelStatement.File, AtomicOutputFile, Int) throws(CofferRegistryError) -> Void
    ) throws(CofferRegistryError) -> Int {
        let isNew = access(directory, F_OK) != 0
        let parent = isNew ? Directories.parent(of: directory) : directory
        if isNew {
            try Directories.makeDurably(parent)
        } else {
            try Directories.make(directory)  // refuses a file of that name
            for file in files where access("\(directory)/\(file.path)", F_OK) == 0 {
                throw .destinationExists("\(directory)/\(file.path)")
            }
        }
        // Decrypted files wait there: a failure or an interrupt (Ctrl-C) removes them with it, and if this process is
        // killed, the next Coffer process that makes a temporary file does (``Leftovers``).
        let stagingFolder: TemporaryFolder
        do { stagingFolder = try TemporaryFolder(in: parent, prefix: ".coffer-pull-") } catch { throw .crypto(error) }
        let staging = stagingFolder.path

        var done = 0
        var staged = files.map(\.path)
        for file in files {
            let target = "\(staging)/\(file.path)"
            try Directories.make(Directories.parent(of: file.path), inside: staging)
            let output: AtomicOutputFile
            // Durable: a file that appears in `directory` is on the disk whole, whatever happens to the machine after.
            do {
                output = try AtomicOutputFile(destination: target, mode: 0o600, durable: true, insideRegisteredFolder: true)
            } catch {
                throw .crypto(error)
            }
            try write(file, output, done)
            // Entries of the staging folder are synced below if it becomes `directory`, else never: the files leave it.
            do { try output.commit(syncingDirectory: false) } catch { throw .crypto(error) }
            done += file.size
        }
        // The OpenSSF model-signing bundle beside the files, unless the model has a file or folder of that name itself
        // (it replaces the bundle of an earlier pull into the same directory).
        let signatureTaken = files.contains { $0.path == modelSignatureName || $0.path.hasPrefix(modelSignatureName + "/") }
        if let bundle = modelSignature, !signatureTaken {
            do throws(CofferCryptoError) {
                try FileBytes.write(Array(bundle), to: "\(staging)/\(modelSignatureName)", mode: 0o644, syncingDirectory: false)
            } catch {
                throw .crypto(error)
            }
            staged.append(modelSignatureName)
        }
        // Everything verified: the files take their places.
        if isNew {
            var folders: Set<String> = [staging]
            for path in staged {
                var folder = Directories.parent(of: "\(staging)/\(path)")
                while folder != staging, folders.insert(folder).inserted { folder = Directories.parent(of: folder) }
            }
            for folder in folders { Directories.sync(folder) }
            // Not over a folder of that name made since the check above (rename(2) replaces an empty one).
            switch FileBytes.renameWithoutReplacing(staging, to: directory) {
            case 0: stagingFolder.renamedAway()
            case EEXIST: throw .destinationExists(directory)
            case let code: throw .io(path: directory, reason: String(cString: strerror(code)))
            }
            Directories.sync(parent)
            return done
        }
        // A file placed is removed again if a later one cannot be placed, or the process is interrupted: each is
        // registered before its rename. The renames hold interrupts off, so that the handler never finds a registered
        // name whose rename failed (a file the user made there meanwhile, which it would remove); a signal during them
        // takes effect after them, and removes them all. None replaces a file that appeared since the check above,
        // except the bundle, which replaces an earlier pull's and is not removed on an interrupt.
        var placed: [String] = []
        defer { for path in placed { TemporaryFiles.unregister(path) } }
        try TemporaryFiles.holdingInterrupts { () throws(CofferRegistryError) in try renameInto(directory, staged, from: staging, placed: &placed) }
        // The renames themselves reach the disk with their directories: one sync per folder.
        for folder in Set(placed.map(Directories.parent(of:))) { Directories.sync(folder) }
        return done
    }

    /// Renames each of `staged` from `staging` into `directory`, recording in `placed` the files placed (the model's,
    /// registered with the interrupt handler); on a failure, removes those placed and throws.
    private static func renameInto(_ directory: String, _ staged: [String], from staging: String, placed: inout [String]) throws(CofferRegistryError)
    {
        for path in staged {
            let destination = "\(directory)/\(path)"
            do throws(CofferRegistryError) {
                try Directories.makeDurably(Directories.parent(of: destination))
                if path == modelSignatureName {
                    guard rename("\(staging)/\(path)", destination) == 0 else {
                        throw .io(path: destination, reason: String(cString: strerror(errno)))
                    }
                    continue
                }
                guard TemporaryFiles.register(destination) else {
                    throw .io(path: directory, reason: "more files than an interrupt could remove; pull into a new directory")
                }
                switch FileBytes.renameWithoutReplacing("\(staging)/\(path)", to: destination) {
                case 0: placed.append(destination)
                case let code:
                    TemporaryFiles.unregister(destination)
                    throw code == EEXIST ? .destinationExists(destination) : .io(path: destination, reason: String(cString: strerror(code)))
                }
            } catch {
                for path in placed { unlink(path) }
                throw error
            }
        }
    }
}
