import CofferCrypto

/// Where a command writes its result: stdout for `-`, otherwise a file that appears only when the whole write succeeded.
///
/// Like `age` and `cp`, outputs are not fsynced: the input is still there to redo the work after a power loss.
enum OutputTarget {
    static func write(to path: String, mode: UInt32, _ body: (any ByteSink) throws(CofferCryptoError) -> Void) throws(CofferCryptoError) {
        if path == "-" {
            try body(FileDescriptorStream.standardOutput)
            return
        }
        if let device = try FileDescriptorStream(writingToSpecialFile: path) {
            // /dev/null, a FIFO, a terminal: nothing to rename, write straight through.
            try body(device)
            return
        }
        let file = try AtomicOutputFile(destination: path, mode: mode, durable: false)
        try body(file)
        try file.commit()
    }
}
