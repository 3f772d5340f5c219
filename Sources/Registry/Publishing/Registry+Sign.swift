import CofferCrypto
import Foundation

extension Registry {
    /// A version's statement signed by its publisher: the DSSE envelope, the OpenSSF bundle and the digest.
    struct SignedStatement: Sendable {
        var statement: ModelStatement
        var envelope: DSSEEnvelope
        var bundle: [UInt8]
        var digest: String
    }

    static func sign(
        _ request: PushRequest,
        version: String,
        files: [ModelStatement.File],
        lineage: ModelStatement.Lineage,
        created: String,
        publisher: borrowing Identity
    ) throws(CofferRegistryError) -> SignedStatement {
        let statement = ModelStatement(
            model: request.model,
            version: version,
            files: files,
            privacy: request.privacy,
            lineage: lineage,
            chunkSize: request.chunkSize,
            created: created,
            publisher: publisher.publicIdentity,
            message: request.message
        )
        let payload = statement.statement.jsonBytes
        let bundle: [UInt8]
        do throws(CofferCryptoError) {
            bundle = try ModelSigningBundle.sign(
                modelName: modelDirectoryName(request),
                resources: files.map { .init(name: $0.path, sha256: Digest.bytes(fromHex: $0.plaintextSHA256)!) },
                identity: publisher
            )
        } catch {
            throw .crypto(error)
        }
        return SignedStatement(
            statement: statement,
            envelope: DSSEEnvelope.sign(payload: payload, identity: publisher),
            bundle: bundle,
            digest: Digest.hex(Digest.sha256(payload))
        )
    }
}
