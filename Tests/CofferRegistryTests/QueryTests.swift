import CofferCrypto
import Testing

@testable import CofferRegistry

struct QueryTests {
    private func populated(on backend: MetadataBackend = .sqlite) async throws -> RegistryFixture {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        try await f.registry.trust(alice.publicIdentity, by: try f.registrySigner)
        let dir = try f.makeModel("model", ["w.bin": bytes(100)])
        for (model, epsilon, pruning) in [("a", 1.0, 0.5), ("a", 3.0, 0.2), ("b", 8.0, 0.9), ("b", nil, nil) as (String, Double?, Double?)] {
            var request = PushRequest(model: model, paths: [dir])
            request.privacy.epsilon = epsilon
            request.privacy.pruningRatio = pruning
            request.privacy.mechanism = epsilon == nil ? nil : "dp-sgd"
            request.privacy.standardisation = epsilon == nil ? nil : epsilon! > 5 ? "nonprivate" : "public"
            _ = try await f.registry.push(request, publisher: alice)
        }
        return f
    }

    @Test(arguments: MetadataBackend.available) func listFiltersOnPrivacyColumns(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        await #expect(try f.registry.list().count == 4)
        await #expect(try f.registry.list(model: "a").map(\.version) == ["2", "1"])
        let private3 = try await f.registry.list(where: "epsilon<=3")
        #expect(private3.map { "\($0.model):\($0.version)" }.sorted() == ["a:1", "a:2"])
        await #expect(try f.registry.list(where: "epsilon <= 3 and pruning_ratio>=0.5").map(\.version) == ["1"])
        await #expect(try f.registry.list(where: "mechanism='dp-sgd' and epsilon>2").count == 2)
        await #expect(try f.registry.list(where: "epsilon!=1").count == 2, "NULL epsilon never matches")
        // The versions whose feature statistics were released outside the DP guarantee.
        await #expect(try f.registry.list(where: "standardisation='nonprivate'").map { "\($0.model):\($0.version)" } == ["b:1"])
        await #expect(try f.registry.list(where: "standardisation='public'").count == 2)
    }

    @Test(arguments: MetadataBackend.available) func listFiltersOnNamesTagsAndDates(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        let dir = try f.makeModel("team", ["w.bin": bytes(10)])
        var request = PushRequest(model: "team/icu", paths: [dir])
        request.tags = ["stage": "prod"]
        _ = try await f.registry.push(request, publisher: try person("alice"))
        try await f.registry.tag(try ModelReference(parsing: "a:1"), set: ["stage": "staging"])
        func listed(_ filter: String) async throws -> [String] {
            try await f.registry.list(where: filter).map { "\($0.model):\($0.version)" }.sorted()
        }
        #expect(try await listed("name='a'") == ["a:1", "a:2"])
        #expect(try await listed("name!='a' and name!='b'") == ["team/icu:1"])
        #expect(try await listed("name='team/*'") == ["team/icu:1"])
        #expect(try await listed("name='te*'") == ["team/icu:1"], "a prefix, not a namespace")
        #expect(try await listed("name='%*'").isEmpty, "no LIKE wildcard reaches SQL")
        #expect(try await listed("tag.stage='prod'") == ["team/icu:1"])
        #expect(try await listed("tag.stage!='prod'") == ["a:1", "a:2", "b:1", "b:2"], "untagged versions included")
        #expect(try await listed("tag.Stage='prod'").isEmpty, "tag keys keep their case")
        #expect(try await listed("created>=1h").count == 5)
        #expect(try await listed("created<1h").isEmpty)
        #expect(try await listed("created>='2026-01-01' and created<'2999-01-01T00:00:00+02:00'").count == 5)
        #expect(try await listed("created<'2000-01-01' and epsilon<=3").isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func modelOverviewsCountAndNameTheNewestVersionOfEachModel(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        let listed = try await f.registry.list()
        let overviews = try await f.registry.modelOverviews()
        #expect(overviews.map(\.name) == ["b", "a"], "the model with the newest version first")
        for overview in overviews {
            let versions = listed.filter { $0.model == overview.name }
            #expect(overview.versions == versions.count)
            #expect(overview.latestVersion == versions.first?.version && overview.latestCreated == versions.first?.created)
        }
    }

    @Test(arguments: MetadataBackend.available) func versionPagesWalkAModelNewestFirstByKeyset(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        let alice = try person("alice")
        let dir = try f.makeModel("more", ["w.bin": bytes(10)])
        for _ in 1...5 { _ = try await f.registry.push(PushRequest(model: "a", paths: [dir]), publisher: alice) }
        let everything = try await f.registry.list(model: "a")
        #expect(everything.map(\.version) == ["7", "6", "5", "4", "3", "2", "1"])
        var seen: [VersionSummary] = []
        var before: String? = nil
        repeat {
            let page = try await f.registry.versionPage(model: "a", before: before, limit: 3)
            #expect(page.versions.count <= 3)
            seen += page.versions
            before = page.next
        } while before != nil && seen.count < 20
        #expect(seen == everything, "the pages, joined, are every version as list shows it (checked the same way), newest first, none twice")
        await #expect(throws: CofferRegistryError.unknownVersion("a:99")) { _ = try await f.registry.versionPage(model: "a", before: "99") }
        await #expect(throws: CofferRegistryError.unknownModel("c")) { _ = try await f.registry.versionPage(model: "c") }
        let message = await refusal { _ = try await f.registry.versionPage(model: "a", limit: 0) }
        #expect(message.contains("a page holds from 1 to 1000 versions, not 0"))
    }

    @Test(arguments: [
        ("epsilon", "'epsilon' has no comparison (use < <= > >= = !=)"),
        (
            "colour=3",
            "unknown field 'colour' (fields: accountant, achieved_sparsity, audit_epsilon, batch_sampling, clipping_norm, dataset_id, dataset_size, delta, epochs, epsilon, mechanism, membership_auc, membership_tpr, noise_multiplier, privacy_unit, pruning_method, pruning_ratio, sampling_rate, standardisation, steps, name, tag.KEY, created)"
        ),
        ("name<'a'", "name takes = or != and a 'quoted' value"),
        ("created>=yesterday", "created takes a 'quoted' RFC 3339 time or date, or an age such as 7d, 12h, 90m; got 'yesterday'"),
        ("created>='2026-13-01'", "created: '2026-13-01' is not an RFC 3339 time or a date such as 2026-11-01"),
        ("epsilon<=abc", "epsilon needs a number, got 'abc'"),
        ("mechanism<'x'", "mechanism takes = or != and a 'quoted' value"),
        ("epsilon=<3", "epsilon needs a number, got '<3'"),
        ("", "empty expression"),
    ])
    func badFiltersNameTheProblem(filter: String, message: String) async throws {
        let f = try await populated()
        await #expect(throws: CofferRegistryError.invalidFilter(message)) { _ = try await f.registry.list(where: filter) }
    }

    @Test(arguments: MetadataBackend.available) func showAndJSONCarryThePrivacyFieldsByName(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        let shown = try await f.registry.show(try ModelReference(parsing: "a:1"))
        #expect(shown.files.map(\.path) == ["w.bin"])
        guard case .object(let json) = shown.json else {
            Issue.record("not an object")
            return
        }
        #expect(json["epsilon"] == .number(1.0))
        #expect(json["delta"] == .null)
        #expect(json["pruning_ratio"] == .number(0.5))
        #expect(json["model"] == .string("a"))
    }

    @Test(arguments: MetadataBackend.available) func aliasesMoveAndResolve(on backend: MetadataBackend) async throws {
        let f = try await populated(on: backend)
        try await f.registry.setAlias("prod", model: "a", version: "1", by: try f.registrySigner)
        await #expect(try f.registry.show(try ModelReference(parsing: "a@prod")).version == "1")
        try await f.registry.setAlias("prod", model: "a", version: "2", by: try f.registrySigner)
        await #expect(try f.registry.show(try ModelReference(parsing: "a@prod")).version == "2")
        await #expect(try f.registry.list(model: "a").first { $0.version == "2" }?.aliases == ["prod"])
        try await f.registry.removeAlias("prod", model: "a", by: try f.registrySigner)
        await #expect(throws: CofferRegistryError.unknownAlias("a@prod")) { _ = try await f.registry.show(try ModelReference(parsing: "a@prod")) }
        await #expect(throws: CofferRegistryError.unknownVersion("a:9")) {
            try await f.registry.setAlias("prod", model: "a", version: "9", by: try f.registrySigner)
        }
        await #expect(throws: CofferRegistryError.unknownModel("zzz")) { _ = try await f.registry.list(model: "zzz") }
    }
}
