import CofferTestSupport
import CofferTraining
import Foundation
import Testing

@testable import CofferCrypto
@testable import CofferFederated

/// A small federation over the RAND health data split across sites, for tests.
final class FederationFixture: @unchecked Sendable {
    let directory: URL
    let recipe: FederatedRecipe
    let coordinator = UnlockedIdentity(try! Identity.generate(name: "coordinator"))
    let sites: [UnlockedIdentity]
    let paths: [String]

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Splits `data/randhie.csv` into `count` shards (row i to shard i mod count), or by a column's value when `byColumn`.
    init(sites count: Int, rowsPerSite: Int = 1500, recipe overrides: [String: Any] = [:]) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-fl-\(UUID().uuidString)")
        self.directory = directory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let text = try String(contentsOf: Self.repository.appendingPathComponent("data/randhie.csv"), encoding: .utf8)
        let lines = text.split(separator: "\n")
        var shards = [[Substring]](repeating: [lines[0]], count: count)
        for (i, line) in lines.dropFirst().enumerated() where i / count < rowsPerSite { shards[i % count].append(line) }
        paths = try shards.enumerated().map { i, rows in
            let path = directory.appendingPathComponent("site\(i).csv").path
            try (rows.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        var json: [String: Any] = [
            "data": "unused.csv", "features": ["lncoins", "idp", "lpi", "fmde", "disea"],
            "tasks": [
                ["name": "health", "kind": "classification", "one_hot": ["hlthg", "hlthf", "hlthp"]],
                ["name": "limited", "kind": "binary", "column": "physlm", "threshold": 0.5],
            ],
            "trunk": [16], "epochs": 1, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.9, "expected_batch_size": 64,
            "privacy": false, "seed": 3, "validation_split": 0.2,
        ]
        for (key, value) in overrides { json[key] = value }
        let bytes = try JSONSerialization.data(withJSONObject: json)
        recipe = try FederatedRecipe(try TrainingRecipe(json: Array(bytes), path: directory.appendingPathComponent("recipe.json").path))
        sites = makeSites(count)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func core(_ configuration: FederationConfiguration) throws -> CoordinatorCore {
        try CoordinatorCore(configuration: configuration, recipe: recipe, identity: coordinator, sites: sites.map(\.publicIdentity))
    }

    func site(_ i: Int, rounds: Int = 5) throws -> FederatedSite {
        try FederatedSite(
            identity: UnlockedIdentity(try Identity.generate(name: "unused").withSameKeys(as: sites[i])),
            coordinator: coordinator.publicIdentity,
            recipe: recipe,
            data: try LocalData(path: paths[i], recipe: recipe),
            rounds: rounds
        )
    }

    func federation(_ configuration: FederationConfiguration) throws -> LocalFederation {
        try LocalFederation(core: core(configuration), sites: (0..<sites.count).map { try site($0, rounds: configuration.rounds) })
    }
}

extension Identity {
    /// A second in-memory copy of `other`'s identity (tests hand one to a site and keep one to forge with).
    consuming func withSameKeys(as other: UnlockedIdentity) -> Identity {
        let secrets = other.identity.secretBytes()
        return try! Identity(name: other.publicIdentity.name, secrets: secrets)
    }
}

@Suite(.ownThread)
struct FederationTests {
    static func configuration(rounds: Int = 1, _ edit: (inout FederationConfiguration) -> Void = { _ in }) -> FederationConfiguration {
        var c = FederationConfiguration()
        c.rounds = rounds
        c.clipRange = 2
        edit(&c)
        return c
    }

    @Test func theStatisticsRoundGivesThePooledStandardisation() throws {
        let fixture = try FederationFixture(sites: 3)
        let federation = try fixture.federation(Self.configuration())
        _ = try federation.run()
        let shared = try #require(federation.core.standardisation)
        // Pool every site's training rows and standardise as coffer train would.
        var rows: [[Double]] = []
        for path in fixture.paths {
            let data = try LocalData(path: path, recipe: fixture.recipe)
            let columns = try fixture.recipe.recipe.features.map { try data.table.column($0) }
            for r in data.trainRows { rows.append(columns.map { data.table.value(row: r, column: $0) }) }
        }
        for f in 0..<5 {
            let mean = rows.map { $0[f] }.reduce(0, +) / Double(rows.count)
            let deviation = (rows.map { ($0[f] - mean) * ($0[f] - mean) }.reduce(0, +) / Double(rows.count)).squareRoot()
            #expect(abs(shared.means[f] - mean) < 1e-6, "feature \(f)")
            #expect(abs(shared.standardDeviations[f] - deviation) < 1e-5 * max(deviation, 1), "feature \(f)")
        }
    }

    @Test func aSecureFedAvgRoundEqualsPlaintextFedAvgWithinTheQuantizationBound() throws {
        let fixture = try FederationFixture(sites: 4)
        let federation = try fixture.federation(Self.configuration())
        // One site speaks JSON, the others binary: the coordinator answers each in the form of its join.
        federation.sites[1].form = .json
        let records = try federation.run()
        #expect(records.map(\.outcome) == ["ok", "ok"])
        #expect(federation.refusals.isEmpty, "\(federation.refusals)")
        let finished = try (0..<4).map { try #require(federation.core.task(for: federation.sites[$0].keyID, after: 0)) }
        #expect(finished.map { MessageCoding.form(of: $0.payload) } == [.binary, .json, .binary, .binary])
        // The same round in plaintext: each site trains from the initial model; the global model moves by the weighted mean.
        let standardisation = try #require(federation.core.standardisation)
        let initial = fixture.recipe.initialModel()
        var mean = [Double](repeating: 0, count: initial.parameterCount)
        var total = 0.0
        for path in fixture.paths {
            let data = try LocalData(path: path, recipe: fixture.recipe)
            let training = try LocalTraining(recipe: fixture.recipe, trainingRows: data.trainingCount, rounds: 1)
            let result = try training.run(from: initial, on: data.datasets(standardisation).training, seed: 3 &+ 1 &* 0x9E37_79B9)
            let update = zip(ModelVector.flatten(result.model), ModelVector.flatten(initial)).map { Double($0 - $1) }
            for j in mean.indices { mean[j] += Double(data.trainingCount) * min(max(update[j], -2), 2) }
            total += Double(data.trainingCount)
        }
        let expected = zip(ModelVector.flatten(initial), mean).map { Double($0) + $1 / total }
        let got = federation.core.global.map(Double.init)
        let bound = try Self.configuration().quantizer().errorBound + 1e-6  // plus float32 rounding of the stored model
        let worst = zip(got, expected).map { abs($0 - $1) }.max()!
        #expect(worst <= bound, "worst \(worst), bound \(bound)")
        #expect(records[1].participants.count == 4)
    }

    @Test func thePlainBaselineComputesTheSameRoundWithoutSecureAggregation() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 500)
        let secure = try fixture.federation(Self.configuration())
        _ = try secure.run()
        let data = try fixture.paths.map { try LocalData(path: $0, recipe: fixture.recipe) }
        let plain = try PlainFederation(recipe: fixture.recipe, sites: data, configuration: Self.configuration())
        try plain.run()
        #expect(plain.standardisation == secure.core.standardisation)
        let worst = zip(plain.global, secure.core.global).map { abs(Double($0) - Double($1)) }.max()!
        #expect(worst <= (try Self.configuration().quantizer().errorBound) + 1e-6, "worst \(worst)")
        // The benchmark's losses: cross-entropy and log loss of the final model on a labelled table.
        let table = try CSVTable(contentsOf: fixture.paths[0])
        let preprocessing = Preprocessing(
            features: fixture.recipe.recipe.features,
            means: plain.standardisation!.means,
            standardDeviations: plain.standardisation!.standardDeviations,
            tasks: fixture.recipe.recipe.tasks
        )
        let losses = try Evaluation.losses(plain.globalModel, preprocessing: preprocessing, labelled: table)
        #expect(Set(losses.keys) == ["health", "limited"])
        #expect(losses["health"]! > 0.3 && losses["health"]! < log(4.0) + 0.5, "\(losses)")
        #expect(losses["limited"]! > 0 && losses["limited"]! < log(2.0) + 0.5, "\(losses)")
    }

    @Test func trainingOverRoundsImprovesTheGlobalModelAndDropoutsDoNotStopIt() throws {
        let fixture = try FederationFixture(sites: 5)
        let federation = try fixture.federation(Self.configuration(rounds: 4))
        let dropper = fixture.sites[1].publicIdentity.keyID
        // Site 1 drops before masking in round 2, another before unmasking in round 3: both recovered (n - t = 1).
        let late = fixture.sites[3].publicIdentity.keyID
        federation.dropout = { round, site in
            if round == 2 && site == dropper { return .masked }
            if round == 3 && site == late { return .unmask }
            return nil
        }
        let records = try federation.run()
        #expect(records.map(\.outcome) == ["ok", "ok", "ok", "ok", "ok"])
        #expect(records[2].participants.count == 4 && !records[2].participants.contains(dropper))
        #expect(records[3].participants.count == 5)
        let data = try LocalData(path: fixture.paths[0], recipe: fixture.recipe)
        let validation = try data.datasets(federation.core.standardisation!).validation
        let before = TrainingRun.evaluate(fixture.recipe.initialModel(), on: validation)
        let after = TrainingRun.evaluate(federation.core.globalModel, on: validation)
        #expect(after[0].value > before[0].value, "health accuracy \(before[0].value) -> \(after[0].value)")
    }

    /// SecAgg+'s ring follows the indices: they must be a fresh random order each round, not the key IDs' order that
    /// anyone choosing which sites to corrupt could read in advance.
    @Test func eachRoundPlacesTheSitesInAFreshRandomOrder() throws {
        let fixture = try FederationFixture(sites: 8, rowsPerSite: 40)
        let core = try fixture.core(Self.configuration(rounds: 4))
        let sites = try (0..<8).map { try fixture.site($0) }
        for site in sites { try site.welcomed(try core.join(site.joinRequest(session: core.sessionHex))) }
        try core.begin()
        var orders: [[String]] = []
        for round in 0...4 {
            #expect(core.startRound(round) == nil)
            let task = try #require(core.task(for: sites[0].keyID, after: 0))
            let roster = try #require(try MessageCoding.decode(SiteTask.self, from: task.payload, what: "task").roster)
            #expect(Set(roster.map(\.index)) == Set(1...8))
            orders.append(roster.sorted { $0.index < $1.index }.map(\.site))
        }
        let byKeyID = sites.map(\.keyID).sorted()
        // Five draws of 8! orders: all equal, or all in key-ID order, with probability below 1e-18.
        #expect(Set(orders).count > 1, "\(orders)")
        #expect(orders.contains { $0 != byKeyID })
    }

    @Test func tooManyDropoutsAbortTheRoundAndLeaveTheModelAsItWas() throws {
        let fixture = try FederationFixture(sites: 4)
        let federation = try fixture.federation(Self.configuration(rounds: 2))
        let gone = Set(fixture.sites[0...1].map(\.publicIdentity.keyID))
        federation.dropout = { round, site in round == 2 && gone.contains(site) ? .masked : nil }
        let records = try federation.run()
        #expect(records.map(\.outcome) == ["ok", "ok", "aborted"])
        let reason = try #require(records[2].reason)
        #expect(reason.hasPrefix("round 2 aborted: only 2 of 4 sites answered the masked stage, the threshold is 3"), "\(reason)")
        #expect(records[2].model == records[1].model)
        #expect(federation.core.global == records[1].model)
    }

    @Test func dpFedAvgAddsNoiseAndAccountsSiteLevelEpsilon() throws {
        let fixture = try FederationFixture(sites: 6, rowsPerSite: 400)
        let configuration = Self.configuration(rounds: 3) { c in
            c.dp = .init(clipNorm: 0.5, noiseMultiplier: 1.2, delta: 1e-5)
            c.nonPrivateStatistics = true
            c.sampleRate = 0.9
            c.minimumSites = 3
        }
        let federation = try fixture.federation(configuration)
        let records = try federation.run()
        let last = try #require(records.last?.privacy)
        let reference = try SiteLevelPrivacy.epsilon(sampleRate: 0.9, noiseMultiplier: 1.2, rounds: 3, delta: 1e-5, withPLD: false)
        #expect(last == reference)
        let full = try #require(try federation.core.privacyReport())
        #expect(full.epsilon <= full.epsilonRDP && full.epsilonRDP == last.epsilonRDP && full.epsilonPLD != nil)
        #expect(records.last?.roundsAccounted == 3)
        var rdp = RDPAccountant()
        rdp.compose(PrivacySegment(sampleRate: 0.9, noiseMultiplier: 1.2, steps: 3))
        #expect(abs(last.epsilonRDP - rdp.epsilon(delta: 1e-5).epsilon) < 1e-12)
        // Noise of std sigma*S/(qN) per coordinate moved the model: far more than the clipped updates alone could. The
        // first update round that ran: with q = 0.9, one round in about 800 samples fewer than 3 of the 6 sites and is
        // skipped, leaving the model as it was.
        let first = try #require(records.dropFirst().first { $0.outcome == "ok" })
        let moved = zip(first.model, ModelVector.flatten(fixture.recipe.initialModel())).map { Double($0 - $1) }
        let rms = (moved.map { $0 * $0 }.reduce(0, +) / Double(moved.count)).squareRoot()
        #expect(rms > 0.3 * 1.2 * 0.5 / (0.9 * 6), "rms \(rms)")
    }

    @Test func localDPSGDAtASiteIsAccountedRecordLevelAndSeparately() throws {
        let fixture = try FederationFixture(
            sites: 3,
            rowsPerSite: 400,
            recipe: ["privacy": true, "noise_multiplier": 1.1, "delta": 1e-5, "clipping_norm": 1.0]
        )
        let federation = try fixture.federation(Self.configuration(rounds: 2))
        let records = try federation.run()
        #expect(records.map(\.outcome) == ["ok", "ok", "ok"])
        #expect(records.last?.privacy == nil)  // no site-level claim without DP-FedAvg
        for site in federation.sites {
            #expect(site.roundsTrained == 2)
            let training = try LocalTraining(recipe: fixture.recipe, trainingRows: 320, rounds: 2)
            var accountant = RDPAccountant()
            accountant.compose(PrivacySegment(sampleRate: training.sampleRate, noiseMultiplier: 1.1, steps: training.stepsPerRound * 2))
            let expected = accountant.epsilon(delta: 1e-5).epsilon
            let epsilon = try #require(site.recordLevelEpsilon)
            #expect(abs(epsilon - expected) < 1e-12, "\(epsilon) vs \(expected)")
        }
    }

    @Test func aDPSitesQuantizedUpdateStaysWithinTheClipNorm() throws {
        let parameters = 5000
        let norm = try FederationConfiguration.preQuantizationNorm(clipNorm: 1, bits: 16, parameters: parameters)
        let quantizer = try Quantizer(clipRange: 1, bits: 16)
        var random = TestRandom(seed: 9)
        for _ in 0..<20 {
            var update = (0..<parameters).map { _ in Float(random.uniform(-1, 1)) }
            let length = update.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            update = update.map { $0 * Float(norm / length) }
            var vector = [UInt64](repeating: 0, count: parameters + 1)
            vector.withUnsafeMutableBufferPointer { _ = quantizer.encode(update, weight: 1, into: $0) }
            let decoded = quantizer.decodeSum(vector).sum
            let decodedNorm = decoded.reduce(0.0) { $0 + $1 * $1 }.squareRoot()
            #expect(decodedNorm <= 1, "decoded norm \(decodedNorm)")
        }
        #expect(throws: FederatedError.self) { _ = try FederationConfiguration.preQuantizationNorm(clipNorm: 1, bits: 8, parameters: 100_000) }
    }
}
