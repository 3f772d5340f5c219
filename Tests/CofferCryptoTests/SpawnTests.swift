import CofferCrypto
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct SpawnTests {
    /// A child starts with no signal blocked, whatever the mask of the thread that spawned it: Swift concurrency's and
    /// Dispatch's threads block most signals, and a runner started from one never saw the SIGTERM of `runner stop`.
    @Test func aChildStartsWithNoSignalBlocked() throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-mask-\(UUID().uuidString)").path
        defer { unlink(output) }
        var blocked = sigset_t()
        var saved = sigset_t()
        sigfillset(&blocked)
        pthread_sigmask(SIG_SETMASK, &blocked, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        // grep itself, not through a shell: dash clears its mask when it starts.
        let pid = try Spawn.start("/usr/bin/grep", ["SigBlk", "/proc/self/status"], stdout: .file(output))
        #expect(Spawn.wait(pid) == 0)
        let line = try String(contentsOfFile: output, encoding: .utf8)
        #expect(line == "SigBlk:\t0000000000000000\n", "\(line)")
    }
}
