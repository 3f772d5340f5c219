/// Sealing and opening files in the sealed-file format v1 (docs/FORMAT.md).
///
/// ```swift
/// let summary = try SealedFile.seal(from: input, to: output, recipients: [alice])
/// try SealedFile.open(from: sealed, to: plain, identity: aliceIdentity)
/// ```
public enum SealedFile {
    /// Default plaintext bytes per chunk; see README "Performance" for the measurement behind it.
    public static let defaultChunkSize = 64 << 10

    /// What a seal or open produced.
    public struct Summary: Sendable {
        public var headerLength: Int
        public var plaintextLength: Int
        /// Length of the whole sealed file, header included.
        public var sealedLength: Int
        public var chunks: UInt64
        /// SHA-256 of the plaintext, when digests were requested.
        public var plaintextSHA256: [UInt8]?
        /// SHA-256 of the whole sealed file (header and chunks), when digests were requested.
        public var sealedSHA256: [UInt8]?
    }

    /// Seals `source` to `sink` under `dataKey`, with one stanza per entry of `stanzas`.
    ///
    /// - Parameters:
    ///   - stanzas: wrapped copies of `dataKey` for the header; empty for files whose keys are kept elsewhere (a registry).
    ///   - digests: compute the plaintext and sealed-file SHA-256 in the same pass (`sealedDigest: false` on open:
    ///     the plaintext one only).
    ///   - progress: called after each batch with the plaintext bytes read so far.
    public static func seal(
        from source: any ByteSource,
        to sink: any ByteSink,
        dataKey: borrowing SecretKey,
        stanzas: [WrappedKey],
        chunkSize: Int = defaultChunkSize,
        digests: Bool = false,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferCryptoError) -> Summary {
        let header = try SealedFileHeader(dataKey: dataKey, chunkSize: chunkSize, stanzas: stanzas)
        return try seal(from: source, to: sink, header: header, dataKey: dataKey, digests: digests, progress: progress)
    }

    /// Seals under a header already built for `dataKey` (tests use it to fix the nonce prefix).
    static func seal(
        from source: any ByteSource,
        to sink: any ByteSink,
        header: SealedFileHeader,
        dataKey: borrowing SecretKey,
        digests: Bool,
        progress: ((Int) -> Void)?
    ) throws(CofferCryptoError) -> Summary {
        let headerBytes = header.encoded
        try headerBytes.withBytes { buffer throws(CofferCryptoError) in try sink.write(buffer) }
        let payloadKey = SealedFileHeader.payloadKey(dataKey: dataKey, noncePrefix: header.noncePrefix)
        let result = try payloadKey.withUnsafeBytes { (key: UnsafeRawBufferPointer) throws(CofferCryptoError) -> ChunkPipeline.Result in
            let cipher = ChunkCipher(key: key.baseAddress!, noncePrefix: header.noncePrefix, associatedData: header.mac)
            var pipeline = ChunkPipeline(direction: .seal, cipher: cipher, chunkSize: header.chunkSize)
            if digests {
                pipeline.inputHasher = StreamingSHA256()
                pipeline.outputHasher = StreamingSHA256(seed: headerBytes)
            }
            pipeline.progress = progress
            return try pipeline.run(source: source, sink: sink)
        }
        return Summary(
            headerLength: headerBytes.count,
            plaintextLength: result.inputBytes,
            sealedLength: headerBytes.count + result.outputBytes,
            chunks: result.chunks,
            plaintextSHA256: result.inputSHA256,
            sealedSHA256: result.outputSHA256
        )
    }

    /// Seals to recipients' public identities with a fresh random data key (what `coffer seal` does).
    public static func seal(
        from source: any ByteSource,
        to sink: any ByteSink,
        recipients: [PublicIdentity],
        chunkSize: Int = defaultChunkSize,
        digests: Bool = false,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferCryptoError) -> Summary {
        let dataKey = SecretKey.random()
        return try seal(
            from: source,
            to: sink,
            dataKey: dataKey,
            stanzas: recipients.map { dataKey.wrap(for: $0) },
            chunkSize: chunkSize,
            digests: digests,
            progress: progress
        )
    }

    /// A header read from a stream and authenticated, with the data key recovered from it.
    public struct Unlocked: ~Copyable {
        public let header: SealedFileHeader
        /// Length of the header in bytes: where chunk 0 starts.
        public let headerLength: Int
        public let dataKey: SecretKey
    }

    /// Reads the header from `source` and recovers the data key from the stanza addressed to `identity`.
    public static func unlock(_ source: any ByteSource, identity: borrowing Identity) throws(CofferCryptoError) -> Unlocked {
        let (header, length) = try SealedFileHeader.read(from: source)
        let hint = identity.publicIdentity.recipientHint
        for stanza in header.stanzas {
            guard case .x25519(let stanzaHint, _) = stanza, stanzaHint == hint else { continue }
            let key = try stanza.unwrap(with: identity)
            try header.authenticate(dataKey: key)
            return Unlocked(header: header, headerLength: length, dataKey: key)
        }
        throw .notARecipient
    }

    /// Opens a whole sealed stream: every chunk is authenticated before its plaintext reaches `sink`.
    ///
    /// A stream cut short is reported only at its end: write to an ``AtomicOutputFile`` so that
    /// nothing is kept unless this returns.
    public static func open(
        from source: any ByteSource,
        to sink: any ByteSink,
        identity: borrowing Identity,
        digests: Bool = false,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferCryptoError) -> Summary {
        let unlocked = try unlock(source, identity: identity)
        return try openPayload(
            from: source,
            to: sink,
            header: unlocked.header,
            headerLength: unlocked.headerLength,
            dataKey: unlocked.dataKey,
            digests: digests,
            progress: progress
        )
    }

    /// Opens the chunks that follow a header already read from `source`, with the data key known by other means.
    public static func openPayload(
        from source: any ByteSource,
        to sink: any ByteSink,
        header: SealedFileHeader,
        headerLength: Int,
        dataKey: borrowing SecretKey,
        digests: Bool = false,
        sealedDigest: Bool = true,
        progress: ((Int) -> Void)? = nil
    ) throws(CofferCryptoError) -> Summary {
        try header.authenticate(dataKey: dataKey)
        let payloadKey = SealedFileHeader.payloadKey(dataKey: dataKey, noncePrefix: header.noncePrefix)
        let result = try payloadKey.withUnsafeBytes { (key: UnsafeRawBufferPointer) throws(CofferCryptoError) -> ChunkPipeline.Result in
            let cipher = ChunkCipher(key: key.baseAddress!, noncePrefix: header.noncePrefix, associatedData: header.mac)
            var pipeline = ChunkPipeline(direction: .open, cipher: cipher, chunkSize: header.chunkSize)
            if digests {
                if sealedDigest { pipeline.inputHasher = StreamingSHA256(seed: header.encoded) }
                pipeline.outputHasher = StreamingSHA256()
            }
            pipeline.progress = progress
            return try pipeline.run(source: source, sink: sink)
        }
        return Summary(
            headerLength: headerLength,
            plaintextLength: result.outputBytes,
            sealedLength: headerLength + result.inputBytes,
            chunks: result.chunks,
            plaintextSHA256: result.outputSHA256,
            sealedSHA256: result.inputSHA256
        )
    }
}
