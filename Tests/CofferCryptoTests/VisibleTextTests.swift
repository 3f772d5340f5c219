import CofferCrypto
import Foundation
import Testing

/// ``VisibleText`` shows what someone else wrote without letting it act on a terminal or hide what it says.
struct VisibleTextTests {
    @Test(arguments: [
        ("plain text, tab\tand é ü 漢字 🙂", "plain text, tab\tand é ü 漢字 🙂"),
        ("title\u{1B}]0;x\u{07}", #"title\u001b]0;x\u0007"#),
        ("c1 \u{9B}2J del \u{7F}", #"c1 \u009b2J del \u007f"#),
        ("line\nbreak\r", #"line\u000abreak\u000d"#),
        ("\u{202E}devorppa", #"\u202edevorppa"#),
        ("zero\u{200B}width\u{FEFF}", #"zero\u200bwidth\ufeff"#),
        ("soft\u{AD}hyphen", #"soft\u00adhyphen"#),
        ("variation\u{FE0F}", #"variation\ufe0f"#),
        ("hangul\u{3164}filler", #"hangul\u3164filler"#),
        ("sep\u{2028}\u{2029}", #"sep\u2028\u2029"#),
        // A tag character (U+E0041) is past U+FFFF: its UTF-16 surrogate pair, as JSON writes it.
        ("approved\u{E0041}", #"approved\udb40\udc41"#),
    ])
    func whatCouldActOrHideIsEscaped(text: String, shown: String) {
        #expect(VisibleText.of(text) == shown)
    }

    @Test func lineBreaksStayWhenAsked() {
        #expect(VisibleText.of("a\nb\u{1B}", lines: true) == "a\nb\\u001b")
    }

    /// Applied to a JSON document, the escapes are JSON's own: a parser reads back the very strings.
    @Test func aJSONDocumentStaysTheSameDocument() throws {
        let strings = ["\u{202E}x\u{E0041}\u{9B}\u{7F}\u{2028}", "quote\" backslash\\ \u{1B}[8m", "emoji 👩‍💻 \u{FE0F}", ""]
        let encoded = String(decoding: try JSONEncoder().encode(strings), as: UTF8.self)
        let shown = VisibleText.of(encoded, lines: true)
        #expect(VisibleText.of(shown, lines: true) == shown && !shown.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x202E })
        #expect(try JSONDecoder().decode([String].self, from: Data(shown.utf8)) == strings)
    }
}
