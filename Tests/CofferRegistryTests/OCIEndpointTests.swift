import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// OCI URLs, credentials from the containers auth files, and the tag a version gets: the parts of the OCI store that need
/// no registry.
@Suite("OCI endpoints, credentials and tags")
struct OCIEndpointTests {
    @Test(
        "URLs that name a registry and repository",
        arguments: [
            ("oci://registry.example.com/coffer", "https", "registry.example.com", nil, "coffer"),
            ("oci+http://127.0.0.1:5000/coffer", "http", "127.0.0.1", 5000, "coffer"),
            ("oci://[::1]:5443/team/models", "https", "[::1]", 5443, "team/models"),
            ("oci://r.example:443/a.b/c__d/e---f", "https", "r.example", 443, "a.b/c__d/e---f"),
        ] as [(String, String, String, Int?, String)]
    )
    func validURLs(url: String, scheme: String, host: String, port: Int?, repository: String) throws {
        let endpoint = try OCIEndpoint(parsing: url)
        #expect(endpoint.scheme == scheme)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        #expect(endpoint.repository == repository)
        #expect(endpoint.description == url)
        #expect(endpoint.name == "OCI registry \(endpoint.authority)/\(repository)")
    }

    @Test(
        "URLs refused with one line saying why",
        arguments: [
            (
                "https://r/coffer",
                "invalid OCI registry URL 'https://r/coffer': use oci://HOST[:PORT]/REPOSITORY or oci+http://HOST[:PORT]/REPOSITORY"
            ),
            ("oci://r:5000", "invalid OCI registry URL 'oci://r:5000': it names no repository (oci://HOST[:PORT]/REPOSITORY)"),
            (
                "oci://alice:pw@r/coffer",
                "invalid OCI registry URL 'oci://alice:pw@r/coffer': credentials do not belong in the URL; put them in the containers auth file (REGISTRY_AUTH_FILE, skopeo login)"
            ),
            (
                "oci://r/Coffer",
                "invalid OCI repository 'Coffer' in 'oci://r/Coffer': use lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"
            ),
            (
                "oci://r/a___b",
                "invalid OCI repository 'a___b' in 'oci://r/a___b': use lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"
            ),
            (
                "oci://r/a//b",
                "invalid OCI repository 'a//b' in 'oci://r/a//b': use lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"
            ),
            ("oci://r/", "invalid OCI repository '' in 'oci://r/': use lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"),
            ("oci://r:0/x", "invalid OCI registry URL 'oci://r:0/x': bad port '0'"),
            ("oci://r:http/x", "invalid OCI registry URL 'oci://r:http/x': bad port 'http'"),
            ("oci://r/x?y=1", "invalid OCI registry URL 'oci://r/x?y=1': it has a query or fragment"),
            ("oci://r_x/y", "invalid OCI registry URL 'oci://r_x/y': bad host 'r_x'"),
        ]
    )
    func invalidURLs(url: String, message: String) {
        #expect {
            _ = try OCIEndpoint(parsing: url)
        } throws: { error in
            (error as? CofferRegistryError)?.description == message
        }
    }

    @Test("import references: a tag or a digest after the repository")
    func references() throws {
        let tagged = try OCIEndpoint.parse(reference: "oci+http://127.0.0.1:5000/mirror/coffer:team_fraud_3-66ffc51dc25c0229f73f079ec18b6da4")
        #expect(tagged.endpoint.repository == "mirror/coffer")
        #expect(tagged.reference == "team_fraud_3-66ffc51dc25c0229f73f079ec18b6da4")
        let digest = "sha256:" + String(repeating: "ab", count: 32)
        let pinned = try OCIEndpoint.parse(reference: "oci://r.example/coffer@\(digest)")
        #expect(pinned.endpoint.authority == "r.example")
        #expect(pinned.reference == digest)
        #expect(throws: CofferRegistryError.self) { _ = try OCIEndpoint.parse(reference: "oci://r.example:5000/coffer") }
        #expect(throws: CofferRegistryError.self) { _ = try OCIEndpoint.parse(reference: "oci://r.example/coffer:.hidden") }
        #expect(throws: CofferRegistryError.self) { _ = try OCIEndpoint.parse(reference: "oci://r.example/coffer@sha256:abc") }
    }

    // MARK: - Credentials

    @Test("credentials come from the first auth file that names the registry, in containers' order")
    func authFileOrder() throws {
        let directory = NSTemporaryDirectory() + "coffer-auth-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: "\(directory)/xdg/containers", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(directory)/docker", withIntermediateDirectories: true)
        func auth(_ user: String, _ password: String) -> String { Data("\(user):\(password)".utf8).base64EncodedString() }
        let endpoint = try OCIEndpoint(parsing: "oci://r.example:5000/coffer")
        // The explicit file names another registry only: the next file's entry is used.
        try #"{"auths": {"other:5000": {"auth": "\#(auth("x", "y"))"}}}"#.write(
            toFile: "\(directory)/explicit.json",
            atomically: true,
            encoding: .utf8
        )
        try #"{"auths": {"r.example:5000": {"auth": "\#(auth("xdg", "p:w"))"}}}"#.write(
            toFile: "\(directory)/xdg/containers/auth.json",
            atomically: true,
            encoding: .utf8
        )
        try #"{"auths": {"https://r.example:5000/v1/": {"auth": "\#(auth("docker", "d"))"}}}"#.write(
            toFile: "\(directory)/docker/config.json",
            atomically: true,
            encoding: .utf8
        )
        let environment = [
            "REGISTRY_AUTH_FILE": "\(directory)/explicit.json", "XDG_RUNTIME_DIR": "\(directory)/xdg", "DOCKER_CONFIG": "\(directory)/docker",
        ]
        #expect(try OCICredentials.lookup(for: endpoint, environment: environment) == OCICredentials(username: "xdg", password: "p:w"))
        var withoutXDG = environment
        withoutXDG["XDG_RUNTIME_DIR"] = nil
        // Docker's older URL-shaped key matches too.
        #expect(try OCICredentials.lookup(for: endpoint, environment: withoutXDG) == OCICredentials(username: "docker", password: "d"))
        #expect(try OCICredentials.lookup(for: endpoint, environment: ["HOME": directory]) == nil)
    }

    @Test("a broken or missing auth file is one line naming it, not anonymous access")
    func brokenAuthFiles() throws {
        let directory = NSTemporaryDirectory() + "coffer-auth-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let endpoint = try OCIEndpoint(parsing: "oci://r.example:5000/coffer")
        let cases: [(String, String)] = [
            ("not json", "the containers auth file \(directory)/auth.json is not a JSON object"),
            (
                #"{"auths": {"r.example:5000": {}}, "credsStore": "pass"}"#,
                "the containers auth file \(directory)/auth.json has an entry for r.example:5000 without an 'auth' value (credential helpers are not supported)"
            ),
            (
                #"{"auths": {"r.example:5000": {"auth": "bm8tY29sb24="}}}"#,
                "the containers auth file \(directory)/auth.json has an 'auth' for r.example:5000 that is not base64 of USER:PASSWORD"
            ),
        ]
        for (content, message) in cases {
            try content.write(toFile: "\(directory)/auth.json", atomically: true, encoding: .utf8)
            #expect {
                _ = try OCICredentials.lookup(for: endpoint, environment: ["REGISTRY_AUTH_FILE": "\(directory)/auth.json"])
            } throws: { error in
                (error as? CofferRegistryError)?.description == message
            }
        }
        #expect {
            _ = try OCICredentials.lookup(for: endpoint, environment: ["REGISTRY_AUTH_FILE": "\(directory)/absent.json"])
        } throws: { error in
            (error as? CofferRegistryError)?.description == "REGISTRY_AUTH_FILE names \(directory)/absent.json, which does not exist"
        }
    }

    @Test("WWW-Authenticate challenges, quoted and not")
    func challenges() {
        let bearer = OCIAuthenticator.parse(#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#)
        #expect(bearer?.scheme == "bearer")
        #expect(bearer?.parameters == ["realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"])
        #expect(
            OCIAuthenticator.parse(#"Basic realm="coffer-test""#) == OCIAuthenticator.Challenge(scheme: "basic", parameters: ["realm": "coffer-test"])
        )
        #expect(OCIAuthenticator.parse("Basic realm=plain, charset=UTF-8")?.parameters == ["realm": "plain", "charset": "UTF-8"])
        #expect(OCIAuthenticator.parse("") == nil)
    }

    // MARK: - Tags

    @Test("the layout of a version is byte for byte the one tools/interop writes from docs/FORMAT.md (vectors/oci-layout-v1.json)")
    func layoutMatchesInteropVector() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/interop/vectors/oci-layout-v1.json")
        let vector = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let input = try #require(vector["input"] as? [String: Any])
        let output = try #require(vector["output"] as? [String: String])
        let files = try #require(input["files"] as? [[String: Any]]).map { file in
            PublishedVersion.File(
                path: file["path"] as! String,
                size: file["size"] as! Int,
                plaintextSHA256: file["sha256"] as! String,
                sealedSHA256: file["sealed_sha256"] as! String,
                sealedSize: file["sealed_size"] as! Int
            )
        }
        let version = PublishedVersion(
            model: input["model"] as! String,
            version: input["version"] as! String,
            digest: input["digest"] as! String,
            created: input["created"] as! String,
            publisherKeyID: input["publisher_key_id"] as! String,
            files: files,
            envelope: Array(Data(base64Encoded: input["envelope"] as! String)!),
            modelSigningBundle: Array(Data(base64Encoded: input["bundle"] as! String)!)
        )
        let layout = try OCIVersionLayout(version)
        #expect(layout.tag == output["tag"])
        #expect(layout.manifestDigest == output["manifest_digest"])
        #expect(String(decoding: layout.config, as: UTF8.self) == output["config"])
        #expect(String(decoding: layout.manifest, as: UTF8.self) == output["manifest"])
        #expect(String(decoding: layout.statementManifest, as: UTF8.self) == output["statement_manifest"])
        #expect(String(decoding: layout.bundleManifest, as: UTF8.self) == output["bundle_manifest"])
        #expect(String(decoding: layout.referrersIndex(merging: nil), as: UTF8.self) == output["index"])
    }

    @Test("a version's tag: readable, within OCI's grammar, and different for names that differ only in / or case")
    func versionTags() {
        #expect(OCIVersionLayout.tag(model: "team/fraud", version: "3") == "team_fraud_3-66ffc51dc25c0229f73f079ec18b6da4")
        let names: [(String, String)] = [
            ("team/a-b", "1"), ("team-a/b", "1"), ("team_a/b", "1"), ("Team/Fraud", "1"), ("team/fraud", "1"), ("team/fraud", "1.0"),
            ("team/fraud.1", "0"), (".hidden/x", "1"), ("-dash", "v"), (String(repeating: "n", count: 200), String(repeating: "9", count: 64)),
            (String(repeating: "n", count: 200), String(repeating: "9", count: 63) + "8"),
        ]
        let tags = names.map { OCIVersionLayout.tag(model: $0.0, version: $0.1) }
        #expect(Set(tags).count == tags.count)
        #expect(Set(tags.map { $0.lowercased() }).count == tags.count, "no two differ only in case")
        for tag in tags {
            #expect(OCIEndpoint.isValidTag(tag), "\(tag)")
            #expect(!(tag.hasPrefix("sha256-") && tag.count == 71 && !tag.dropFirst(7).contains("-")), "never a referrers tag")
        }
        #expect(tags[0].hasPrefix("team_a-b_1-"))
        #expect(tags[7].hasPrefix("_hidden_x_1-"))
        #expect(tags[9].count == 128)
    }
}
