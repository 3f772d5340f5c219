import CofferTestSupport
import Testing

@testable import CofferTraining

@Suite(.ownThread)
struct SafetensorsTests {
    private func sample() throws -> [UInt8] {
        try Safetensors.encode(
            tensors: [
                (name: "trunk.0.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5]),
                (name: "heads.health.bias", shape: [4], values: [0.25, 0, -0, .greatestFiniteMagnitude]),
                (name: "empty", shape: [0, 5], values: []),
            ],
            metadata: ["format": "pt", "coffer.tasks": #"[{"name":"health"}]"#]
        )
    }

    @Test func roundTripAndLayout() throws {
        let bytes = try sample()
        let headerLength = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        #expect(headerLength % 8 == 0, "the header is padded so the data is 8-byte aligned")
        #expect(bytes[8] == UInt8(ascii: "{"))
        let parsed = try Safetensors(header: bytes, fileLength: bytes.count)
        #expect(parsed.metadata == ["format": "pt", "coffer.tasks": #"[{"name":"health"}]"#])
        #expect(parsed.tensors.map(\.name) == ["empty", "heads.health.bias", "trunk.0.weight"])
        let weight = try #require(parsed.tensor(named: "trunk.0.weight"))
        #expect(weight.shape == [2, 3])
        #expect(try parsed.floats(weight, in: bytes) == [1, 2, 3, 4, 5, -6.5])
        #expect(try parsed.floats(try #require(parsed.tensor(named: "heads.health.bias")), in: bytes) == [0.25, 0, -0, .greatestFiniteMagnitude])
        #expect(bytes.count == 8 + headerLength + 4 * (6 + 4))
    }

    /// Builds a file from a header written by hand and `dataLength` zero bytes.
    private func file(_ header: String, dataLength: Int) -> [UInt8] {
        var json = Array(header.utf8)
        while json.count % 8 != 0 { json.append(32) }
        return (0..<8).map { UInt8(truncatingIfNeeded: json.count >> (8 * $0)) } + json + [UInt8](repeating: 0, count: dataLength)
    }

    @Test(arguments: [
        (
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#, 16,
            "tensor 'b' starts at byte 12 of the data, expected 8 (holes and overlaps are not allowed)"
        ),
        (#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, "tensor 'a': data_offsets span 8 bytes, shape [3] of F32 needs 12"),
        (#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, 1, "tensor 'a': unknown dtype Q4"),
        (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8, "tensors cover 4 bytes of data, the file has 8"),
        (#"{"__metadata__":{"k":1}}"#, 0, "__metadata__.k is not a string"),
        (#"[1,2]"#, 0, "header does not start with '{'"),
        (#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4, "tensor 'a': shape must hold non-negative integers"),
    ])
    func malformedHeadersNameTheFault(header: String, dataLength: Int, message: String) {
        let bytes = file(header, dataLength: dataLength)
        #expect(throws: CofferTrainingError.invalidCheckpoint(message)) { _ = try Safetensors(header: bytes, fileLength: bytes.count) }
    }

    @Test func truncatedHeaderIsRefused() throws {
        let bytes = try sample()
        #expect(throws: CofferTrainingError.self) { _ = try Safetensors(header: Array(bytes.prefix(20)), fileLength: 20) }
        #expect(throws: CofferTrainingError.invalidCheckpoint("file shorter than the 8-byte header length")) {
            _ = try Safetensors(header: [1, 2], fileLength: 2)
        }
        #expect(throws: CofferTrainingError.invalidCheckpoint("tensor 'a': 2 values for shape [3]")) {
            _ = try Safetensors.encode(tensors: [(name: "a", shape: [3], values: [1, 2])], metadata: [:])
        }
    }
}
