import ArgumentParser
import Foundation
import QueueBalancer

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert another balancer's rules to an nfqlb configuration.",
        subcommands: [IpvsadmRules.self]
    )

    struct IpvsadmRules: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ipvsadm",
            abstract: "Convert ipvsadm-save -n output to nfqlb YAML (on standard output).",
            discussion: """
            Reads the rules ipvsadm-save -n (or ipvsadm -Sn) prints, from FILE or standard \
            input (-), and prints the equivalent nfqlb configuration, validated as nfqlb check \
            validates a file. -A/-E with -t/-u, -s, -p [timeout], -M, -b, -o; -a/-e with -r, \
            -m/-g/-i, -w, -x, -y. A line nfqlb cannot express (fwmark services, real servers \
            of one service with different forwarding methods, names instead of numbers) is \
            refused with its line number and exit status 2:
              ipvsadm-save -n | nfqlb import ipvsadm - > lb.yaml
            """
        )

        @Argument(help: ArgumentHelp("The rules file, or - for standard input.", valueName: "file"))
        var file = "-"

        func run() throws {
            let text: String
            if file == "-" {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            } else {
                guard let data = FileManager.default.contents(atPath: file) else { throw failure("cannot read \(file)") }
                text = String(decoding: data, as: UTF8.self)
            }
            do {
                print(try Ipvsadm.importRules(text, file: file == "-" ? "<stdin>" : file), terminator: "")
            } catch {
                throw failure("\(error)", status: 2)
            }
        }
    }
}

struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a configuration in another format (ipvsadm-save -n rules).",
        discussion: """
        The way back from nfqlb import ipvsadm. Settings ipvsadm has no words for \
        (fullnat, offload, drain, tunnel-source, mh-table-size) are refused with the \
        service they belong to (exit status 2):
          nfqlb save --config lb.yaml --format ipvsadm
        """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case ipvsadm
    }

    @OptionGroup var options: ConfigOptions

    @Option(help: "The output format.")
    var format: Format = .ipvsadm

    func run() throws {
        let config = try options.load()
        do {
            print(try Ipvsadm.save(config), terminator: "")
        } catch {
            throw failure("\(error)", status: 2)
        }
    }
}
