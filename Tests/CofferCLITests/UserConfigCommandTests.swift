import CofferTestSupport
import Foundation
import Testing

/// A day without `--identity` and `--home` on every command: `COFFER_IDENTITY` and the others, and the user's config
/// file under `$XDG_CONFIG_HOME/coffer/config.toml`, each below its flag.
@Suite(.ownThread)
struct UserConfigCommandTests {
    /// A registry in `dir/home` with `keys/alice` as its owner, `keys/bob` as another identity, a model in `model/`,
    /// and an environment whose config directory is `dir/config` (nothing of the real user's is read).
    private func setUp() throws -> (Scratch, [String: String]) {
        let dir = try Scratch()
        try dir.keygen("alice")
        try dir.keygen("bob")
        let environment = ["XDG_CONFIG_HOME": dir.path("config"), "HOME": dir.path("user-home"), "COFFER_HOME": "", "COFFER_IDENTITY": ""]
        let created = try CofferProcess.run(
            ["init", "--home", dir.path("home"), "--owner", "keys/alice.pub"],
            in: dir.url,
            environment: environment
        )
        #expect(created.status == 0, "\(created.stderr)")
        try FileManager.default.createDirectory(atPath: dir.path("model"), withIntermediateDirectories: true)
        try dir.write("model/w.bin", randomData(20_000))
        return (dir, environment)
    }

    private func writeConfig(_ dir: Scratch, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: dir.path("config/coffer"), withIntermediateDirectories: true)
        try dir.write("config/coffer/config.toml", Data(text.utf8))
    }

    @Test func theConfigFileGivesTheIdentityAndRegistryAndFlagsAndEnvironmentComeFirst() throws {
        let (dir, environment) = try setUp()
        // Without any of them, a command that needs an identity says every way to give one.
        let none = try CofferProcess.run(["push", "m", "model", "--home", dir.path("home")], in: dir.url, environment: environment)
        #expect(none.status != 0)
        #expect(none.stderr.contains("no identity: give --identity NAME.key, or set COFFER_IDENTITY, or identity in"), "\(none.stderr)")

        // Relative paths in the file are read from its directory; ~/ is the user's home.
        try writeConfig(dir, "# alice's defaults\nidentity = \"../../keys/alice.key\"\nhome = \"\(dir.path("home"))\"  # the team registry\n")
        let pushed = try CofferProcess.run(["push", "m", "model"], in: dir.url, environment: environment)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(pushed.stdoutText.hasPrefix("pushed m:1 "))
        let pulled = try CofferProcess.run(["pull", "m", "--out", "out"], in: dir.url, environment: environment)
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(pulled.stdoutText.contains("signed by alice"), "\(pulled.stdoutText)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.path("out/w.bin"))) == Data(contentsOf: URL(fileURLWithPath: dir.path("model/w.bin"))))

        // COFFER_IDENTITY comes before the file, and --identity before both: bob holds no key of m:1.
        var asBob = environment
        asBob["COFFER_IDENTITY"] = dir.path("keys/bob.key")
        let bob = try CofferProcess.run(["pull", "m", "--out", "bob-out"], in: dir.url, environment: asBob)
        #expect(bob.status != 0)
        #expect(bob.stderr.contains("bob"), "\(bob.stderr)")
        let flag = try CofferProcess.run(["pull", "m", "--out", "flag-out", "--identity", "keys/alice.key"], in: dir.url, environment: asBob)
        #expect(flag.status == 0, "\(flag.stderr)")
        // --home before the file's home.
        let elsewhere = try CofferProcess.run(["list", "--home", dir.path("nowhere")], in: dir.url, environment: environment)
        #expect(elsewhere.status != 0)
        #expect(elsewhere.stderr.contains("nowhere"), "\(elsewhere.stderr)")
    }

    @Test func aConfigFileWithAMistakeStopsTheCommandNamingTheLine() throws {
        let (dir, environment) = try setUp()
        let file = dir.path("config/coffer/config.toml")
        for (text, message) in [
            (
                "identity = \"keys/alice.key\"\nidentty = \"x\"\n",
                "\(file) line 2: unknown setting 'identty' (known: identity, home, registry, token_file, ca_cert)"
            ),
            ("home = ~/reg\n", "\(file) line 1: the value of home must be a \"quoted string\""),
            ("identity\n", "\(file) line 1: expected key = \"value\""),
            ("home = \"a\"\nhome = \"b\"\n", "\(file) line 2: home is set twice"),
        ] {
            try writeConfig(dir, text)
            let run = try CofferProcess.run(["push", "m", "model", "--home", dir.path("home")], in: dir.url, environment: environment)
            #expect(run.status == 1)
            #expect(run.stderr == "coffer: \(message)\n", "\(run.stderr)")
        }
        // A command that needs none of its settings does not read it.
        let keygen = try CofferProcess.run(
            ["keygen", "--out", "keys/carol", "--kdf-ops", "1", "--kdf-memory", "64"],
            in: dir.url,
            environment: environment
        )
        #expect(keygen.status == 0, "\(keygen.stderr)")
    }

    @Test func aTokenGoesOnlyToTheRegistryItWasGivenWithAndAnamedHomeStaysLocal() throws {
        let (dir, environment) = try setUp()
        try dir.write("token", Data("cft_configured\n".utf8))
        chmod(dir.path("token"), 0o600)
        // Nothing listens on port 1: a command that goes to this registry fails naming it.
        try writeConfig(dir, "identity = \"../../keys/alice.key\"\nregistry = \"http://127.0.0.1:1\"\ntoken_file = \"../../token\"\n")
        let remote = try CofferProcess.run(["list"], in: dir.url, environment: environment)
        #expect(remote.status != 0)
        #expect(remote.stderr.contains("127.0.0.1:1"), "\(remote.stderr)")
        // A registry directory named on the command line (or in COFFER_HOME) is used, not the file's served registry.
        let local = try CofferProcess.run(["list", "--home", dir.path("home")], in: dir.url, environment: environment)
        #expect(local.status == 0, "\(local.stderr)")
        var withHome = environment
        withHome["COFFER_HOME"] = dir.path("home")
        #expect(try CofferProcess.run(["list"], in: dir.url, environment: withHome).status == 0)
        // --home on the command line also beats a served registry in COFFER_REGISTRY.
        var withRegistry = environment
        withRegistry["COFFER_REGISTRY"] = "http://127.0.0.1:1"
        #expect(try CofferProcess.run(["list", "--home", dir.path("home")], in: dir.url, environment: withRegistry).status == 0)
        let served = try CofferProcess.run(["list"], in: dir.url, environment: withRegistry)
        #expect(
            served.stderr == "coffer: --registry needs a bearer token: --token or COFFER_TOKEN\n",
            "without --home it is the served one: \(served.stderr)"
        )
        // The file's token is not sent to a registry named another way.
        let other = try CofferProcess.run(["list", "--registry", "http://127.0.0.1:2"], in: dir.url, environment: environment)
        #expect(other.status == 1)
        #expect(other.stderr == "coffer: --registry needs a bearer token: --token or COFFER_TOKEN\n", "\(other.stderr)")
        // No token in plain http beyond this machine, however the scheme is spelt (`HTTP://` once got through).
        for registry in ["http://registry.example", "HTTP://registry.example", "Http://REGISTRY.example"] {
            let plain = try CofferProcess.run(["list", "--registry", registry, "--token", "cft_x"], in: dir.url, environment: environment)
            #expect(plain.stderr.hasPrefix("coffer: refusing to send a bearer token in plain http to "), "\(registry): \(plain.stderr)")
            #expect(plain.status == 1 && plain.stderr.lowercased().hasSuffix("registry.example: use https\n"), "\(plain.stderr)")
        }
        // Both kinds of registry in one file is a mistake, not a choice.
        try writeConfig(dir, "home = \"\(dir.path("home"))\"\nregistry = \"https://registry.example\"\n")
        let both = try CofferProcess.run(["list"], in: dir.url, environment: environment)
        #expect(both.stderr.contains("set home (a local registry) or registry (a served one), not both"), "\(both.stderr)")
    }

    @Test func aFileWrittenOnWindowsReadsTheSameAndOneOthersCanChangeIsRefused() throws {
        let (dir, environment) = try setUp()
        try writeConfig(dir, "\u{FEFF}# alice\r\nidentity = \"../../keys/alice.key\"\r\nhome = \"\(dir.path("home"))\"\r\n")
        let pushed = try CofferProcess.run(["push", "m", "model"], in: dir.url, environment: environment)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        chmod(dir.path("config/coffer/config.toml"), 0o666)
        let refused = try CofferProcess.run(["push", "m", "model"], in: dir.url, environment: environment)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("config.toml can be changed by other users (mode 666): chmod go-w it"), "\(refused.stderr)")
    }

    @Test func aPassphraseFileOthersCanReadIsWarnedAbout() throws {
        let (dir, environment) = try setUp()
        try dir.write("pass", Data("test passphrase\n".utf8))
        let arguments = ["push", "m", "model", "--home", dir.path("home"), "--identity", "keys/alice.key", "--passphrase-file", "pass"]
        chmod(dir.path("pass"), 0o644)
        let open = try CofferProcess.run(arguments, in: dir.url, passphrase: nil, environment: environment)
        #expect(open.status == 0, "\(open.stderr)")
        #expect(open.stderr.contains("warning: the passphrase file pass can be read by other users (mode 644): chmod 600 it"), "\(open.stderr)")
        chmod(dir.path("pass"), 0o600)
        let closed = try CofferProcess.run(arguments, in: dir.url, passphrase: nil, environment: environment)
        #expect(closed.status == 0, "\(closed.stderr)")
        #expect(!closed.stderr.contains("warning"), "\(closed.stderr)")
    }
}
