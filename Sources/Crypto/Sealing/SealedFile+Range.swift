// MARK: - Random access

extension SealedFile {
    /// The chunk geometry of a sealed file, computed from its length alone (docs/FORMAT.md, "Random access").
    struct Geometry {
        let chunkSize: Int
        let headerLength: Int
        let chunkCount: Int
        let plaintextLength: Int
        var stride: Int { chunkSize + ChunkCipher.tagLength }

        init(fileLength: Int, headerLength: Int, chunkSize: Int) throws(CofferCryptoError) {
            let payload = fileLength - headerLength
            let stride = chunkSize + ChunkCipher.tagLength
            guard payload >= ChunkCipher.tagLength else { throw .truncated("no complete chunk after the header") }
            let count = (payload + stride - 1) / stride
            let lastLength = payload - (count - 1) * stride
            guard lastLength >= ChunkCipher.tagLength else { throw .truncated("chunk \(count - 1) is shorter than its tag") }
            self.chunkSize = chunkSize
            self.headerLength = headerLength
            self.chunkCount = count
            self.plaintextLength = (count - 1) * chunkSize + lastLength - ChunkCipher.tagLength
        }

        func offset(ofChunk index: Int) -> Int { headerLength + index * stride }
    }

    /// Decrypts plaintext bytes `start ..< end` of a sealed regular file, touching only the chunks that cover them.
    ///
    /// The final chunk is authenticated too, so the plaintext length the bounds are checked against is
    /// authentic: a file cut short or extended fails even when the range lies elsewhere.
    ///
    /// - Parameters:
    ///   - end: exclusive end; `nil` for the end of the plaintext.
    public static func openRange(
        from start: Int,
        to end: Int?,
        of file: FileDescriptorStream,
        to sink: any ByteSink,
        identity: borrowing Identity
    ) throws(CofferCryptoError) -> Summary {
        guard let fileLength = file.regularFileSize else { throw .rangeNeedsSeekableInput }
        let unlocked = try unlock(FileRegionSource(file, offset: 0, length: fileLength), identity: identity)
        let header = unlocked.header
        let geometry = try Geometry(fileLength: fileLength, headerLength: unlocked.headerLength, chunkSize: header.chunkSize)
        let payloadKey = SealedFileHeader.payloadKey(dataKey: unlocked.dataKey, noncePrefix: header.noncePrefix)
        return try payloadKey.withUnsafeBytes { (key: UnsafeRawBufferPointer) throws(CofferCryptoError) -> Summary in
            let cipher = ChunkCipher(key: key.baseAddress!, noncePrefix: header.noncePrefix, associatedData: header.mac)
            try verifyFinalChunk(of: file, geometry: geometry, cipher: cipher)
            let stop = end ?? geometry.plaintextLength
            guard start >= 0, start <= stop, stop <= geometry.plaintextLength else {
                throw .rangeOutOfBounds(start: start, end: stop, length: geometry.plaintextLength)
            }
            let range = start..<stop
            var summary = Summary(
                headerLength: geometry.headerLength,
                plaintextLength: 0,
                sealedLength: fileLength,
                chunks: 0,
                plaintextSHA256: nil,
                sealedSHA256: nil
            )
            guard !range.isEmpty else { return summary }
            let first = range.lowerBound / geometry.chunkSize
            let last = (range.upperBound - 1) / geometry.chunkSize
            let regionStart = geometry.offset(ofChunk: first)
            let regionEnd = last == geometry.chunkCount - 1 ? fileLength : geometry.offset(ofChunk: last + 1)
            var pipeline = ChunkPipeline(direction: .open, cipher: cipher, chunkSize: geometry.chunkSize)
            pipeline.firstIndex = UInt64(first)
            pipeline.sourceEndIsStreamEnd = last == geometry.chunkCount - 1
            let trimmed = TrimmingSink(sink, skip: range.lowerBound - first * geometry.chunkSize, limit: range.count)
            let result = try pipeline.run(source: FileRegionSource(file, offset: regionStart, length: regionEnd - regionStart), sink: trimmed)
            summary.plaintextLength = range.count
            summary.chunks = result.chunks
            return summary
        }
    }

    private static func verifyFinalChunk(of file: FileDescriptorStream, geometry: Geometry, cipher: ChunkCipher) throws(CofferCryptoError) {
        let index = geometry.chunkCount - 1
        let offset = geometry.offset(ofChunk: index)
        let length = geometry.headerLength + geometry.plaintextLength + geometry.chunkCount * ChunkCipher.tagLength - offset
        if index > 0 && length == ChunkCipher.tagLength { throw .malformedChunk("empty final chunk after chunk 0") }
        let ciphertext = SecureBytes(count: length)
        let plaintext = SecureBytes(count: length)
        let error = try ciphertext.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> CofferCryptoError? in
            guard try file.read(into: buffer, at: offset) == length else { throw .truncated("the file changed while it was read") }
            return plaintext.withUnsafeMutableBytes { out in
                cipher.openOrDiagnose(UnsafeRawBufferPointer(buffer), into: out.baseAddress!, index: UInt64(index), last: true)
            }
        }
        if let error { throw error }
    }
}

/// Reads `length` bytes of a file from `offset` with `pread`, leaving the descriptor's position alone.
final class FileRegionSource: ByteSource {
    private let file: FileDescriptorStream
    private var offset: Int
    private let end: Int

    init(_ file: FileDescriptorStream, offset: Int, length: Int) {
        self.file = file
        self.offset = offset
        self.end = offset + length
    }

    var remainingHint: Int? { end - offset }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        let want = min(buffer.count, end - offset)
        guard want > 0 else { return 0 }
        let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: offset)
        offset += n
        return n
    }
}

/// Passes on bytes `skip ..< skip + limit` of what is written to it.
final class TrimmingSink: ByteSink {
    private let sink: any ByteSink
    private var skip: Int
    private var limit: Int

    init(_ sink: any ByteSink, skip: Int, limit: Int) {
        self.sink = sink
        self.skip = skip
        self.limit = limit
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
        var slice = bytes[...]
        let dropped = min(skip, slice.count)
        slice = slice.dropFirst(dropped)
        skip -= dropped
        let kept = min(limit, slice.count)
        guard kept > 0 else { return }
        limit -= kept
        try sink.write(UnsafeRawBufferPointer(rebasing: slice.prefix(kept)))
    }
}
