/// Text someone else supplied (a registry's names, tags and reasons, a server's error messages, a federated site's
/// fields, a recipe's task names) made safe to show, on a terminal (the CLI prints every line through it) or a web page
/// (the server's pages, after HTML escaping): a server's answer could otherwise set a terminal's window title, hide
/// what follows or move the cursor (helper-38 showed an OSC sequence and `ESC[8m` reaching stderr from a 403's
/// message), and an unsigned tag could read as another text on either.
public enum VisibleText {
    /// `text` with what could act on a terminal or hide what it says as `\u001b`-style escapes (a scalar past U+FFFF as
    /// its UTF-16 surrogate pair), which read the same inside a JSON string:
    /// - control characters (C0 but tab, DEL, C1), and line breaks unless `lines`, so that a field cannot forge a line
    ///   of its own; the line and paragraph separators always;
    /// - format characters (Unicode category Cf): the bidirectional controls, which reorder what follows on the line
    ///   ("Trojan Source", CVE-2021-42574: a tag can show `approved` while holding `devorppa`), zero-width characters,
    ///   the soft hyphen, tag characters (U+E0000...);
    /// - every other default-ignorable code point (variation selectors, Hangul fillers, ...), which a display draws as
    ///   nothing, so that two different texts would look the same.
    ///
    /// A joiner inside an emoji sequence is escaped too: a registry's output is read for what it says, not how it looks.
    /// A backslash is left as it is (escaping it would change every JSON document shown): `\u202e` typed as six
    /// characters prints as the escape of U+202E does; `--json` tells them apart.
    public static func of(_ text: String, lines: Bool = false) -> String {
        func escaped(_ scalar: Unicode.Scalar) -> Bool {
            switch scalar.value {
            case 0x09: return false
            case 0x0A: return !lines
            case 0x20..<0x7F: return false
            case 0x00..<0x20, 0x7F...0x9F: return true
            default:
                let properties = scalar.properties
                switch properties.generalCategory {
                case .control, .format, .lineSeparator, .paragraphSeparator: return true
                default: return properties.isDefaultIgnorableCodePoint
                }
            }
        }
        guard text.unicodeScalars.contains(where: escaped) else { return text }
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            guard escaped(scalar) else {
                out.append(scalar)
                continue
            }
            for unit in String(scalar).utf16 {
                let hex = String(unit, radix: 16)
                out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
            }
        }
        return String(out)
    }
}
