import CofferTestSupport
import CofferTraining
import Foundation
import Synchronization
import Testing

@testable import CofferCrypto
@testable import CofferFederated

/// Bad input, each refused with one line: sites with other recipes or features, strangers, forgeries, stale, replayed,
/// out-of-stage and malformed messages.
@Suite(.ownThread)
struct RefusalTests {
    static func configuration() -> FederationConfiguration {
        var c = FederationConfiguration()
        c.rounds = 2
        c.clipRange = 2
        return c
    }

    @Test func aSiteWithOtherFeaturesOrAnotherRecipeIsRefusedAtJoin() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 200)
        let core = try fixture.core(Self.configuration())
        let keyID = fixture.sites[0].publicIdentity.keyID
        for (edit, expected) in [
            (
                { (r: inout TrainingRecipe) in r.features = ["lncoins", "idp", "lpi", "fmde"] },
                "recipe mismatch: site \(keyID) trains on features [lncoins, idp, lpi, fmde], the federation on [lncoins, idp, lpi, fmde, disea]"
            ),
            ({ (r: inout TrainingRecipe) in r.learningRate = 0.1 }, "recipe mismatch: site \(keyID) has recipe"),
        ] {
            var other = fixture.recipe.recipe
            edit(&other)
            let recipe = try FederatedRecipe(other)
            let site = try FederatedSite(
                identity: UnlockedIdentity(try Identity.generate(name: "x").withSameKeys(as: fixture.sites[0])),
                coordinator: fixture.coordinator.publicIdentity,
                recipe: recipe,
                data: try LocalData(path: fixture.paths[0], recipe: recipe),
                rounds: 2
            )
            let error = #expect(throws: FederatedError.self) { _ = try core.join(site.joinRequest(session: core.sessionHex)) }
            #expect(error?.description.hasPrefix(expected) == true, "\(error?.description ?? "")")
        }
        #expect(core.joined.isEmpty)
    }

    /// The coordinator checks public standardisation as a recipe does: a zero deviation would divide every site's
    /// features by zero.
    @Test func aPublicStandardisationThatCannotStandardiseIsRefused() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 50)
        for (standardisation, reason) in [
            (
                PublicStandardisation(means: [0, 0, 0, 0], standardDeviations: [1, 1, 1, 1]),
                "standardisation: means and standard_deviations need one value per feature (5)"
            ),
            (
                PublicStandardisation(means: [0, 0, 0, 0, 0], standardDeviations: [1, 1, 0, 1, 1]),
                "standardisation: means must be finite and standard_deviations finite and at least 1e-06"
            ),
        ] {
            var configuration = Self.configuration()
            configuration.standardisation = standardisation
            #expect(throws: FederatedError.invalidParameter(reason)) { try fixture.core(configuration) }
        }
    }

    @Test func strangersAndForgeriesAreRefused() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 200)
        let core = try fixture.core(Self.configuration())
        let stranger = UnlockedIdentity(try Identity.generate(name: "stranger"))
        let join = JoinRequest(
            session: core.sessionHex,
            site: stranger.publicIdentity.keyID,
            recipeDigest: fixture.recipe.digest,
            features: [],
            tasks: []
        )
        #expect(throws: FederatedError.unknownSite(stranger.publicIdentity.keyID)) {
            _ = try core.join(SignedMessage.sign(MessageCoding.encode(join, as: .json), by: stranger.identity))
        }
        #expect(FederatedError.unknownSite("abc").description == "unknown site abc: not enrolled with this coordinator")
        // A join claiming site 0 but signed by the stranger's key.
        let site0 = fixture.sites[0].publicIdentity.keyID
        var forged = SignedMessage.sign(
            MessageCoding.encode(JoinRequest(session: core.sessionHex, site: site0, recipeDigest: "", features: [], tasks: []), as: .binary),
            by: stranger.identity
        )
        forged.signer = site0
        let error = #expect(throws: FederatedError.self) { _ = try core.join(forged) }
        #expect(error?.description == "signature does not verify: the message claiming to be from \(site0) was not signed by it (or was altered)")
        // Site 1 signing a join in site 0's name.
        let sideways = SignedMessage.sign(
            MessageCoding.encode(JoinRequest(session: core.sessionHex, site: site0, recipeDigest: "", features: [], tasks: []), as: .binary),
            by: fixture.sites[1].identity
        )
        #expect(throws: FederatedError.signatureInvalid("a join for site \(site0) signed by \(fixture.sites[1].publicIdentity.keyID)")) {
            _ = try core.join(sideways)
        }
    }

    /// Joins the first `count` sites (all by default) and runs round 0; returns them.
    static func started(_ fixture: FederationFixture, _ core: CoordinatorCore, count: Int? = nil) throws -> [FederatedSite] {
        let sites = try (0..<(count ?? fixture.sites.count)).map { try fixture.site($0, rounds: 2) }
        for site in sites { try site.welcomed(try core.join(site.joinRequest(session: core.sessionHex))) }
        try core.begin()
        _ = try LocalFederation(core: core, sites: sites).runRound(0)
        return sites
    }

    @Test func staleReplayedAndOutOfStageMessagesAreRefusedAndTheRoundGoesOn() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 300)
        let core = try fixture.core(Self.configuration())
        let sites = try Self.started(fixture, core)
        #expect(core.startRound(1) == nil)
        let keyID = sites[0].keyID
        let task = try #require(core.task(for: keyID, after: sites[0].lastSeq))
        let advertise = try #require(try sites[0].handle(task))
        _ = try core.submit(advertise)
        // The same signed message again: a replay.
        let replay = #expect(throws: FederatedError.self) { _ = try core.submit(advertise) }
        #expect(replay?.description == "replayed or duplicate message: site \(keyID) already answered the advertise stage of round 1")
        // The same task again at the site: refused there too.
        let again = #expect(throws: FederatedError.self) { _ = try sites[0].handle(task) }
        #expect(again?.description.hasPrefix("replayed or duplicate message: task") == true)
        // A message for a later stage, signed and well formed, during this one.
        var early = Submission(session: core.sessionHex, site: keyID, round: 1, stage: .masked)
        early.vector = Base64Bytes([0, 0, 0, 0, 0, 0, 0, 0])
        let wrong = #expect(throws: FederatedError.self) {
            _ = try core.submit(SignedMessage.sign(MessageCoding.encode(early, as: .binary), by: fixture.sites[0].identity))
        }
        #expect(wrong?.description == "site \(keyID) sent a masked message during the advertise stage")

        // Finish round 1 with everyone, then replay round 1's message in round 2.
        let federation = LocalFederation(core: core, sites: sites)
        for site in sites.dropFirst() { _ = try core.submit(try #require(try site.handle(core.task(for: site.keyID, after: site.lastSeq)!))) }
        var record: RoundRecord?
        while record == nil {
            record = core.closeStage()
            if record == nil { try federation.deliverForTests() }
        }
        #expect(record?.outcome == "ok")
        #expect(core.startRound(2) == nil)
        let stale = #expect(throws: FederatedError.self) { _ = try core.submit(advertise) }
        #expect(stale?.description == "site \(keyID) sent a message for round 1, the current round is 2")
    }

    /// Under DP a site that skips clipping is bounded in the aggregate (helper-47: one such site set every weight of
    /// the published model to 100). A weight other than 1 aborts the round, the model as it was; an update past S is
    /// scaled onto the ball of radius qN S, so the model moves by at most the learning rate times S (plus the noise,
    /// made negligible here), and the round's record says nothing about the un-noised sum (helper-48).
    @Test(arguments: [true, false]) func anUnclippedUpdateIsBoundedInADPRound(inWeight: Bool) throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 300)
        var configuration = Self.configuration()
        configuration.dp = .init(clipNorm: 0.5, noiseMultiplier: 1e-9, delta: 1e-5)
        configuration.nonPrivateStatistics = true
        let core = try fixture.core(configuration)
        let sites = try Self.started(fixture, core)
        let before = core.global
        #expect(core.startRound(1) == nil)
        let federation = LocalFederation(core: core, sites: sites)
        try federation.deliverForTests()  // advertise: each site trains and encodes its input
        sites[0].input.bytes.withUnsafeMutableBytes { raw in
            let elements = raw.bindMemory(to: UInt64.self)
            if inWeight { elements[elements.count - 1] = 1_000_000 } else { elements[0] &+= 1 << 40 }
        }
        var record: RoundRecord?
        while record == nil {
            record = core.closeStage()
            if record == nil { try federation.deliverForTests() }
        }
        if inWeight {
            #expect(record?.outcome == "aborted", "\(String(describing: record))")
            #expect(
                record?.reason == "round 1 aborted: the aggregate weighs 1000002, not the 3 of its sites: a site sent an update that is not clipped"
            )
            #expect(core.global == before)
        } else {
            #expect(record?.outcome == "ok" && record?.reason == nil, "\(String(describing: record))")
            let moved = zip(core.global, before).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }.squareRoot()
            let bound = configuration.serverLearningRate * 0.5
            #expect(moved > bound * 0.99 && moved <= bound * 1.001, "moved \(moved), bound \(bound)")
        }
    }

    /// A coordinator's task naming a round no u32 holds (rounds are u32le in every signed or derived message) is
    /// refused by the site with one line; it trapped the site converting it (found by the fl-message fuzz target, whose
    /// input is kept in tools/fuzz/regressions/fl-message).
    @Test(arguments: [-1, Int(UInt32.max) + 1, Int.min])
    func aTaskWithARoundOutsideU32IsRefusedNotTrapped(round: Int) throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 200)
        let core = try fixture.core(Self.configuration())
        let sites = try Self.started(fixture, core)
        core.taskFilter = { task in task.round = round }
        #expect(core.startRound(1) == nil)
        let task = try #require(core.task(for: sites[0].keyID, after: sites[0].lastSeq))
        let error = #expect(throws: FederatedError.self) { _ = try sites[0].handle(task) }
        #expect(error?.description == "malformed message: round \(round) is not a 32-bit round number")
    }

    @Test func aSiteThatJoinsAfterTheStartIsRefused() throws {
        let fixture = try FederationFixture(sites: 4, rowsPerSite: 200)
        let core = try fixture.core(Self.configuration())
        _ = try Self.started(fixture, core, count: 3)
        let late = try fixture.site(3)
        let error = #expect(throws: FederatedError.self) { _ = try core.join(late.joinRequest(session: core.sessionHex)) }
        #expect(error?.description == "not part of this round: site \(late.keyID) joined after the federation started")
    }

    @Test func malformedAndWrongSharesAreRefusedNamingTheSite() throws {
        let quantizer = try Quantizer(clipRange: 1, bits: 20)
        let (values, weights) = SecureAggregationTests.updates(sites: 5, dimension: 8, seed: 3)
        let inputs = encode(values, weights: weights, quantizer: quantizer)
        // Site 2 seals an unmasking share with an element outside the field: refused; four others still unmask.
        var harness = try SecAggHarness(count: 5, threshold: 3, dimension: 9)
        let corrupt: (SecAggHarness, Int, inout Submission, (inout [UInt8]) -> Void) -> Void = { harness, index, submission, edit in
            guard submission.stage == .unmask, index == 2, let box = submission.sealedShares?.bytes else { return }
            let site = harness.sites[2]!
            let shared = try! harness.aggregator.coordinatorKey.agree(with: site.encryption.publicKey)
            let key = KeyDerivation.derive(
                shared,
                label: "coffer/fl/v1/unmask",
                session: harness.session,
                round: 1,
                site.encryption.publicKey,
                harness.aggregator.coordinatorKey.publicKey
            )
            let ad = ShareCipher.associatedData(.unmask, session: harness.session, round: 1, sender: 2, recipient: 0)
            let plain = ShareCipher.open(box, key: key, associatedData: ad)!
            var bytes = plain.withUnsafeBytes { Array($0) }
            edit(&bytes)
            let edited = SecureBytes(count: bytes.count)
            edited.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
            submission.sealedShares = Base64Bytes(ShareCipher.seal(edited, key: key, associatedData: ad))
        }
        let h1 = harness
        let sum = try harness.run(inputs, faults: Faults(submission: { i, s in corrupt(h1, i, &s) { $0[8 + 8 * 2 + 7] = 0xFF } }))
        let site2 = harness.identities[1].publicIdentity.keyID
        let message = try #require(harness.coordinatorErrors[2]?.description)
        #expect(message.hasPrefix("malformed share: site \(site2) sent a malformed share of site "), "\(message)")
        let expected = SecureAggregationTests.plaintextMean(values, weights, clip: 1, included: Set(1...5))
        #expect(zip(quantizer.decodeMean(sum).mean, expected).map { abs($0 - $1) }.max()! <= quantizer.errorBound)

        // A wrong share that is a valid field element: reconstruction finds a subset that matches the commitments.
        harness = try SecAggHarness(count: 5, threshold: 3, dimension: 9)
        let h2 = harness
        let repaired = try harness.run(inputs, faults: Faults(submission: { i, s in corrupt(h2, i, &s) { $0[8 + 4] ^= 0x01 } }))
        #expect(harness.coordinatorErrors.isEmpty)
        #expect(zip(quantizer.decodeMean(repaired).mean, expected).map { abs($0 - $1) }.max()! <= quantizer.errorBound)

        // With only t holders left there is no other subset: the round aborts naming the owner whose secret failed.
        harness = try SecAggHarness(count: 5, threshold: 3, dimension: 9)
        let h3 = harness
        let error = #expect(throws: FederatedError.self) {
            _ = try harness.run(
                inputs,
                faults: Faults(dropouts: [4: .unmask, 5: .unmask], submission: { i, s in corrupt(h3, i, &s) { $0[8 + 4] ^= 0x01 } })
            )
        }
        #expect(error?.description.contains("do not reconstruct it: a site sent a wrong share") == true, "\(error?.description ?? "")")
    }
}

extension RefusalTests {
    /// A site sends nothing to a plain-HTTP coordinator beyond loopback unless told to: the global model would cross the
    /// network readable. The check is the library's, so that every site, not just `coffer fl join`, makes it.
    @Test func aPlainHTTPCoordinatorBeyondLoopbackIsRefusedUnlessAllowed() throws {
        for host in ["10.1.2.3", "[fd00::1]", "127.example.com"] {
            let url = "http://\(host):8450"
            #expect(throws: FederatedError.plainHTTPOffLoopback(host: host), "\(url)") { _ = try FederationClient(url: url) }
            _ = try FederationClient(url: url, plainHTTPOffLoopback: true)
        }
        for url in ["http://127.0.0.1:8450", "http://[::1]:8450", "http://localhost:8450", "https://10.1.2.3:8450"] {
            _ = try FederationClient(url: url)
        }
    }

    /// An answer longer than any task of the recipe fails the exchange as it arrives, before it is buffered: a hostile
    /// coordinator streamed gigabytes into a site (helper-47). The "coordinator" here is a socket that, once asked,
    /// announces a gigabyte and sends until the site hangs up.
    @Test func anEndlessAnswerIsCutAtTheLimit() async throws {
        let listener = try RawListener()
        let sent = Mutex(0)
        let thread = Thread {
            // A site that never connects leaves this thread in accept for at most 30 s.
            guard let connection = listener.accept(timeout: 30) else { return }
            _ = connection.receive(timeout: 30)
            guard connection.send("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n") else { return }
            let piece = [UInt8](repeating: 0x41, count: 64 << 10)
            // Until the site hangs up, or 256 MiB: the test fails then rather than run on.
            while sent.withLock({ $0 }) < 256 << 20, connection.send(piece) { sent.withLock { $0 += piece.count } }
        }
        thread.start()
        var client = try FederationClient(url: "http://127.0.0.1:\(listener.port)")
        client.maximumAnswer = 1 << 20
        let message = SignedMessage(payload: Array("{}".utf8), signer: "site", signature: [])
        await #expect(
            throws: FederatedError.malformedMessage(
                "http://127.0.0.1:\(client.port) sent an answer longer than 1048576 bytes, more than any task of this recipe"
            )
        ) {
            _ = try await client.post("/v1/fl/poll", message, timeout: .seconds(60))
        }
        // The socket thread ends once the site hangs up, or its accept's timeout.
        let deadline = ContinuousClock.now + .seconds(40)
        while !thread.isFinished && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(sent.withLock { $0 } < 64 << 20, "the site read on after its limit")
    }
}

extension RefusalTests {
    /// helper-71: the plain baseline (`fl simulate --plain --standardisation FILE`) took the configuration's public
    /// standardisation unchecked, so a zero deviation divided a feature by zero; it is refused as the coordinator refuses
    /// it, where the standardisation is applied (a site checks the coordinator's the same way).
    @Test func thePlainBaselineChecksPublicStandardisationToo() throws {
        let fixture = try FederationFixture(sites: 3, rowsPerSite: 50)
        let data = try fixture.paths.map { try LocalData(path: $0, recipe: fixture.recipe) }
        var configuration = Self.configuration()
        configuration.standardisation = PublicStandardisation(means: [0, 0, 0, 0, 0], standardDeviations: [1, 1, 0, 1, 1])
        let plain = try PlainFederation(recipe: fixture.recipe, sites: data, configuration: configuration)
        #expect(throws: FederatedError.invalidParameter("standardisation: means must be finite and standard_deviations finite and at least 1e-06")) {
            try plain.run()
        }
        configuration.standardisation = PublicStandardisation(means: [0, 0, 0, 0, 0], standardDeviations: [1, 1, 1, 1, 1])
        let fine = try PlainFederation(recipe: fixture.recipe, sites: data, configuration: configuration)
        try fine.run()
        #expect(fine.global.allSatisfy { $0.isFinite })
    }
}
