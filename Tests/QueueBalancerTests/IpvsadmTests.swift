import Testing
@testable import QueueBalancer

/// `nfqlb import ipvsadm` and `nfqlb save --format ipvsadm`: ipvsadm-save output to nfqlb YAML and back.
@Suite struct IpvsadmTests {
    static let sample = """
    # ipvsadm-save -n
    -A -t 203.0.113.10:80 -s wlc
    -a -t 203.0.113.10:80 -r 198.51.100.11:8080 -m -w 1
    -a -t 203.0.113.10:80 -r 198.51.100.12:8080 -m -w 3 -x 100 -y 80
    ipvsadm -A -u 203.0.113.10:53 -s rr -o
    ipvsadm -a -u 203.0.113.10:53 -r 198.51.100.11 -g -w 1
    -A -t 203.0.113.11:443 -s sh -b sh-fallback,sh-port -p 600 -M 255.255.255.0
    -a -t 203.0.113.11:443 -r 198.51.100.13:443 -i -w 2
    -A -t [2001:db8:f::10]:80 -s mh -b mh-port -p
    -a -t [2001:db8:f::10]:80 -r [2001:db8:5::11]:80 -g -w 1
    -a -t [2001:db8:f::10]:80 -r [2001:db8:5::12]:80 -w 0
    -E -t 203.0.113.10:80 -s lc
    -e -t 203.0.113.10:80 -r 198.51.100.11:8080 -m -w 5
    """

    @Test func importsServicesSchedulersAndRealServers() throws {
        let yaml = try Ipvsadm.importRules(Self.sample, file: "rules")
        let config = try ConfigLoader.parse(yaml: yaml)
        #expect(config.services.map(\.description) == ["203.0.113.10:80/tcp", "203.0.113.10:53/udp", "203.0.113.11:443/tcp", "[2001:db8:f::10]:80/tcp"])
        let web = config.services[0]
        #expect(web.mode == .nat && web.scheduler == .lc, "-E changed the scheduler")
        #expect(web.reals.map(\.weight) == [5, 3] && web.reals[1].upper == 100 && web.reals[1].lower == 80)
        #expect(config.services[1].mode == .dr && config.services[1].onePacket && config.services[1].reals[0].port == 53,
                "ops, -g, and the service's port by default")
        let tls = config.services[2]
        #expect(tls.mode == .tun && tls.scheduler == .sh && tls.schedulerOptions.shFallback && tls.schedulerOptions.shPort)
        #expect(tls.persistence == 600 && tls.persistencePrefix == 24)
        let v6 = config.services[3]
        #expect(v6.mode == .dr && v6.persistence == 300 && v6.schedulerOptions.mhPort && v6.reals.map(\.weight) == [1, 0],
                "-p alone is 300 s; a real server without -m/-g/-i is -g")
    }

    /// Imported, saved as ipvsadm rules, imported again: the same configuration.
    @Test func roundTripsThroughSave() throws {
        let first = try ConfigLoader.parse(yaml: try Ipvsadm.importRules(Self.sample))
        let saved = try Ipvsadm.save(first)
        #expect(saved.hasPrefix("-A -t 203.0.113.10:80 -s lc\n-a -t 203.0.113.10:80 -r 198.51.100.11:8080 -m -w 5\n"))
        #expect(saved.contains("-A -t 203.0.113.11:443 -s sh -b sh-fallback,sh-port -p 600 -M 255.255.255.0\n"))
        let second = try ConfigLoader.parse(yaml: try Ipvsadm.importRules(saved))
        #expect(second == first)
    }

    /// What nfqlb cannot express is refused with the line that says it.
    @Test(arguments: [
        ("-A -f 1 -s rr", 1, "fwmark services (-f) are not supported: nfqlb matches VIP, port and protocol"),
        ("-A -t 203.0.113.10:80 -s rr\n-a -t 203.0.113.10:80 -r 198.51.100.11 -m\n-a -t 203.0.113.10:80 -r 198.51.100.12 -g",
         3, "198.51.100.12:80 is dr, the other real servers of -t 203.0.113.10:80 are nat: nfqlb sets the forwarding method per service"),
        ("-A -t web.example:http -s rr", 1, "'web.example' is not an IP address (names are not resolved: use ipvsadm-save -n)"),
        ("-A -t 203.0.113.10:80 -s rr\n-D -t 203.0.113.10:80", 2, "'-D' is not an ipvsadm rule nfqlb can import (only -A, -E, -a, -e, as ipvsadm-save prints)"),
        ("-A -t 203.0.113.10:80 -s fancy", 1, "scheduler 'fancy' is not one of rr wrr lc wlc sed nq dh sh mh lblc lblcr fo ovf twos"),
        ("-A -t 203.0.113.10:80 -s rr\n\n-a -t 203.0.113.10:81 -r 198.51.100.11", 3, "real server for -t 203.0.113.10:81, a service not added before"),
        ("-A -t 203.0.113.10:80 -s rr --pe sip", 1, "service option '--pe' cannot be imported"),
        ("-A -t 203.0.113.10:80 -s rr", 1, "service -t 203.0.113.10:80 has no real server (-a)"),
    ])
    func refusesWhatItCannotExpress(rules: String, line: Int, reason: String) {
        #expect(throws: ConfigError(file: "rules", line: line, reason: reason)) { try Ipvsadm.importRules(rules, file: "rules") }
    }

    @Test func saveRefusesWhatIpvsadmCannotSay() throws {
        let fullnat = try ConfigLoader.parse(yaml: """
            queues: [0]
            services:
              - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: fullnat, local-addresses: [198.51.100.1], reals: [ { address: 198.51.100.11 } ] }
            """)
        #expect(throws: ConfigError(file: "<running config>", line: 0, reason: "203.0.113.10:80/tcp: mode fullnat has no ipvsadm equivalent")) {
            try Ipvsadm.save(fullnat)
        }
        #expect(Ipvsadm.dottedMask(24) == "255.255.255.0" && Ipvsadm.dottedMask(0) == "0.0.0.0" && Ipvsadm.dottedMask(32) == "255.255.255.255")
    }
}
