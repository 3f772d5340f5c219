/// `NAME`, `NAME:VERSION` or `NAME@ALIAS`, as users type them.
public struct ModelReference: Sendable, Equatable, CustomStringConvertible {
    public enum Selector: Sendable, Equatable {
        case latest
        case version(String)
        case alias(String)
    }

    public let name: String
    public let selector: Selector

    public init(name: String, selector: Selector = .latest) throws(CofferRegistryError) {
        try Self.validate(name: name)
        switch selector {
        case .version(let v), .alias(let v): try Self.validate(version: v)
        case .latest: break
        }
        self.name = name
        self.selector = selector
    }

    /// Parses `NAME`, `NAME:VERSION` or `NAME@ALIAS`.
    public init(parsing text: String) throws(CofferRegistryError) {
        if let at = text.firstIndex(of: "@") {
            try self.init(name: String(text[..<at]), selector: .alias(String(text[text.index(after: at)...])))
        } else if let colon = text.firstIndex(of: ":") {
            try self.init(name: String(text[..<colon]), selector: .version(String(text[text.index(after: colon)...])))
        } else {
            try self.init(name: text)
        }
    }

    public var description: String {
        switch selector {
        case .latest: name
        case .version(let v): "\(name):\(v)"
        case .alias(let a): "\(name)@\(a)"
        }
    }

    /// Model names: segments of `[A-Za-z0-9._-]` separated by `/` (namespaces), at most 200 bytes.
    public static func validate(name: String) throws(CofferRegistryError) {
        let segments = name.split(separator: "/", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 200,
            segments.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && $0.utf8.allSatisfy(isNameByte) })
        else { throw .invalidName(name) }
    }

    /// Versions, aliases and tag keys: `[A-Za-z0-9._-]{1,64}`.
    public static func validate(version: String) throws(CofferRegistryError) {
        guard !version.isEmpty, version.utf8.count <= 64, version != ".", version != "..", version.utf8.allSatisfy(isNameByte) else {
            throw .invalidVersion(version)
        }
    }

    /// Dataset ids (budgets, lineage): a letter or digit, then up to 199 of `[A-Za-z0-9._:/@+-]`, so that an id
    /// such as `hf:org/name@rev` fits while nothing that could break a log line or a terminal does.
    public static func validate(datasetID: String) throws(CofferRegistryError) {
        let bytes = Array(datasetID.utf8)
        guard let first = bytes.first, bytes.count <= 200, isNameByte(first), first != 46, first != 95, first != 45,
            bytes.allSatisfy({ isNameByte($0) || $0 == 58 || $0 == 47 || $0 == 64 || $0 == 43 })
        else { throw .invalidDataset(datasetID) }
    }

    static func isNameByte(_ c: UInt8) -> Bool {
        (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 46 || c == 95 || c == 45
    }
}
