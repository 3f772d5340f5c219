import Foundation

/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
/// length, a JSON header (`__metadata__` as a string-to-string map; per tensor `dtype`, `shape`,
/// `data_offsets`), padded with spaces to a multiple of 8, then the tensors' bytes, contiguous and
/// little-endian, row-major.
public struct Safetensors: Sendable, Equatable {
    /// One tensor's entry in the header.
    public struct Tensor: Sendable, Equatable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        /// Byte range within the data section (after the header).
        public var offsets: Range<Int>

        public var elementCount: Int { shape.reduce(1, *) }
    }

    /// Bytes per element of the dtypes the format defines.
    public static let dtypeSizes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
        "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    ]
    /// Headers larger than this are refused (the reference implementation's limit).
    public static let maximumHeaderLength = 100_000_000

    public var metadata: [String: String]
    /// Tensors in data order.
    public var tensors: [Tensor]
    /// Length of the 8-byte prefix plus the JSON header: where the data section starts.
    public var dataStart: Int

    public func tensor(named name: String) -> Tensor? { tensors.first { $0.name == name } }

    // MARK: - Reading

    /// The header's length, from the little-endian 8 bytes that `bytes` starts with (nil while it has fewer).
    static func headerLength(_ bytes: some Collection<UInt8>) -> UInt64? {
        guard bytes.count >= 8 else { return nil }
        return bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    /// Parses and checks the header at the start of `bytes`, against a file of `fileLength` bytes.
    ///
    /// - Throws: ``CofferTrainingError/invalidCheckpoint(_:)`` naming the field at fault.
    public init(header bytes: [UInt8], fileLength: Int) throws(CofferTrainingError) {
        guard let length = Self.headerLength(bytes) else { throw .invalidCheckpoint("file shorter than the 8-byte header length") }
        guard length <= UInt64(Self.maximumHeaderLength) else { throw .invalidCheckpoint("header length \(length) exceeds 100 MB") }
        guard 8 + Int(length) <= bytes.count, 8 + Int(length) <= fileLength else {
            throw .invalidCheckpoint("header length \(length) runs past the end of the file")
        }
        let json = Array(bytes[8..<(8 + Int(length))])
        guard json.first == UInt8(ascii: "{") else { throw .invalidCheckpoint("header does not start with '{'") }
        guard let header = try? JSONDecoder().decode(HeaderJSON.self, from: Data(json)), case .object(let object) = header else {
            throw .invalidCheckpoint("header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var tensors: [Tensor] = []
        for (name, value) in object {
            if name == "__metadata__" {
                guard case .object(let map) = value else { throw .invalidCheckpoint("__metadata__ is not an object") }
                for (key, item) in map {
                    guard case .string(let text) = item else { throw .invalidCheckpoint("__metadata__.\(key) is not a string") }
                    metadata[key] = text
                }
                continue
            }
            guard case .object(let entry) = value else { throw .invalidCheckpoint("tensor '\(name)' is not an object") }
            guard case .string(let dtype)? = entry["dtype"], let size = Self.dtypeSizes[dtype] else {
                let found = if case .string(let d)? = entry["dtype"] { d } else { "missing" }
                throw .invalidCheckpoint("tensor '\(name)': unknown dtype \(found)")
            }
            guard case .array(let shapeValues)? = entry["shape"], case .array(let offsetValues)? = entry["data_offsets"], offsetValues.count == 2
            else {
                throw .invalidCheckpoint("tensor '\(name)': shape and data_offsets [begin, end] are required")
            }
            var shape: [Int] = []
            for dimension in shapeValues {
                guard case .integer(let d) = dimension, d >= 0 else {
                    throw .invalidCheckpoint("tensor '\(name)': shape must hold non-negative integers")
                }
                shape.append(d)
            }
            guard case .integer(let begin) = offsetValues[0], case .integer(let end) = offsetValues[1], begin >= 0, end >= begin else {
                throw .invalidCheckpoint("tensor '\(name)': data_offsets must be integers with begin <= end")
            }
            let (elements, overflow) = shape.reduce((1, false)) { acc, d in
                let (product, o) = acc.0.multipliedReportingOverflow(by: d)
                return (product, acc.1 || o)
            }
            let (needed, tooLarge) = elements.multipliedReportingOverflow(by: size)
            guard !overflow, !tooLarge, needed == end - begin else {
                let requirement = overflow || tooLarge ? "more than 2^63" : "\(needed)"
                throw .invalidCheckpoint("tensor '\(name)': data_offsets span \(end - begin) bytes, shape \(shape) of \(dtype) needs \(requirement)")
            }
            tensors.append(Tensor(name: name, dtype: dtype, shape: shape, offsets: begin..<end))
        }
        tensors.sort { ($0.offsets.lowerBound, $0.offsets.upperBound, $0.name) < ($1.offsets.lowerBound, $1.offsets.upperBound, $1.name) }
        // The data section is covered exactly, without holes or overlaps.
        var expected = 0
        for tensor in tensors {
            guard tensor.offsets.lowerBound == expected else {
                throw .invalidCheckpoint(
                    "tensor '\(tensor.name)' starts at byte \(tensor.offsets.lowerBound) of the data, expected \(expected) (holes and overlaps are not allowed)"
                )
            }
            expected = tensor.offsets.upperBound
        }
        let dataLength = fileLength - 8 - Int(length)
        guard expected == dataLength else { throw .invalidCheckpoint("tensors cover \(expected) bytes of data, the file has \(dataLength)") }
        self.metadata = metadata
        self.tensors = tensors
        self.dataStart = 8 + Int(length)
    }

    /// Reads a whole safetensors file.
    public static func read(contentsOf path: String) throws(CofferTrainingError) -> (Safetensors, [UInt8]) {
        guard let data = FileManager.default.contents(atPath: path) else { throw .invalidCheckpoint("\(path): cannot read") }
        let bytes = Array(data)
        return (try Safetensors(header: bytes, fileLength: bytes.count), bytes)
    }

    /// The values of an F32 tensor, from the file's bytes.
    public func floats(_ tensor: Tensor, in file: [UInt8]) throws(CofferTrainingError) -> [Float] {
        guard tensor.dtype == "F32" else { throw .invalidCheckpoint("tensor '\(tensor.name)' is \(tensor.dtype), expected F32") }
        let start = dataStart + tensor.offsets.lowerBound
        return (0..<tensor.elementCount).map { i in
            let o = start + 4 * i
            return Float(bitPattern: UInt32(file[o]) | UInt32(file[o + 1]) << 8 | UInt32(file[o + 2]) << 16 | UInt32(file[o + 3]) << 24)
        }
    }

    /// Just enough JSON to read a header with exact types (an integer is not a Bool, nor a Double).
    private indirect enum HeaderJSON: Decodable {
        case null
        case bool(Bool)
        case integer(Int)
        case number(Double)
        case string(String)
        case array([HeaderJSON])
        case object([String: HeaderJSON])

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .null
            } else if let value = try? container.decode(Bool.self) {
                self = .bool(value)
            } else if let value = try? container.decode(Int.self) {
                self = .integer(value)
            } else if let value = try? container.decode(Double.self) {
                self = .number(value)
            } else if let value = try? container.decode(String.self) {
                self = .string(value)
            } else if let value = try? container.decode([HeaderJSON].self) {
                self = .array(value)
            } else {
                self = .object(try container.decode([String: HeaderJSON].self))
            }
        }
    }

    // MARK: - Writing

    /// Encodes F32 tensors and metadata; tensors are laid out in name order.
    ///
    /// - Parameter tensors: name, shape and row-major values (values.count must equal the shape's product).
    public static func encode(
        tensors: [(name: String, shape: [Int], values: [Float])],
        metadata: [String: String]
    ) throws(CofferTrainingError)
        -> [UInt8]
    {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let sorted = tensors.sorted { $0.name < $1.name }
        for tensor in sorted {
            guard tensor.name != "__metadata__", header[tensor.name] == nil else {
                throw .invalidCheckpoint("duplicate tensor name '\(tensor.name)'")
            }
            guard tensor.shape.reduce(1, *) == tensor.values.count else {
                throw .invalidCheckpoint("tensor '\(tensor.name)': \(tensor.values.count) values for shape \(tensor.shape)")
            }
            header[tensor.name] = ["dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, offset + 4 * tensor.values.count]]
            offset += 4 * tensor.values.count
        }
        guard var json = try? Array(JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes])) else {
            throw .invalidCheckpoint("header cannot be encoded")
        }
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }  // pad so the data starts 8-byte aligned
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + offset)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: UInt64(json.count) >> (8 * UInt64(i)))) }
        out += json
        for tensor in sorted {
            for value in tensor.values {
                let bits = value.bitPattern
                out += [
                    UInt8(truncatingIfNeeded: bits), UInt8(truncatingIfNeeded: bits >> 8), UInt8(truncatingIfNeeded: bits >> 16),
                    UInt8(truncatingIfNeeded: bits >> 24),
                ]
            }
        }
        return out
    }
}
