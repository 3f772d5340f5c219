import AsyncHTTPClient
import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1

/// Manifests by tag or digest, and the repository's tags.
extension OCIDistributionClient {
    /// Puts a manifest or index under `reference` (a tag, or `sha256:HEX`); returns its digest (hex).
    @discardableResult
    public func putManifest(_ bytes: [UInt8], mediaType: String, reference: String) async throws(CofferRegistryError) -> String {
        let digest = Digest.hex(Digest.sha256(bytes))
        let what = "PUT manifest \(reference)"
        let response = try await send(
            .PUT,
            url("manifests/\(reference)"),
            headers: [("Content-Type", mediaType)],
            body: .bytes(bytes),
            access: .push,
            what: what
        )
        guard response.status.code == 201 else { throw await failure(response, what) }
        if let echoed = response.headers.first(name: "Docker-Content-Digest"), echoed != "sha256:\(digest)" {
            throw .tampered("\(endpoint.name) stored manifest \(reference) as \(echoed), not sha256:\(digest)")
        }
        _ = try? await response.body.collect(upTo: 1 << 16)
        return digest
    }

    /// A manifest or index by tag or digest: its media type (from `Content-Type`), bytes and digest (hex); nil when absent.
    /// A manifest asked for by digest is checked against it.
    public func getManifest(
        _ reference: String,
        accept: [String]
    ) async throws(CofferRegistryError) -> (
        mediaType: String, bytes: [UInt8], digest: String
    )? {
        let what = "GET manifest \(reference)"
        let response = try await send(
            .GET,
            url("manifests/\(reference)"),
            headers: [("Accept", accept.joined(separator: ", "))],
            access: .pull,
            what: what
        )
        switch response.status.code {
        case 200:
            break
        case 404:
            _ = try? await response.body.collect(upTo: 1 << 16)
            return nil
        default:
            throw await failure(response, what)
        }
        let buffer: ByteBuffer
        do {
            buffer = try await response.body.collect(upTo: Self.manifestLimit)
        } catch {
            throw .unavailable(
                engine: endpoint.name,
                reason: "manifest \(reference) is larger than \(Self.manifestLimit >> 20) MiB or could not be read"
            )
        }
        let bytes = Array(buffer.readableBytesView)
        let digest = Digest.hex(Digest.sha256(bytes))
        if reference.hasPrefix("sha256:"), reference != "sha256:\(digest)" {
            throw .tampered("\(endpoint.name) returned a manifest whose SHA-256 is not \(reference)")
        }
        let contentType = response.headers.first(name: "Content-Type").map {
            String($0.split(separator: ";")[0]).trimmingCharacters(in: .whitespaces)
        }
        return (contentType ?? "", bytes, digest)
    }

    /// Every tag of the repository (`GET /v2/REPO/tags/list`, following `Link` pages); empty when the repository does not
    /// exist yet.
    public func tags() async throws(CofferRegistryError) -> [String] {
        var tags: [String] = []
        var next: String? = url("tags/list?n=1000")
        var pages = 0
        while let page = next, pages < 10_000 {
            pages += 1
            let response = try await send(.GET, page, access: .pull, what: "GET tags/list")
            if response.status.code == 404 {
                _ = try? await response.body.collect(upTo: 1 << 16)
                return tags
            }
            guard response.status.code == 200 else { throw await failure(response, "GET tags/list") }
            let buffer: ByteBuffer
            do {
                buffer = try await response.body.collect(upTo: 16 << 20)
            } catch {
                throw .unavailable(engine: endpoint.name, reason: "GET tags/list: the answer could not be read")
            }
            guard let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any] else {
                throw .unavailable(engine: endpoint.name, reason: "GET tags/list answered something other than JSON")
            }
            tags += object["tags"] as? [String] ?? []
            // `Link: </v2/REPO/tags/list?last=x&n=1000>; rel="next"`
            next = response.headers.first(name: "Link").flatMap { link -> String? in
                guard link.contains("rel=\"next\""), let open = link.firstIndex(of: "<"), let close = link.firstIndex(of: ">") else { return nil }
                return absolute(String(link[link.index(after: open)..<close]))
            }
        }
        return tags
    }
}
