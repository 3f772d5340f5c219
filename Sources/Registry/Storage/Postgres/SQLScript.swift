/// A migration file cut into single statements: postgres-nio speaks only the extended query protocol, which runs
/// one statement per message.
///
/// Statements end at a `;` outside quotes and comments: `'...'` (with `''` inside), `"..."`, dollar quotes
/// (`$$ ... $$`, `$tag$ ... $tag$`: PL/pgSQL bodies), `-- ...` to the end of the line and `/* ... */`. Comments stay in
/// the statement they precede or follow; statements holding only comments and white space are dropped.
enum SQLScript {
    static func statements(_ script: String) -> [String] {
        let text = Array(script.unicodeScalars)
        var statements: [String] = []
        var start = 0
        var index = 0
        var hasCode = false

        func flush(upTo end: Int) {
            if hasCode {
                var scalars = String.UnicodeScalarView()
                scalars.append(contentsOf: text[start..<end])
                let statement = String(scalars).trimmingWhitespace()
                if !statement.isEmpty { statements.append(statement) }
            }
            hasCode = false
        }

        while index < text.count {
            let c = text[index]
            switch c {
            case "-" where index + 1 < text.count && text[index + 1] == "-":
                while index < text.count && text[index] != "\n" { index += 1 }
            case "/" where index + 1 < text.count && text[index + 1] == "*":
                var depth = 0
                repeat {
                    if text[index] == "/" && index + 1 < text.count && text[index + 1] == "*" {
                        depth += 1
                        index += 2
                    } else if text[index] == "*" && index + 1 < text.count && text[index + 1] == "/" {
                        depth -= 1
                        index += 2
                    } else {
                        index += 1
                    }
                } while depth > 0 && index < text.count
            case "'", "\"":
                hasCode = true
                index += 1
                while index < text.count {
                    if text[index] == c {
                        // A doubled quote is a quote inside the string.
                        if index + 1 < text.count && text[index + 1] == c {
                            index += 2
                            continue
                        }
                        break
                    }
                    index += 1
                }
                index += 1
            case "$":
                hasCode = true
                // A dollar quote's tag: $$ or $identifier$ (a $1 parameter is not one).
                var end = index + 1
                while end < text.count
                    && (text[end].properties.isAlphabetic || text[end] == "_" || (end > index + 1 && text[end].properties.numericType != nil))
                {
                    end += 1
                }
                if end < text.count && text[end] == "$" {
                    let tag = Array(text[index...end])
                    index = end + 1
                    while index < text.count {
                        if text[index] == "$" && index + tag.count <= text.count && Array(text[index..<index + tag.count]) == tag {
                            index += tag.count
                            break
                        }
                        index += 1
                    }
                } else {
                    index += 1
                }
            case ";":
                flush(upTo: index)
                index += 1
                start = index
            default:
                if !c.properties.isWhitespace { hasCode = true }
                index += 1
            }
        }
        flush(upTo: text.count)
        return statements
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}
