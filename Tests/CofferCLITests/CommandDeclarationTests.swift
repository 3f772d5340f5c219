import CofferTestSupport
import Foundation
import Testing

/// A command declared `ParsableCommand` whose `run()` is `async` never runs: swift-argument-parser calls the
/// synchronous default, which prints the help and exits 0, so `coffer session revoke ID` once "succeeded" without
/// revoking anything. Every command with an async `run()` must be an `AsyncParsableCommand`.
@Suite(.ownThread)
struct CommandDeclarationTests {
    @Test func everyCommandWithAnAsyncRunIsAnAsyncParsableCommand() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/coffer").standardized
        var misdeclared: [String] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: sources.path) where file.hasSuffix(".swift") {
            let lines = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8).split(
                separator: "\n",
                omittingEmptySubsequences: false
            )
            // The innermost command declared above each `func run() async`, by indentation.
            var open: [(indent: Int, name: String, async: Bool)] = []
            for line in lines {
                let indent = line.prefix { $0 == " " }.count
                let text = line.trimmingCharacters(in: .whitespaces)
                if text.hasPrefix("struct "), text.contains("ParsableCommand") {
                    open.removeAll { $0.indent >= indent }
                    let name = String(text.dropFirst(7).prefix { $0 != ":" })
                    open.append((indent, name, text.contains("AsyncParsableCommand")))
                } else if text.hasPrefix("func run() async"), let command = open.last(where: { $0.indent < indent }), !command.async {
                    misdeclared.append("\(file): \(command.name)")
                }
            }
        }
        #expect(misdeclared.isEmpty, "declare these AsyncParsableCommand: \(misdeclared)")
    }

    /// swift-argument-parser quotes a mistyped argument in its refusal: a terminal control in it is escaped, not sent to
    /// the terminal (which could rewrite what the user sees). Help still comes out as written.
    @Test func aRefusalQuotesATypedControlEscaped() throws {
        let dir = try Scratch()
        let refused = try CofferProcess.run(["pu\u{1B}[2Jsh"], in: dir.url)
        #expect(refused.status == 64, "\(refused.stderr)")
        #expect(refused.stderr.hasPrefix("Error: Unexpected argument 'pu\\u001b[2Jsh'\nUsage: coffer"), "\(refused.stderr)")
        #expect(!refused.stderr.unicodeScalars.contains { $0.value == 0x1B }, "\(refused.stderr)")
        let help = try CofferProcess.run(["push", "--help"], in: dir.url)
        #expect(help.status == 0 && help.stdoutText.hasPrefix("OVERVIEW: Seal, sign and store"), "\(help.stderr)")
    }
}
