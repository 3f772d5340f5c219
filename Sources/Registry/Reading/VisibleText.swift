/// Text a registry or a server supplied (names, tags, reasons, error messages) made safe to show, on a terminal (the
/// CLI prints every line through it) or a web page (the server's pages, after HTML escaping): a server's answer could
/// otherwise set a terminal's window title, hide what follows or move the cursor (helper-38 showed an OSC sequence and
/// `ESC[8m` reaching stderr from a 403's message), and an unsigned tag could read as another text on either.
public enum VisibleText {
    /// `text` with its control characters (C0 but tab, DEL, C1) as `\u001b`-style escapes, which read the same inside a
    /// JSON string; line breaks too unless `lines`, so that a field cannot forge a line of its own. Also escaped: the
    /// bidirectional controls, which reorder what follows on the line ("Trojan Source", CVE-2021-42574: a tag can show
    /// `approved` while holding `devorppa`), the invisible characters that make two different texts look the same
    /// (zero-width space and joiners, word joiner, byte-order mark), and the line and paragraph separators. A joiner
    /// inside an emoji sequence is escaped too: a registry's output is read for what it says, not for how it looks.
    public static func of(_ text: String, lines: Bool = false) -> String {
        func escaped(_ scalar: Unicode.Scalar) -> Bool {
            switch scalar.value {
            case 0x09: false
            case 0x0A: !lines
            case 0x00...0x1F, 0x7F...0x9F: true
            case 0x061C, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x2064, 0x2066...0x2069, 0xFEFF: true
            default: false
            }
        }
        guard text.unicodeScalars.contains(where: escaped) else { return text }
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            guard escaped(scalar) else {
                out.append(scalar)
                continue
            }
            let hex = String(scalar.value, radix: 16)
            out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
        }
        return String(out)
    }
}
