import CofferCrypto
import Foundation
import PostgresNIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The epoch keys of a PostgreSQL store: what makes erasure hold although PostgreSQL keeps deleted rows (dead
/// tuples, its write-ahead log, base backups). docs/FORMAT.md, "Metadata stores".
///
/// Every value of a ``SealedColumn`` is stored sealed (``EpochSeal``) under the key of the current epoch, 32 random
/// bytes in `HOME/epochs/EPOCH.key` (mode 0600), outside PostgreSQL. Erasing moves to a new epoch: a new key file is
/// written and synced, every remaining sealed value is re-sealed under it in one transaction, and then the old key
/// file is overwritten, synced and unlinked. What PostgreSQL kept of a deleted row is sealed under a key that no
/// longer exists anywhere.
///
/// The database's `epoch_state` row names the current epoch. A writer seals inside its transaction after reading that
/// row `FOR SHARE` (``seal(_:column:rowKey:on:)``); a rotation updates it first (`FOR UPDATE`), so no value can be
/// sealed under an epoch whose key is about to be destroyed. Keys live in libsodium's guarded memory, one
/// ``SecretKey`` per epoch, and keys of epochs older than the current one are dropped as soon as they are seen to be.
///
/// ```swift
/// let keys = try await EpochKeys.open(home: home, database: database)
/// let stanza = try await database.transaction { connection in
///     let sealed = try await keys.seal(stanzaBytes, column: .wrappedKeyStanza, rowKey: "\(versionID)\n\(keyID)", on: connection)
///     try await connection.run("INSERT INTO wrapped_keys VALUES (\(versionID), \(keyID), \(ByteBuffer(bytes: sealed)))")
/// }
/// ```
final class EpochKeys: Sendable {
    /// `HOME/epochs`.
    let directory: String
    /// The sealed columns this store has (what a rotation re-seals).
    let columns: [SealedColumn]
    private let loaded = Mutex<[UInt32: KeyBox]>([:])

    /// Rows re-sealed per statement during a rotation.
    let batchSize: Int

    init(home: String, columns: [SealedColumn], batchSize: Int = 5000) {
        directory = "\(home)/epochs"
        self.columns = columns
        self.batchSize = batchSize
    }

    /// Opens the epoch keys of the registry at `home` over `database` (migrated), finishing whatever a crash
    /// interrupted: the current epoch's key is made if no value needs it yet; values still sealed under an older
    /// epoch whose key is there are re-sealed; a rotation marked due by an erasure is done; key files no value needs
    /// (older epochs, or a newer one a crashed rotation wrote but never committed) are destroyed.
    ///
    /// - Throws: ``CofferRegistryError/io(path:reason:)`` for the key files; ``CofferRegistryError/tampered(_:)`` when
    ///   values are sealed under an epoch whose key file is gone (they can never be opened again).
    static func open(
        home: String,
        database: PostgresPool,
        columns: [SealedColumn] = SealedColumn.all
    ) async throws(CofferRegistryError) -> EpochKeys {
        try await open(home: home, database: database, columns: columns, batchSize: 5000)
    }

    static func open(
        home: String,
        database: PostgresPool,
        columns: [SealedColumn],
        batchSize: Int
    ) async throws(CofferRegistryError) -> EpochKeys {
        let keys = EpochKeys(home: home, columns: columns, batchSize: batchSize)
        try keys.makeDirectory()
        if try await keys.isSettled(database) { return keys }
        try await keys.recover(database)
        return keys
    }

    // MARK: - Sealing and opening

    /// Seals `value` for the row `rowKey` of `column` under the current epoch, in the caller's transaction on
    /// `connection`: the value must be written in the same transaction.
    func seal(_ value: [UInt8], column: SealedColumn, rowKey: String, on connection: PostgresConnection) async throws -> [UInt8] {
        let epoch = try await Self.readEpoch(on: connection, lock: "FOR SHARE").epoch
        let box = try key(epoch, current: epoch)
        return EpochSeal.seal(value, epoch: epoch, key: box.key, column: column, rowKey: rowKey)
    }

    /// Opens a value read from `column` of the row `rowKey`.
    ///
    /// - Throws: ``CofferRegistryError/tampered(_:)`` when the value is not sealed, names an epoch whose key is gone,
    ///   or does not authenticate for this row and column.
    func open(_ sealed: [UInt8], column: SealedColumn, rowKey: String) throws(CofferRegistryError) -> [UInt8] {
        guard let epoch = EpochSeal.epoch(of: sealed) else { throw .tampered("\(column) of row \(describe(rowKey)) is not a sealed value") }
        let box: KeyBox
        do {
            box = try key(epoch, current: nil)
        } catch {
            throw .tampered("\(column) of row \(describe(rowKey)) is sealed under epoch \(epoch), whose key is destroyed")
        }
        guard let value = EpochSeal.open(sealed, key: box.key, column: column, rowKey: rowKey) else {
            throw .tampered("\(column) of row \(describe(rowKey)) does not open under epoch \(epoch)'s key")
        }
        return value
    }

    /// Marks a rotation due, in the transaction that deletes what must be erased: if the process dies before
    /// ``rotate(_:)`` finishes, the next ``open(home:database:columns:)`` rotates.
    static func markRotationDue(on connection: PostgresConnection) async throws {
        try await connection.rows("UPDATE epoch_state SET rotation_due = TRUE")
    }

    // MARK: - Rotation

    /// Moves to a new epoch: writes and syncs its key file, re-seals every value of ``columns`` under it and records
    /// it as current in one transaction, then destroys the older key files. Returns the new epoch.
    @discardableResult
    func rotate(_ database: PostgresPool) async throws(CofferRegistryError) -> UInt32 {
        let epoch = try await database.transaction { connection in
            let state = try await Self.readEpoch(on: connection, lock: "FOR UPDATE")
            return try await self.rotate(from: state.epoch, on: connection)
        }
        try destroyKeyFiles(where: { $0 < epoch })
        return epoch
    }

    /// Rotates when a rotation is due (an erasure marked it), else does nothing; returns the epoch then current.
    /// Erasures committed at once by several writers or replicas are put out of reach by one rotation.
    @discardableResult
    func rotateIfDue(_ database: PostgresPool) async throws(CofferRegistryError) -> UInt32 {
        let epoch = try await database.transaction { connection in
            let state = try await Self.readEpoch(on: connection, lock: "FOR UPDATE")
            guard state.rotationDue else { return state.epoch }
            return try await self.rotate(from: state.epoch, on: connection)
        }
        try destroyKeyFiles(where: { $0 < epoch })
        return epoch
    }

    /// The rotation's transaction body, with `epoch_state` locked: new key, re-seal, record.
    private func rotate(from epoch: UInt32, on connection: PostgresConnection) async throws -> UInt32 {
        guard epoch < UInt32.max else { throw CofferRegistryError.database("the epoch counter is exhausted") }
        let next = epoch + 1
        // A file for `next` can only be left by a rotation that crashed before its commit: no value uses it.
        try destroyKeyFiles(where: { $0 == next })
        dropKey(next)
        try writeKeyFile(next)
        let newKey = try key(next, current: nil)
        for column in columns {
            try await reseal(column, to: next, key: newKey, on: connection)
        }
        try await connection.rows("UPDATE epoch_state SET epoch = \(Int64(next)), rotation_due = FALSE")
        return next
    }

    /// Re-seals every value of `column` not already under `epoch`, in batches, rows locked as they are read (a
    /// concurrent update of another column of the row waits rather than keeping an old value).
    private func reseal(_ column: SealedColumn, to epoch: UInt32, key newKey: KeyBox, on connection: PostgresConnection) async throws {
        let table = try PostgresRecords.identifier(column.table)
        let name = try PostgresRecords.identifier(column.column)
        let rowKey = try column.rowKeyExpression()
        var after = ""
        while true {
            // Keyset pagination on the row key: each batch starts after the last one read.
            let select = PostgresQuery(
                unsafeSQL: """
                    SELECT \(rowKey) AS row_key, \(name) AS sealed FROM \(table)
                    WHERE \(name) IS NOT NULL AND \(rowKey) COLLATE "C" > $1
                    ORDER BY \(rowKey) COLLATE "C" LIMIT \(batchSize) FOR UPDATE
                    """,
                binds: try bindings(after)
            )
            var read = 0
            var keys: [String] = []
            var values: [ByteBuffer] = []
            for row in try await connection.rows(select) {
                let (key, buffer) = try row.decode((String, ByteBuffer).self)
                let sealed = Array(buffer.readableBytesView)
                read += 1
                after = key
                if EpochSeal.epoch(of: sealed) == epoch { continue }
                let value = try open(sealed, column: column, rowKey: key)
                keys.append(key)
                values.append(ByteBuffer(bytes: EpochSeal.seal(value, epoch: epoch, key: newKey.key, column: column, rowKey: key)))
            }
            if !keys.isEmpty {
                let update = PostgresQuery(
                    unsafeSQL: """
                        UPDATE \(table) AS t SET \(name) = v.sealed
                        FROM unnest($1::text[], $2::bytea[]) AS v(row_key, sealed)
                        WHERE \(try column.rowKeyExpression(alias: "t")) = v.row_key
                        """,
                    binds: try bindings(keys, values)
                )
                try await connection.rows(update)
            }
            if read < batchSize { break }
        }
    }

    private func bindings(_ text: String) throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(text)
        return bindings
    }

    private func bindings(_ keys: [String], _ values: [ByteBuffer]) throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(keys)
        bindings.append(values)
        return bindings
    }

    // MARK: - Recovery

    /// Whether ``recover(_:)`` would find nothing to do: no rotation due, no value sealed under another epoch than the
    /// current one (or not sealed), and the current epoch's key file the only one in `epochs/`. One statement, no lock:
    /// every command opens the keys, and the recovery's transaction locks `epoch_state` and commits (a WAL flush) even
    /// when it changes nothing. Anything else goes to ``recover(_:)``, which decides under the lock as before: a rotation
    /// running elsewhere writes the next epoch's key file before it re-seals, and a finished one leaves the old file until
    /// it destroys it, so both are seen here as a second file. A rotation that starts after this read is the same as one
    /// that starts after a recovery: values it re-seals are opened with the new key, read from its file when first met.
    func isSettled(_ database: PostgresPool) async throws(CofferRegistryError) -> Bool {
        var others: [String] = []
        for column in columns {
            let name = try PostgresRecords.identifier(column.column)
            // int8send is the epoch's 8 bytes big-endian; a sealed value holds its 4 low bytes at offset 4 (EpochSeal).
            others.append(
                """
                EXISTS (SELECT 1 FROM \(try PostgresRecords.identifier(column.table)) WHERE \(name) IS NOT NULL
                    AND substring(\(name) FROM 5 FOR 4) IS DISTINCT FROM substring(int8send(s.epoch) FROM 5 FOR 4))
                """
            )
        }
        let sql = "SELECT s.epoch, s.rotation_due, \(others.isEmpty ? "FALSE" : others.joined(separator: " OR ")) FROM epoch_state s"
        guard let row = try await database.query(PostgresQuery(unsafeSQL: sql)).first,
            let (epoch, due, unsettled) = try? row.decode((Int64, Bool, Bool).self),
            let current = UInt32(exactly: epoch), !due, !unsettled
        else { return false }
        return try keyFileEpochs() == [current]
    }

    /// What ``open(home:database:columns:)`` finishes; safe to run at any time, from any replica.
    func recover(_ database: PostgresPool) async throws(CofferRegistryError) {
        let current = try await database.transaction { connection in
            var state = try await Self.readEpoch(on: connection, lock: "FOR UPDATE")
            // Newer files than the current epoch were written by a rotation that never committed.
            try self.destroyKeyFiles(where: { $0 > state.epoch })
            if !self.keyFileExists(state.epoch) {
                // Nothing sealed may need it: a new registry, or a key file lost (then its values are lost too).
                for column in self.columns {
                    if let count = try await Self.countSealed(column, epoch: state.epoch, on: connection), count > 0 {
                        throw CofferRegistryError.tampered(
                            "\(count) values of \(column) are sealed under epoch \(state.epoch), whose key file \(self.path(state.epoch)) is missing"
                        )
                    }
                }
                try self.writeKeyFile(state.epoch)
            }
            if state.rotationDue {
                state.epoch = try await self.rotate(from: state.epoch, on: connection)
            } else {
                // Values under an older epoch (a rotation's file destruction interrupted, or a row restored from a
                // backup) are re-sealed while their key is still there.
                let key = try self.key(state.epoch, current: state.epoch)
                // Only columns that hold one are walked: every command and server opens the keys, and walking every
                // row (locking each) on each open would cost a scan of the registry per command.
                for column in self.columns {
                    guard try await Self.holdsOtherEpochs(column, epoch: state.epoch, on: connection) else { continue }
                    try await self.reseal(column, to: state.epoch, key: key, on: connection)
                }
            }
            return state.epoch
        }
        try destroyKeyFiles(where: { $0 < current })
        loaded.withLock { keys in keys = keys.filter { $0.key >= current } }
    }

    /// Whether any value of `column` is sealed under another epoch than `epoch` (or not sealed at all).
    private static func holdsOtherEpochs(_ column: SealedColumn, epoch: UInt32, on connection: PostgresConnection) async throws -> Bool {
        let name = try PostgresRecords.identifier(column.column)
        let query = PostgresQuery(
            unsafeSQL: """
                SELECT 1 FROM \(try PostgresRecords.identifier(column.table))
                WHERE \(name) IS NOT NULL AND substring(\(name) FROM 5 FOR 4) IS DISTINCT FROM $1 LIMIT 1
                """,
            binds: {
                var bindings = PostgresBindings()
                bindings.append(ByteBuffer(bytes: [UInt8(epoch >> 24), UInt8(epoch >> 16 & 0xff), UInt8(epoch >> 8 & 0xff), UInt8(epoch & 0xff)]))
                return bindings
            }()
        )
        return try await !connection.rows(query).isEmpty
    }

    private static func countSealed(_ column: SealedColumn, epoch: UInt32, on connection: PostgresConnection) async throws -> Int64? {
        let name = try PostgresRecords.identifier(column.column)
        let query = PostgresQuery(
            unsafeSQL: """
                SELECT count(*) FROM \(try PostgresRecords.identifier(column.table))
                WHERE \(name) IS NOT NULL AND substring(\(name) FROM 5 FOR 4) = $1
                """,
            binds: {
                var bindings = PostgresBindings()
                bindings.append(ByteBuffer(bytes: [UInt8(epoch >> 24), UInt8(epoch >> 16 & 0xff), UInt8(epoch >> 8 & 0xff), UInt8(epoch & 0xff)]))
                return bindings
            }()
        )
        var count: Int64? = nil
        for row in try await connection.rows(query) { count = try row.decode(Int64.self) }
        return count
    }

    struct State {
        var epoch: UInt32
        var rotationDue: Bool
    }

    static func readEpoch(on connection: PostgresConnection, lock: String) async throws -> State {
        var state: State? = nil
        let query = PostgresQuery(unsafeSQL: "SELECT epoch, rotation_due FROM epoch_state \(lock)")
        for row in try await connection.rows(query) {
            let (epoch, due) = try row.decode((Int64, Bool).self)
            guard let value = UInt32(exactly: epoch) else { throw CofferRegistryError.tampered("epoch_state names epoch \(epoch)") }
            state = State(epoch: value, rotationDue: due)
        }
        guard let state else { throw CofferRegistryError.tampered("the epoch_state row is missing") }
        return state
    }

    // MARK: - Key files

    func path(_ epoch: UInt32) -> String { "\(directory)/\(epoch).key" }

    func keyFileExists(_ epoch: UInt32) -> Bool { access(path(epoch), F_OK) == 0 }

    /// The epochs that have a key file, in order.
    func keyFileEpochs() throws(CofferRegistryError) -> [UInt32] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            throw .io(path: directory, reason: "cannot list the epoch keys")
        }
        return names.compactMap { name in name.hasSuffix(".key") ? UInt32(name.dropLast(4)) : nil }.sorted()
    }

    private func makeDirectory() throws(CofferRegistryError) {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw .io(path: directory, reason: String(cString: strerror(errno)))
        }
    }

    /// The key of `epoch`, from memory or its file. With `current`, keys of older epochs are dropped from memory.
    private func key(_ epoch: UInt32, current: UInt32?) throws(CofferRegistryError) -> KeyBox {
        if let current { loaded.withLock { keys in keys = keys.filter { $0.key >= current } } }
        if let box = loaded.withLock({ $0[epoch] }) { return box }
        let box = KeyBox(try readKeyFile(epoch))
        return loaded.withLock { keys in
            if let existing = keys[epoch] { return existing }
            keys[epoch] = box
            return box
        }
    }

    private func dropKey(_ epoch: UInt32) {
        _ = loaded.withLock { $0.removeValue(forKey: epoch) }
    }

    private func readKeyFile(_ epoch: UInt32) throws(CofferRegistryError) -> SecretKey {
        let path = self.path(epoch)
        let bytes = SecureBytes(count: SecretKey.byteCount)
        let outcome: String? = bytes.withUnsafeMutableBytes { out in
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return String(cString: strerror(errno)) }
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else { return "not a regular file" }
            guard status.st_size == SecretKey.byteCount else { return "not a 32-byte key" }
            var done = 0
            while done < out.count {
                let count = read(fd, out.baseAddress! + done, out.count - done)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return "cannot read the key" }
                done += count
            }
            return nil
        }
        if let outcome { throw .io(path: path, reason: outcome) }
        return SecretKey(bytes: bytes)
    }

    /// Writes a fresh random key for `epoch`: to a temporary file (0600, synced), renamed into place, the directory
    /// synced, so the key is on disk before any value is sealed under it and a crash never leaves half a key file.
    private func writeKeyFile(_ epoch: UInt32) throws(CofferRegistryError) {
        let key = SecureBytes.random(count: SecretKey.byteCount)
        do throws(CofferCryptoError) {
            let file = try AtomicOutputFile(destination: path(epoch), mode: 0o600)
            try key.withUnsafeBytes { bytes throws(CofferCryptoError) in try file.write(bytes) }
            try file.commit()
        } catch {
            throw .crypto(error)
        }
    }

    /// Destroys the key files of the epochs `matching`: each is overwritten with zeros and synced, unlinked, and the
    /// directory synced; the keys are dropped from memory too.
    private func destroyKeyFiles(where matching: (UInt32) -> Bool) throws(CofferRegistryError) {
        var destroyed = false
        for epoch in try keyFileEpochs() where matching(epoch) {
            let path = self.path(epoch)
            let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
            if fd >= 0 {
                let zeros = [UInt8](repeating: 0, count: SecretKey.byteCount)
                let wiped = pwrite(fd, zeros, zeros.count, 0) == zeros.count && fsync(fd) == 0
                close(fd)
                guard wiped else { throw .io(path: path, reason: "cannot overwrite the old epoch key") }
            }
            guard unlink(path) == 0 || errno == ENOENT else { throw .io(path: path, reason: String(cString: strerror(errno))) }
            dropKey(epoch)
            destroyed = true
        }
        if destroyed { try syncDirectory() }
    }

    private func syncDirectory() throws(CofferRegistryError) {
        let fd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: directory, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .io(path: directory, reason: String(cString: strerror(errno))) }
    }

    private func describe(_ rowKey: String) -> String { rowKey.replacingOccurrences(of: "\n", with: "/") }
}
