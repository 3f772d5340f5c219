import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// libpq's password file (`~/.pgpass`, or `PGPASSFILE`): lines `HOST:PORT:DATABASE:USER:PASSWORD`, the first that
/// matches giving the password.
///
/// libpq's rules: each of the first four fields is matched literally or by `*`; `\:` and `\\` stand for `:` and `\`
/// in any field; lines starting with `#` and lines with fewer than five fields are skipped; a file that is not a
/// regular file, or that the group or others may read or write, is refused (libpq ignores it with a warning; Coffer
/// says so and stops, since a password is then expected and would otherwise fail later, further from the cause).
struct PostgresPassfile {
    struct Entry: Equatable {
        var host: String
        var port: String
        var database: String
        var user: String
        var password: String
    }

    /// Why a password file cannot be used, in one line.
    struct Problem: Error {
        let reason: String
    }

    let entries: [Entry]

    /// Reads the file at `path`; `nil` when there is none.
    init?(contentsOf path: String) throws(Problem) {
        var status = stat()
        guard stat(path, &status) == 0 else {
            if errno == ENOENT { return nil }
            throw Problem(reason: "password file \(path): \(String(cString: strerror(errno)))")
        }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw Problem(reason: "password file \(path) is not a plain file")
        }
        guard status.st_mode & (S_IRWXG | S_IRWXO) == 0 else {
            throw Problem(
                reason: "password file \(path) has group or world access; permissions should be u=rw (0600) or less (chmod 600 \(path))"
            )
        }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw Problem(reason: "password file \(path) cannot be read as UTF-8 text")
        }
        self.init(text: text)
    }

    init(text: String) {
        entries = text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }).compactMap { Self.entry(String($0)) }
    }

    /// The password of the first entry matching these connection settings.
    func password(host: String, port: Int, database: String, user: String) -> String? {
        func matches(_ field: String, _ value: String) -> Bool { field == "*" || field == value }
        return entries.first {
            matches($0.host, host) && matches($0.port, String(port)) && matches($0.database, database) && matches($0.user, user)
        }?.password
    }

    private static func entry(_ line: String) -> Entry? {
        var line = Substring(line)
        if line.hasSuffix("\r") { line = line.dropLast() }
        guard !line.isEmpty, !line.hasPrefix("#") else { return nil }
        var fields: [String] = []
        var current = ""
        var escaped = false
        for character in line {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == ":" && fields.count < 4 {
                fields.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        fields.append(current)
        guard fields.count == 5 else { return nil }
        return Entry(host: fields[0], port: fields[1], database: fields[2], user: fields[3], password: fields[4])
    }
}
