import ArgumentParser
import QueueBalancer

/// Options shared by every command that reads a configuration.
struct ConfigOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: ArgumentHelp("The YAML configuration file.", valueName: "file"))
    var config: String

    /// Loads the config, or prints `nfqlb: file:line: reason` and exits with status 2.
    func load() throws -> BalancerConfig { try Self.load(config) }

    static func load(_ config: String) throws -> BalancerConfig {
        do {
            return try ConfigLoader.load(path: config)
        } catch {
            throw failure("\(error)", status: 2)
        }
    }
}
