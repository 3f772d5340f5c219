import CofferCrypto
import CofferTraining
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress bar on stderr (bytes, rate, ETA), shown only when stderr is a terminal. Updated from one
/// thread at a time (the pipeline's writer lane), then finished by the command.
final class ProgressBar: @unchecked Sendable {
    private let label: String
    private let total: Int?
    private let started = Date()
    private var lastDraw = Date.distantPast
    private var done = 0

    /// `nil` when stderr is not a terminal: scripts and pipes stay quiet.
    init?(label: String, total: Int?) {
        guard isatty(STDERR_FILENO) == 1 else { return nil }
        self.label = label
        self.total = total
    }

    func update(_ bytes: Int) {
        done = bytes
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        draw(now: now)
    }

    /// ``update(_:)`` as a closure the registry may call from its own threads.
    var reporter: @Sendable (Int) -> Void { { [self] bytes in update(bytes) } }

    func finish() {
        draw(now: Date())
        FileDescriptorStream.standardError.writeLine("")
    }

    private func draw(now: Date) {
        let elapsed = max(now.timeIntervalSince(started), 1e-3)
        let rate = Double(done) / elapsed
        var line = "\r\(label) \(Self.format(done))"
        if let total, total > 0 {
            let fraction = min(1, Double(done) / Double(total))
            let width = 30
            let filled = Int(fraction * Double(width))
            let eta = rate > 0 ? Double(total - done) / rate : 0
            line += " / \(Self.format(total)) [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))]"
            line += String(format: " %3.0f%%  %@/s  ETA %.0fs", fraction * 100, Self.format(Int(rate)), eta)
        } else {
            line += "  \(Self.format(Int(rate)))/s"
        }
        FileDescriptorStream.standardError.writeRaw(line + "\u{1B}[K")
    }

    static func format(_ bytes: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        guard unit > 0 else { return "\(bytes) B" }
        // One decimal, rounded as printf's %.1f rounds: String(format:) cost every push's last line 0.4 ms of CPU
        // (its CVarArg boxing looks protocol conformances up, scanning all of the binary's).
        let tenths = Int((value * 10).rounded(.toNearestOrEven))
        return "\(tenths / 10).\(tenths % 10) \(units[unit])"
    }
}

/// Training progress on stderr: on a terminal, a bar through each epoch's steps with the running per-task loss
/// and epsilon spent so far; then (terminal or not, unless `quiet`) one line per finished epoch.
final class EpochProgress {
    private let tasks: [String]
    private let tty = isatty(STDERR_FILENO) == 1
    private let quiet: Bool
    private var lastDraw = Date.distantPast

    init(tasks: [String], quiet: Bool) {
        self.tasks = tasks.map { VisibleText.of($0) }  // a shared recipe names them; written raw to the terminal
        self.quiet = quiet
    }

    func update(_ progress: TrainingProgress) {
        let summary = zip(tasks, progress.taskLosses).map { "\($0) \(String(format: "%.4f", $1))" }.joined(separator: ", ")
        let epsilon = progress.epsilon.map { String(format: ", epsilon %.3f", $0) } ?? ""
        let head = "\(progress.phase) epoch \(progress.epoch)/\(progress.epochs)"
        if progress.isEndOfEpoch {
            if tty {
                FileDescriptorStream.standardError.writeRaw("\r\(head): loss \(summary)\(epsilon)\u{1B}[K\n")
            } else if !quiet {
                FileDescriptorStream.standardError.writeLine("\(head): loss \(summary)\(epsilon)")
            }
            return
        }
        let now = Date()
        guard tty, now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        let width = 20
        let filled = progress.step * width / max(progress.steps, 1)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let line = "\r\(head) [\(bar)] step \(progress.step)/\(progress.steps): loss \(summary)\(epsilon)\u{1B}[K"
        FileDescriptorStream.standardError.writeRaw(line)
    }
}
