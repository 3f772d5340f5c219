import CofferClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The outbox holds a push's prepared blobs until the commit; only its owner may see or plant anything there.
struct PushOutboxTests {
    private func scratch() throws -> String {
        let path = NSTemporaryDirectory() + "outbox-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func concurrentPushesCreatingTheSameOutboxAllAcceptIt() async throws {
        // Before: a chmod after the mkdir, and a second push looking in between saw mode 755 and refused (CI, 3 pushers).
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        for round in 0..<200 {
            let path = "\(root)/\(round)/outbox"
            let refusals = await withTaskGroup(of: String?.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        do throws(CofferClientError) {
                            try PushOutbox.privateDirectory(path)
                            return nil
                        } catch { return error.description }
                    }
                }
                return await group.reduce(into: [String]()) { if let line = $1 { $0.append(line) } }
            }
            #expect(refusals.isEmpty, "\(refusals)")
            var status = stat()
            #expect(stat(path, &status) == 0 && status.st_mode & 0o777 == 0o700)
        }
    }

    @Test func anOutboxOthersMayReadALinkOrAFileIsRefused() throws {
        let root = try scratch()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(mkdir("\(root)/open", 0o755) == 0 && chmod("\(root)/open", 0o755) == 0)
        let open = #expect(throws: CofferClientError.self) { try PushOutbox.privateDirectory("\(root)/open") }
        #expect(open?.description.contains("is open to other users (mode 755): chmod 700 it") == true, "\(String(describing: open))")
        #expect(symlink("\(root)/open", "\(root)/link") == 0)
        let link = #expect(throws: CofferClientError.self) { try PushOutbox.privateDirectory("\(root)/link") }
        #expect(link?.description.contains("is not a directory (a link?)") == true, "\(String(describing: link))")
        #expect(FileManager.default.createFile(atPath: "\(root)/file", contents: Data()))
        let file = #expect(throws: CofferClientError.self) { try PushOutbox.privateDirectory("\(root)/file") }
        #expect(file?.description.contains("exists and is not a directory") == true, "\(String(describing: file))")
    }
}
