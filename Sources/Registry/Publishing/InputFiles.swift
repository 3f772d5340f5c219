import CofferCrypto
import Foundation

/// A file to push: where its bytes are now, and the relative path it is stored under.
struct InputFile: Sendable, Equatable {
    var source: Source
    var path: String

    enum Source: Sendable, Equatable {
        case file(String)
        case memory([UInt8])
    }

    /// Its bytes as a stream, from the start.
    func open() throws(CofferCryptoError) -> any ByteSource {
        switch source {
        case .file(let name): try FileDescriptorStream(readingFrom: name)
        case .memory(let bytes): MemorySource(bytes)
        }
    }

    /// The inputs of `request`: its paths expanded, then its in-memory contents.
    static func collect(_ request: PushRequest) throws(CofferRegistryError) -> [InputFile] {
        try collect(request.paths, contents: request.contents)
    }

    /// Expands `paths` into files. Directories are walked (sub-folders kept as relative paths);
    /// symbolic links and special files are refused, as are two inputs with the same stored path.
    static func collect(_ paths: [String], contents: [PushRequest.Content] = []) throws(CofferRegistryError) -> [InputFile] {
        var files = contents.map { InputFile(source: .memory($0.bytes), path: $0.path) }
        for path in paths {
            switch try kind(of: path) {
            case .typeRegular:
                files.append(InputFile(source: .file(path), path: (path as NSString).lastPathComponent))
            case .typeDirectory:
                try walk(directory: path, prefix: "", into: &files)
            case .typeSymbolicLink:
                throw .invalidPath(path, reason: "is a symbolic link; push the file it points to")
            default:
                throw .invalidPath(path, reason: "is not a regular file or directory")
            }
        }
        guard !files.isEmpty else { throw .noFiles }
        // Compared byte for byte after Unicode normalization (NFC): `é` spelled two ways is one name on most file
        // systems a model is pulled to, so two such files would overwrite each other there.
        var seen = Set<[UInt8]>()
        for file in files {
            try validate(relativePath: file.path)
            guard seen.insert(Array(file.path.precomposedStringWithCanonicalMapping.utf8)).inserted else { throw .duplicatePath(file.path) }
            if file.path == Registry.modelSignatureName || file.path.hasPrefix(Registry.modelSignatureName + "/") {
                throw .invalidPath(file.path, reason: "is under the name pull gives the model-signing bundle (model.sig): rename it")
            }
        }
        return files.sorted { $0.path < $1.path }
    }

    private static func walk(directory: String, prefix: String, into files: inout [InputFile]) throws(CofferRegistryError) {
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: directory).sorted() } catch {
            throw .io(path: directory, reason: "cannot read directory")
        }
        for entry in entries {
            let full = "\(directory)/\(entry)"
            let relative = prefix.isEmpty ? entry : "\(prefix)/\(entry)"
            switch try kind(of: full) {
            case .typeRegular: files.append(InputFile(source: .file(full), path: relative))
            case .typeDirectory: try walk(directory: full, prefix: relative, into: &files)
            case .typeSymbolicLink: throw .invalidPath(full, reason: "is a symbolic link inside the model directory (refused)")
            default: throw .invalidPath(full, reason: "is not a regular file or directory")
            }
        }
    }

    private static func kind(of path: String) throws(CofferRegistryError) -> FileAttributeType {
        // lstat: a symbolic link is reported as one, not followed. (FileManager's attributes would also look up the
        // owner's and group's names, reading /etc/passwd and /etc/group for every file.)
        var status = stat()
        guard lstat(path, &status) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        switch status.st_mode & S_IFMT {
        case S_IFREG: return .typeRegular
        case S_IFDIR: return .typeDirectory
        case S_IFLNK: return .typeSymbolicLink
        default: return .typeUnknown
        }
    }

    /// The most names a stored path may have (folders and the file): the interrupt handler's signal-safe removal of
    /// a pull's staging folder goes 32 folders down (`coffer_remove_tree`), and a file deeper would outlive Ctrl-C.
    static let maximumDepth = 32

    /// A stored path: relative, `/`-separated, no empty, `.` or `..` segment, no backslash, no control character
    /// (a newline in a name would forge lines of `show`), each segment at most 200 bytes (room for the temporary
    /// name a pull writes it under, within the 255 bytes a Linux file name may have), at most ``maximumDepth`` names.
    static func validate(relativePath path: String) throws(CofferRegistryError) {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, !path.hasPrefix("/"), path.utf8.count <= 4096,
            segments.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }),
            !path.contains("\\")
        else { throw .invalidPath(path, reason: "escapes the model directory or is not a plain relative path") }
        guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || (0x80...0x9F).contains($0.value) }) else {
            throw .invalidPath(path.debugDescription, reason: "has a control character in its name")
        }
        // A name that starts with a combining mark joins the slash before it into one Character, which path
        // operations on Characters do not see as a separator.
        guard segments.count == path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).count else {
            throw .invalidPath(path, reason: "has a name that starts with a combining mark")
        }
        guard segments.allSatisfy({ $0.utf8.count <= 200 }) else {
            throw .invalidPath(path, reason: "has a name longer than 200 bytes (it could not be pulled back)")
        }
        guard segments.count <= maximumDepth else {
            throw .invalidPath(path, reason: "is more than \(maximumDepth) names deep (an interrupted pull could not remove it)")
        }
    }
}
