import CofferCrypto
import CofferRegistry
import Foundation
import Hummingbird
import Logging

/// The web pages (docs/WEB.md): sign-in and sign-out, models, a model's versions and alias form, a version with its
/// proofs and lineage, budgets, sessions, and for admins the tokens, principals and grants, and the audit log. Each page makes the
/// registry calls the JSON route showing the same thing makes, behind the same role (one route group per role, as
/// ``RegistryController`` has), with the same per-model checks.
struct WebController {
    let state: ServerState
    var registry: Registry { state.registry }
    var pages: WebPages { state.pages }

    /// `__Host-`: the browser takes it only from this host, over a secure origin, for the whole site, so no sibling
    /// subdomain or other port can plant one (a planted sign-in cookie would sign the victim in as the attacker).
    static let signInCookieName = "__Host-coffer_signin"

    func addRoutes(to routes: some RouterMethods<CofferRequestContext>) {
        routes.get("/") { _, _ in WebPages.seeOther("/models") }
        routes.group().add(middleware: WebHeadersMiddleware(state: state))
            .get("signin", use: signInForm)
            .post("signin", use: signIn)
            .get("static/coffer.css", use: stylesheet)
        routes.group().add(middleware: WebHeadersMiddleware(state: state))
            .add(middleware: WebSessionAuthenticator(state: state, role: .reader))
            .post("signout", use: signOut)
            .get("notice", use: notice)
            .get("models", use: models)
            .get("model", use: model)
            .get("version", use: version)
            .post("version/check", use: checkVersion)
            .get("budgets", use: budgets)
            .get("budget", use: budget)
            .get("sessions", use: sessions)
        routes.group().add(middleware: WebHeadersMiddleware(state: state))
            .add(middleware: WebSessionAuthenticator(state: state, role: .publisher))
            .post("alias", use: setAlias)
        routes.group().add(middleware: WebHeadersMiddleware(state: state))
            .add(middleware: WebSessionAuthenticator(state: state, role: .inference))
            .post("sessions/revoke", use: revokeSession)
        routes.group().add(middleware: WebHeadersMiddleware(state: state))
            .add(middleware: WebSessionAuthenticator(state: state, role: .admin))
            .get("audit", use: audit)
            .get("tokens", use: tokens)
            .post("tokens", use: requestToken)
            .post("tokens/revoke", use: revokeToken)
            .get("principals", use: principals)
            .post("grants", use: requestGrant)
            .post("grants/revoke", use: requestRevoke)
    }

    // MARK: - Pages

    /// `GET /models?q=TEXT&namespace=NS`: the models the principal may read (each as `GET /v1/versions?model=NAME`
    /// would allow it), newest version first.
    func models(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        let query = request.uri.queryParameters.get("q") ?? ""
        let namespace = request.uri.queryParameters.get("namespace")
        let mayReadAll = try await registry.holds(.reader, on: nil, holder.principal)
        // One query for every model (its count and newest version), not every version with its signature checked:
        // that took 7-10 s a load at 100,000 versions. The model's own page checks each version it shows.
        var order: [String] = []
        var byModel: [String: ModelOverview] = [:]
        for model in try await registry.modelOverviews() {
            order.append(model.name)
            byModel[model.name] = model
        }
        var readable: [String] = []
        for name in order where mayReadAll ? true : try await registry.holds(.reader, on: name, holder.principal) { readable.append(name) }
        var namespaces: [String: Int] = [:]
        for name in readable { if let space = Self.namespace(of: name) { namespaces[space, default: 0] += 1 } }
        let shown = readable.filter { name in
            (query.isEmpty || name.localizedCaseInsensitiveContains(query)) && (namespace.map { Self.namespace(of: name) == $0 } ?? true)
        }
        let rows: [[String: Any]] = shown.map { name in
            let entry = byModel[name]!
            return [
                "name": name, "href": "/model?name=" + WebForm.percentEncoded(name), "versions": entry.versions,
                "latest": entry.latestVersion, "created": entry.latestCreated,
            ]
        }
        let spaces: [[String: Any]] = namespaces.keys.sorted().map { space in
            ["name": space, "count": namespaces[space]!, "href": "/models?namespace=" + WebForm.percentEncoded(space), "current": space == namespace]
        }
        var values: [String: Any] = [
            "title": "Models", "query": query, "models": rows, "noModels": rows.isEmpty, "namespaces": spaces, "hasNamespaces": !spaces.isEmpty,
            "heading": namespace.map { "Models in \($0)/" } ?? "All models",
        ]
        if let namespace { values["namespace"] = namespace }
        return page("models", values, context)
    }

    /// `GET /model?name=NAME&before=VERSION`: one page of the versions table, newest first, as
    /// `GET /v1/versions?model=NAME` lists them (keyset pages: `before` is the last version of the page before).
    func model(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let name = request.uri.queryParameters.get("name") else {
            throw HTTPError(.badRequest, message: "the name query parameter is required")
        }
        try ModelReference.validate(name: name)
        let before = request.uri.queryParameters.get("before").flatMap { $0.isEmpty ? nil : $0 }
        if let before { try ModelReference.validate(version: before) }
        try await registry.require(.reader, on: name, by: holder.principal, action: "list", target: name)
        let found = try await registry.versionPage(model: name, before: before, limit: Self.versionPageSize)
        let rows: [[String: Any]] = found.versions.map { version in
            [
                "version": version.version, "href": "/version?ref=" + WebForm.percentEncoded("\(name):\(version.version)"),
                "created": version.created, "publisher": version.publisherKeyID, "epsilon": Self.number(version.privacy.epsilon),
                "delta": Self.number(version.privacy.delta), "pruningRatio": Self.number(version.privacy.pruningRatio),
                "aliases": version.aliases.isEmpty ? "none" : version.aliases.joined(separator: ", "), "verified": version.verified,
                "verification": version.verification ?? "",
            ]
        }
        let policies = try await registry.policies(model: name).map { policy in
            "\(policy.alias.map { "alias \($0)" } ?? "every alias"): \(Self.describe(policy.rules))"
        }
        var values: [String: Any] = [
            "title": name, "name": name, "versions": rows, "policies": policies, "hasPolicies": !policies.isEmpty,
            "mayPublish": holder.scope.allows(.publisher),
        ]
        // The alias form starts at the page's newest version, as its list of versions used to.
        values["firstVersion"] = found.versions.first?.version ?? ""
        let here = "/model?name=" + WebForm.percentEncoded(name)
        if before != nil { values["firstHref"] = here }
        if let next = found.next { values["nextHref"] = here + "&before=" + WebForm.percentEncoded(next) }
        return page("model", values, context)
    }

    static let versionPageSize = 50

    /// `POST /alias` with `model`, `alias` and `version`: as `PUT /v1/alias` (publisher on the model; its policies apply,
    /// and a refusal names the rule that failed).
    func setAlias(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let model = context.form["model"], let alias = context.form["alias"], let version = context.form["version"] else {
            throw HTTPError(.badRequest, message: "the form needs a model, an alias and a version")
        }
        try await registry.setAlias(alias, model: model, version: version, by: state.signer(for: holder))
        return WebPages.seeOther("/model?name=" + WebForm.percentEncoded(model))
    }

    /// The version's chain of parents, up to the first the principal may not read (named only, as the child's
    /// `GET /v1/version` names it).
    private func lineage(of summary: VersionSummary, chain: [VersionSummary], holder: TokenHolder) async throws -> LineageGraph {
        var nodes: [LineageGraph.Node] = []
        var hidden: String? = nil
        for version in chain {
            if version.model != summary.model, try await !registry.holds(.reader, on: version.model, holder.principal) {
                hidden = "\(version.model):\(version.version)"
                break
            }
            nodes.append(
                .init(model: version.model, version: version.version, dataset: version.datasetID, configuration: version.trainingConfigDigest)
            )
        }
        return LineageGraph(chain: nodes.reversed(), hiddenParent: hidden)
    }

    /// A policy's rules in words, as `policy show` prints them.
    static func describe(_ rules: PolicyRules) -> String {
        var parts: [String] = []
        if let value = rules.maxEpsilon { parts.append("epsilon at most \(value)") }
        if let value = rules.maxDelta { parts.append("delta at most \(value)") }
        if let value = rules.signer { parts.append("signed by \(value)") }
        if let value = rules.minPruningRatio { parts.append("pruning ratio at least \(value)") }
        if rules.requireBudget == true { parts.append("charged to a budget") }
        if rules.requireAudit == true { parts.append("a privacy audit in its signed evidence") }
        if let value = rules.maxMembershipAUC { parts.append("membership-inference AUC at most \(value)") }
        return parts.isEmpty ? "no rule" : parts.joined(separator: ", ")
    }

    /// `GET /version?ref=NAME:VERSION`: the version as `GET /v1/version` shows it, its signed statement checked now,
    /// and the last check of its blobs (as `GET /v1/verify` checks them) that this server ran, with the form that runs
    /// one. A failure of either is shown with its exact message.
    func version(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let text = request.uri.queryParameters.get("ref") else { throw HTTPError(.badRequest, message: "the ref query parameter is required") }
        let reference = try ModelReference(parsing: text)
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "show", target: reference.description)
        // The chain of parents starts with the version itself, as `show` makes it (signature checked): one call, not two.
        let chain = try await registry.lineage(reference)
        guard let summary = chain.first else { throw CofferRegistryError.unknownVersion(reference.description) }
        let ref = "\(summary.model):\(summary.version)"
        let check = state.versionChecks.last(ref)
        let failure = summary.verification ?? check?.failure
        let privacy = summary.privacy
        let card: [(String, String)] = [
            ("Mechanism", privacy.mechanism ?? "not stated"), ("Accountant", privacy.accountant ?? "not stated"),
            ("Noise multiplier", Self.number(privacy.noiseMultiplier)), ("Sampling rate", Self.number(privacy.samplingRate)),
            ("Steps", privacy.steps.map { "\($0)" } ?? "not stated"), ("Clip norm", Self.number(privacy.clippingNorm)),
            ("Epsilon", Self.number(privacy.epsilon)), ("Delta", Self.number(privacy.delta)),
            ("Privacy unit", privacy.privacyUnit ?? "not stated"), ("Pruning method", privacy.pruningMethod ?? "none"),
            ("Pruning ratio", Self.number(privacy.pruningRatio)), ("Achieved sparsity", Self.number(privacy.achievedSparsity)),
        ]
        var values: [String: Any] = [
            "title": "\(summary.model):\(summary.version)", "model": summary.model, "version": summary.version,
            "modelHref": "/model?name=" + WebForm.percentEncoded(summary.model), "verified": failure == nil, "failure": failure ?? "",
            "signer": summary.signer ?? "", "digest": summary.digest, "publisher": summary.publisherKeyID, "created": summary.created,
            "privacy": card.map { ["label": $0.0, "value": $0.1] },
            "files": summary.files.map { file -> [String: Any] in
                [
                    "path": file.path, "size": file.size, "sha256": file.plaintextSHA256, "sealedSize": file.sealedSize,
                    "sealedSHA256": file.sealedSHA256,
                ]
            },
            "parent": summary.parent ?? "none", "dataset": summary.datasetID ?? "not stated", "datasetDigest": summary.datasetDigest ?? "not stated",
            "trainingConfigDigest": summary.trainingConfigDigest ?? "not stated",
            "aliases": summary.aliases.isEmpty ? "none" : summary.aliases.joined(separator: ", "),
            "tags": summary.tags.keys.sorted().map { ["key": $0, "value": summary.tags[$0]!] },
            "ref": ref, "signatureOK": summary.verification == nil, "signatureFailure": summary.verification ?? "",
        ]
        if let check {
            // Who read which version is the audit log's, for admins: another reader sees only that someone checked
            // (helper-46: the page named every reader's last check).
            let by = check.by == holder.principal.name ? check.by : "another principal"
            values["blobCheck"] = ["at": check.at, "by": by, "ok": check.failure == nil, "failure": check.failure ?? ""]
        }
        values["lineage"] = try await lineage(of: summary, chain: chain, holder: holder).values
        if let parent = summary.parent { values["parentHref"] = "/version?ref=" + WebForm.percentEncoded(parent) }
        if let message = summary.message { values["message"] = message }
        if let at = summary.erasedAt { values["erased"] = "at \(at) by \(summary.erasedBy ?? "an unknown principal")" }
        return page("version", values, context)
    }

    /// `POST /version/check` with `ref` (and the CSRF token): checks every blob of the version now, as `GET /v1/verify`
    /// does (a `verify` audit entry naming the principal), keeps the result for the version page, and goes back to it.
    /// Limited per principal (``VersionChecks``): past the limit, a 429 page saying when to try again.
    func checkVersion(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let text = context.form["ref"], !text.isEmpty else { throw HTTPError(.badRequest, message: "the form names no version") }
        let reference = try ModelReference(parsing: text)
        try await registry.require(.reader, on: reference.name, by: holder.principal, action: "verify", target: reference.description)
        let summary = try await registry.show(reference)
        let ref = "\(summary.model):\(summary.version)"
        if let refusal = state.versionChecks.admit(holder.principal.name) {
            var response = pages.error(refusal, session: context.webSession, admin: holder.scope == .admin)
            response.headers[.retryAfter] = refusal.headers[.retryAfter]
            return response
        }
        var failure: String? = nil
        do { _ = try await registry.verify(try ModelReference(parsing: ref), auditedAs: holder.principal.name) } catch { failure = error.description }
        state.versionChecks.record(
            .init(at: Timestamp.now, by: holder.principal.name, failure: failure),
            of: ref
        )
        return WebPages.seeOther("/version?ref=" + WebForm.percentEncoded(ref))
    }

    /// `GET /audit?principal=P&action=A&model=M&before=SEQ`: admins only, as `GET /v1/audit`. One keyset page of
    /// entries, newest first, with the chain's check from the server's checkpoint (``AuditChainMonitor``) and the last
    /// signed head.
    func audit(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        try await registry.require(.admin, on: nil, by: holder.principal, action: "audit", target: "*")
        let parameters = request.uri.queryParameters
        func field(_ name: String) -> String? { parameters.get(name).flatMap { $0.isEmpty ? nil : $0 } }
        let filter = try AuditFilter(principal: field("principal"), action: field("action"), model: field("model"))
        var before: Int64? = nil
        if let text = field("before") {
            guard let seq = Int64(text), seq > 0 else {
                throw HTTPError(.badRequest, message: "before must be an entry number, got '\(text.prefix(40))'")
            }
            before = seq
        }
        let found = try await registry.auditPage(filter, before: before, limit: Self.auditPageSize)
        var values: [String: Any] = [
            "title": "Audit log", "filterPrincipal": filter.principal ?? "", "filterAction": filter.action ?? "", "filterModel": filter.model ?? "",
            "noEntries": found.entries.isEmpty,
            "entries": found.entries.map { entry -> [String: Any] in
                [
                    "seq": entry.seq, "at": entry.at, "principal": entry.principal, "action": entry.action, "target": entry.target,
                    "outcome": entry.outcome.rawValue, "reason": entry.reason,
                ]
            },
        ]
        let chain = await state.auditChain.check()
        switch chain.status {
        case .verifying: values["chainVerifying"] = true
        case .verified: values["chainOK"] = true
        case .broken(let failure): values["chainFailure"] = failure
        }
        if let report = chain.report {
            values["chainSummary"] =
                "Entries 1 to \(report.entries) chained and verified (\(chain.walkedNow) appended since the last check walked now); "
                + "signed through entry \(report.signedThrough), \(report.unsigned) after it not yet signed."
        }
        values["chainFullWalk"] =
            chain.fullWalkAt.map { "\($0); the current round has re-walked entries 1 to \(chain.rewalkedThrough)" } ?? "not finished yet"
        values["chainSlice"] = state.auditChain.sliceSize
        if let head = try await registry.lastSignedAuditHead() {
            values["lastHead"] = "entry \(head.seq), signed at \(head.signedAt)" + (head.keyID.map { " by key \($0)" } ?? "")
        } else {
            values["lastHead"] = "none yet"
        }
        let query = [("principal", filter.principal), ("action", filter.action), ("model", filter.model)].compactMap { name, value in
            value.map { "\(name)=\(WebForm.percentEncoded($0))" }
        }
        func href(_ extra: [String]) -> String { "/audit" + ((query + extra).isEmpty ? "" : "?" + (query + extra).joined(separator: "&")) }
        if before != nil { values["firstHref"] = href([]) }
        if let next = found.next { values["nextHref"] = href(["before=\(next)"]) }
        return page("audit", values, context)
    }

    static let auditPageSize = 50

    /// `GET /budgets`: the budgets of the datasets the principal may see, each as `GET /v1/budgets/{dataset}` reports
    /// it: those charged by a version of a model the principal may read; every dataset for an admin token of an admin.
    /// The API lists no datasets, so the list tells a reader nothing about models it may not read.
    func budgets(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        var isAdmin = false
        if holder.scope == .admin { isAdmin = (try? await registry.holds(.admin, on: nil, holder.principal)) == true }
        var readable: [String: Bool] = [:]
        var shown: [BudgetStatus] = []
        for status in try await registry.budgets() {
            var visible = isAdmin
            for charge in status.versions where !visible {
                if readable[charge.model] == nil { readable[charge.model] = try await registry.holds(.reader, on: charge.model, holder.principal) }
                visible = readable[charge.model]!
            }
            if visible { shown.append(status) }
        }
        let rows: [[String: Any]] = shown.map { status in
            [
                "dataset": status.dataset, "href": "/budget?dataset=" + WebForm.percentEncoded(status.dataset), "spent": Self.epsilon(status.spent),
                "total": Self.epsilon(status.epsilon), "remaining": Self.epsilon(status.remaining), "delta": "\(status.delta)",
                "charged": status.versions.count,
            ]
        }
        let scope = isAdmin ? "Every dataset with a budget (you are an admin)." : "The datasets charged by versions of models you may read."
        return page("budgets", ["title": "Privacy budgets", "budgets": rows, "noBudgets": rows.isEmpty, "scope": scope], context)
    }

    /// `GET /budget?dataset=ID`: one budget, its plot and the versions charged.
    func budget(_ request: Request, context: CofferRequestContext) async throws -> Response {
        guard let dataset = request.uri.queryParameters.get("dataset") else {
            throw HTTPError(.badRequest, message: "the dataset query parameter is required")
        }
        let status = try await registry.budget(dataset: dataset)
        let history = try await registry.budgetHistory(dataset: dataset)
        let charges: [[String: Any]] = status.versions.enumerated().map { index, charge in
            [
                "index": index + 1, "model": charge.model, "version": charge.version,
                "href": "/version?ref=" + WebForm.percentEncoded("\(charge.model):\(charge.version)"), "epsilon": Self.epsilon(charge.epsilon),
                "composed": index < history.count ? Self.epsilon(history[index]) : "", "overrideBy": charge.overrideBy ?? "",
                "erased": charge.erased ? "erased" : "",
            ]
        }
        let values: [String: Any] = [
            "title": "Budget of \(dataset)", "dataset": dataset, "spent": Self.epsilon(status.spent), "total": Self.epsilon(status.epsilon),
            "remaining": Self.epsilon(status.remaining), "delta": "\(status.delta)", "charges": charges, "noCharges": charges.isEmpty,
            "plot": BudgetPlot(total: status.epsilon, history: history).values,
        ]
        return page("budget", values, context)
    }

    /// `GET /sessions`: the principal's inference sessions, every session for an admin token of an admin (as
    /// `GET /v1/sessions`), never a session's token.
    func sessions(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        var isAdmin = false
        if holder.scope == .admin { isAdmin = (try? await registry.holds(.admin, on: nil, holder.principal)) == true }
        let all = try await registry.sessions()
        let shown = (isAdmin ? all : all.filter { $0.principal == holder.principal.name }).sorted { $0.createdAt > $1.createdAt }
        let now = Date()
        let dates = ISO8601DateFormatter.fractional
        let mayRevoke = holder.scope.allows(.inference)
        let rows: [[String: Any]] = shown.map { session in
            let status =
                if let revoked = session.revokedAt {
                    "revoked at \(revoked)"
                } else if (dates.date(from: session.expiresAt).map { $0 <= now }) ?? false {
                    "expired"
                } else if let max = session.maxUses,
                    session.uses >= max
                { "used up" } else { "open" }
            return [
                "id": session.id, "principal": session.principal, "model": session.model, "version": session.version,
                "href": "/version?ref=" + WebForm.percentEncoded("\(session.model):\(session.version)"), "created": session.createdAt,
                "expires": session.expiresAt, "uses": session.maxUses.map { "\(session.uses) of \($0)" } ?? "\(session.uses)", "status": status,
                "revocable": mayRevoke && status == "open",
            ]
        }
        let scope = isAdmin ? "Every session of the registry (you are an admin)." : "Your sessions."
        return page("sessions", ["title": "Inference sessions", "sessions": rows, "noSessions": rows.isEmpty, "scope": scope], context)
    }

    /// `POST /sessions/revoke` with `id` (and the CSRF token): as `DELETE /v1/sessions/{id}`.
    func revokeSession(_ request: Request, context: CofferRequestContext) async throws -> Response {
        let holder = try context.authenticated
        guard let id = context.form["id"], !id.isEmpty else { throw HTTPError(.badRequest, message: "the form names no session") }
        try await registry.revokeSession(id: id, principal: holder.principal, asAdmin: holder.scope == .admin)
        state.sessions.remove(id)
        return WebPages.seeOther("/sessions")
    }

    static func epsilon(_ value: Double) -> String { String(format: "%.4g", value) }

    /// A signed-in page, with the admin links shown to an admin token.
    func page(_ name: String, _ values: [String: Any], _ context: CofferRequestContext) -> Response {
        pages.render(name, values, session: context.webSession, admin: context.holder?.scope == .admin)
    }

    static func namespace(of model: String) -> String? {
        guard let slash = model.lastIndex(of: "/") else { return nil }
        return String(model[..<slash])
    }

    static func number(_ value: Double?) -> String {
        guard let value else { return "not stated" }
        return "\(value)"
    }
}
