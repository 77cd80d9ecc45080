import ArgumentParser
import QueueBalancer

struct RealServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "real-server",
        abstract: "Prepare a real server for LVS DR or TUN (run on the real server, as root).",
        discussion: """
        In DR and TUN the packets reach the real server still addressed to the VIP, and \
        the real server answers the client directly from the VIP. So the VIP goes on \
        the real server's lo, and the real server must never answer ARP for it \
        (arp_ignore=1, arp_announce=2): on the shared network only the balancer owns \
        the VIP. Both commands are idempotent; teardown undoes only what setup did.
          nfqlb real-server setup --vip 203.0.113.10 --mode dr
          nfqlb real-server teardown --vip 203.0.113.10
        For TUN, setup also queues the tunnelled packets (IP protocols 4 and 41) at \
        mangle INPUT for `nfqlb decap`, which this kernel needs because it has no ipip \
        module (elsewhere: ip link set tunl0 up, with the VIP on lo).
        """,
        subcommands: [Setup.self, Teardown.self]
    )

    struct Setup: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put the VIP on lo and set the ARP sysctls.")

        @Option(help: "The virtual IP address the balancer forwards to this server.")
        var vip: IPAddress

        @Option(help: "The forwarding mode: dr or tun.")
        var mode: RealServerSetup.Mode = .dr

        @Option(help: "TUN: the NFQUEUE that `nfqlb decap` serves.")
        var queue: UInt16 = 0

        func run() throws {
            try RealServerCommand.report { () throws(RealServerSetup.Failure) in
                try RealServerSetup().setup(vip: vip, mode: mode, decapQueue: queue)
            }
        }
    }

    struct Teardown: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Undo what setup did for this VIP.")

        @Option(help: "The virtual IP address given to setup.")
        var vip: IPAddress

        func run() throws {
            try RealServerCommand.report { () throws(RealServerSetup.Failure) in try RealServerSetup().teardown(vip: vip) }
        }
    }

    /// Prints what `body` changed, one line each, or its error.
    static func report(_ body: () throws(RealServerSetup.Failure) -> [String]) throws {
        do {
            let done = try body()
            print(done.isEmpty ? "nothing to change" : done.joined(separator: "\n"))
        } catch {
            throw failure("\(error)")
        }
    }
}
