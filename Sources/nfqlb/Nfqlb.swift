import ArgumentParser

@main
struct Nfqlb: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nfqlb",
        abstract: "A layer-4 load balancer in the spirit of LVS, with a Netfilter NFQUEUE datapath.",
        discussion: """
        iptables rules in the raw table's PREROUTING hand every packet for a virtual \
        service (VIP:port) to an NFQUEUE. nfqlb schedules each new connection onto a \
        real server, as IPVS's schedulers do, and gives the kernel a verdict that \
        forwards the packet in the service's LVS mode:

          nat      the destination becomes the real server; it must route its
                   replies back through the balancer, which restores the VIP
          fullnat  also the client becomes a local address of the balancer: the
                   real servers need no route back through it
          dr       the packet is unchanged and steered by fwmark to a real server
                   on the same L2 network, which holds the VIP on lo and answers
                   the client directly
          tun      the packet is wrapped in IPIP to a real server anywhere, which
                   unwraps it (nfqlb decap), holds the VIP on lo and answers the
                   client directly

        Typical use, as root:
          nfqlb check --config lb.yaml           # validate
          scripts/iptables-setup.sh up lb.yaml   # install the rules and routes
          nfqlb run --config lb.yaml             # balance until SIGINT/SIGTERM
          scripts/iptables-setup.sh down         # remove them again
        While it runs (control socket; ipvsadm's flags):
          nfqlb list -n --stats                  # ipvsadm -Ln --stats
          nfqlb real edit -t VIP:PORT -r RIP:PORT -w 0
          nfqlb reload                           # SIGHUP, with the outcome
        On DR and TUN real servers: nfqlb real-server setup --vip VIP --mode dr|tun
        Several balancers behind a BGP router (ECMP): nfqlb cluster config, nfqlb cluster status
        """,
        subcommands: [Run.self, Check.self, Rules.self, ConntrackCommand.self, RealServerCommand.self, Decap.self,
                      List.self, ServiceCommand.self, RealCommand.self, Zero.self, Reload.self, Save.self,
                      ImportCommand.self, ClusterCommand.self]
    )
}
