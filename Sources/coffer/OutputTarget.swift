import CofferCrypto

/// Where a command writes its result: stdout for `-`, otherwise a file that appears only when the whole write succeeded.
enum OutputTarget {
    static func write(to path: String, mode: UInt32, _ body: (any ByteSink) throws(CofferCryptoError) -> Void) throws(CofferCryptoError) {
        if path == "-" {
            try body(FileDescriptorStream.standardOutput)
            return
        }
        let file = try AtomicOutputFile(destination: path, mode: mode)
        try body(file)
        try file.commit()
    }
}
