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
        abstract: "Print the running configuration, live changes included, as YAML or ipvsadm-save rules.",
        discussion: """
        Without --config, asks the running nfqlb (control socket) for the configuration it \
        serves: the config file with the live changes made since (nfqlb service, nfqlb real), \
        ready to become the new config file. With --config, converts that file instead. \
        ipvsadm has no words for some settings (fullnat, offload, drain, tunnel-source, \
        mh-table-size): --format ipvsadm refuses them with their service (exit status 2).
          nfqlb save > /etc/nfqlb/lb.yaml.new
          nfqlb save --format ipvsadm
          nfqlb save --config lb.yaml --format ipvsadm
        """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case yaml, ipvsadm
    }

    @Option(name: .shortAndLong, help: ArgumentHelp("Convert this config file instead of asking the running nfqlb.", valueName: "file"))
    var config: String?

    @OptionGroup var control: ControlOptions

    @Option(help: "The output format.")
    var format: Format = .yaml

    func run() throws {
        if let config {
            let loaded = try ConfigOptions.load(config)
            do {
                switch format {
                case .ipvsadm: print(try Ipvsadm.save(loaded), terminator: "")
                case .yaml: print(ConfigDocument.yaml(ConfigDocument.document(loaded), header: "\(config), as nfqlb reads it"), terminator: "")
                }
            } catch {
                throw failure("\(error)", status: 2)
            }
            return
        }
        let result = try control.call("save", ["format": .string(format.rawValue)])
        print(result["text"]?.string ?? "", terminator: "")
    }
}
