import Foundation
import PostgresNIO

extension PostgresPool {
    /// What `coffer init` does before it writes a registry into `endpoint`'s database: creates the database when the
    /// server has none of that name, as the URL's user (who needs `CREATEDB`), from the server's maintenance database
    /// `postgres`, with the server's defaults (owner: that user). Only `init` creates: every other command on a
    /// missing database fails, so a typo in a registry's URL never starts an empty registry.
    ///
    /// - Returns: whether it created the database.
    /// - Throws: ``CofferRegistryError/unavailable(engine:reason:)`` naming `endpoint`'s engine: unreachable, refused
    ///   login, or a missing database the user may not create (with the statement a superuser would run).
    static func createDatabaseIfMissing(_ endpoint: PostgresEndpoint, password: String?) async throws(CofferRegistryError) -> Bool {
        do {
            let connection = try await PostgresPool(endpoint: endpoint, password: password).untranslatedConnection()
            try? await connection.close()
            return false
        } catch let error as CofferRegistryError {
            throw error
        } catch  where PostgresFailure.sqlState(error) == PostgresFailure.SQLState.unknownDatabase {
            // Below: the database is missing.
        } catch {
            throw PostgresFailure.translate(error, endpoint: endpoint)
        }
        let name = quotedIdentifier(endpoint.database)
        let maintenance = try PostgresPool(endpoint: endpoint.with(database: "postgres"), password: password)
        let connection = try await maintenance.openConnection()
        let created: Result<Bool, CofferRegistryError>
        do {
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: logger)
            created = .success(true)
        } catch  where PostgresFailure.sqlState(error) == PostgresFailure.SQLState.duplicateDatabase {
            // Another init made it between the two connections: it exists, which is all this step is for.
            created = .success(false)
        } catch  where PostgresFailure.sqlState(error) == PostgresFailure.SQLState.insufficientPrivilege {
            let owner = quotedIdentifier(endpoint.user)
            created = .failure(
                .unavailable(
                    engine: endpoint.engine,
                    reason:
                        "the database does not exist and \(endpoint.user) may not create it (a superuser can: CREATE DATABASE \(name) OWNER \(owner))"
                )
            )
        } catch {
            created = .failure(PostgresFailure.translate(error, endpoint: endpoint))
        }
        try? await connection.close()
        return try created.get()
    }

    /// `name` as a PostgreSQL quoted identifier: in double quotes, each double quote doubled (the SQL standard's rule;
    /// PostgreSQL, "Lexical Structure"), so any name is one identifier and never SQL.
    static func quotedIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
