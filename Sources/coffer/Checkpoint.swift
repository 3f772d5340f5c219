import ArgumentParser
import CofferCrypto
import CofferTraining
import Foundation

extension Checkpoint {
    /// Writes `trained`'s checkpoint files into `directory` (made if missing): where a user asked for them. Together,
    /// so that an interrupt never leaves a model beside the privacy claim of an earlier run.
    static func write(_ trained: TrainedModel, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileBytes.writeTogether(try files(trained).map { ("\(directory)/\($0.name)", $0.bytes, $0.mode) }, overwrite: true)
    }
}

extension Coffer {
    struct CheckpointCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "checkpoint",
            abstract: "Inspect safetensors checkpoints.",
            subcommands: [Inspect.self]
        )

        struct Inspect: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "inspect",
                abstract: "List a safetensors file's metadata and tensors (dtype, shape, SHA-256 of the bytes)."
            )
            @Argument(help: "A .safetensors file.") var file: String
            @Flag(name: .long, help: "Print JSON: {metadata, tensors: [{name, dtype, shape, sha256}]}.") var json = false

            func run() throws {
                let (checkpoint, bytes) = try Safetensors.read(contentsOf: file)
                let tensors = checkpoint.tensors.map { tensor in
                    let start = checkpoint.dataStart + tensor.offsets.lowerBound
                    return (tensor, Digest.hex(Digest.sha256(bytes[start..<(checkpoint.dataStart + tensor.offsets.upperBound)])))
                }
                if json {
                    JSONOutput.print(
                        .object([
                            "metadata": .object(checkpoint.metadata.mapValues { .string($0) }),
                            "tensors": .array(
                                tensors.map { tensor, digest in
                                    .object([
                                        "name": .string(tensor.name), "dtype": .string(tensor.dtype),
                                        "shape": .array(tensor.shape.map { .number(Double($0)) }), "sha256": .string(digest),
                                    ])
                                }
                            ),
                        ])
                    )
                    return
                }
                for key in checkpoint.metadata.keys.sorted() { print("metadata \(key): \(checkpoint.metadata[key]!.prefix(120))") }
                for (tensor, digest) in tensors { print("\(tensor.name)  \(tensor.dtype)  \(tensor.shape)  sha256:\(digest.prefix(16))") }
            }
        }
    }
}
