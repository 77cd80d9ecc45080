/// The conntrack fast path (`offload: conntrack`), what it shares across the modes that take it (NAT,
/// FULLNAT, DR). nfqlb sees only the first packet of a connection: it schedules it as always, and its verdict
/// is NF_REPEAT with the real server's mark. The packet then runs the mangle chain again, which saves the mark
/// in the kernel's connection (CONNMARK) and lets it on; every later packet of the connection gets the mark
/// back from the connection before it could be queued, in both directions, and the kernel does the rest: its
/// NAT rewrites NAT and FULLNAT connections (a DNAT, and for FULLNAT an SNAT, per mark), DR's policy routes
/// steer by the mark. Each mode's forwarder brings its own rules (``ForwardingMethod/offloadRules(for:marks:config:)``);
/// this type numbers the marks and writes the queueing chain they share. See docs/ARCHITECTURE.md, "Kernel facts".
enum ConntrackOffload {
    /// The mangle chain that hands a marked first packet to the kernel and queues the rest.
    static let chain = "NFQLB-OFFLOAD"

    /// Which packet a NAT or FULLNAT mark stands for: a real server of a service and, for FULLNAT, the local
    /// address its connections leave from.
    struct MarkKey: Hashable, Sendable {
        var vip: IPAddress
        var port: UInt16
        var transport: TransportProtocol
        var real: Endpoint
        var local: IPAddress?

        init(service: VirtualService, real: RealServer, local: IPAddress? = nil) {
            vip = service.vip
            port = service.port
            transport = service.transport
            self.real = real.endpoint
            self.local = local
        }
    }

    /// The marks of the offloaded NAT and FULLNAT real servers (FULLNAT: one per local address), numbered in
    /// config order after the DR real servers' marks (``BalancerConfig/directRoutes``): an offloaded DR real
    /// server's mark is its route's.
    static func marks(for config: BalancerConfig) -> [MarkKey: Fwmark] {
        var marks: [MarkKey: Fwmark] = [:]
        var next = config.fwmarkBase.rawValue + UInt32(config.directRoutes.count)
        func add(_ key: MarkKey) {
            guard marks[key] == nil else { return }
            marks[key] = Fwmark(rawValue: next)
            next += 1
        }
        for service in config.services where service.offload == .conntrack {
            for real in service.reals {
                switch service.mode {
                case .nat: add(MarkKey(service: service, real: real))
                case .fullnat: service.localAddresses.forEach { add(MarkKey(service: service, real: real, local: $0)) }
                case .dr, .tun: break
                }
            }
        }
        return marks
    }

    /// Refuses a change of a service's `offload` while nfqlb runs (its queue and rules differ). Marks of NAT
    /// and FULLNAT real servers may move between configs: a mark matters only for a connection's first packet
    /// (it picks the DNAT/SNAT rule; the kernel's connection keeps its translation after that), and nfqlb
    /// tells its connections apart by their reply tuple. DR's marks are routes, which
    /// ``DirectRoutingForwarder/checkMarks(from:to:)`` keeps in place.
    static func checkMarks(from old: BalancerConfig, to new: BalancerConfig) throws(ConfigUpdateError) {
        for service in new.services {
            if let old = old.services.first(where: { $0.vip == service.vip && $0.port == service.port && $0.transport == service.transport }),
               old.offload != service.offload {
                throw ConfigUpdateError(reason: "offload of \(service) cannot change while nfqlb runs: restart it")
            }
        }
    }

    /// Who owns each kernel connection of the fast path in `config`, as the position of its real server in
    /// `config.services[i].reals`: NAT and FULLNAT connections by the real server their replies come from, DR
    /// ones by their route's mark.
    static func owners(for config: BalancerConfig) -> [OffloadOwner: (service: Int, real: Int)] {
        let routes = Dictionary(config.directRoutes.map { ($0.realServer, $0.mark) }, uniquingKeysWith: { a, _ in a })
        var owners: [OffloadOwner: (service: Int, real: Int)] = [:]
        for (s, service) in config.services.enumerated() where service.offload == .conntrack {
            for (r, real) in service.reals.enumerated() {
                let owner: OffloadOwner
                switch service.mode {
                case .nat, .fullnat: owner = OffloadOwner(service: service, translatedTo: real.endpoint)
                case .dr:
                    guard let mark = routes[real.address] else { continue }
                    owner = OffloadOwner(service: service, mark: mark)
                case .tun: continue
                }
                owners[owner] = (s, r)
            }
        }
        return owners
    }

    /// The mark bits nfqlb gives and reads back on this path (below ``Fwmark/translated``).
    static let markMask: Fwmark = 0x00FF_FFFF

    /// The mangle PREROUTING rules of one offloaded service, in the order that works (verified on this
    /// kernel): a marked packet (nfqlb's NF_REPEAT) has its mark saved in its connection and goes on; then the
    /// connection's mark is restored, and a packet that has one goes on; only the others are queued. (Restoring
    /// before saving would wipe the verdict's mark and loop the packet; saving after the queue never runs.)
    static func mangleRules(for service: VirtualService, queueTarget: String) -> [String] {
        let proto = service.transport.description
        let match = "-d \(IptablesRules.host(service.vip)) -p \(proto) -m \(proto) --dport \(service.port)"
        let comment = "-m comment --comment \"nfqlb \(service.mode) \(service): conntrack offload\""
        let marked = "-m mark ! --mark 0/\(markMask)"
        return [
            "-A \(chain) \(match) \(marked) \(comment) -j CONNMARK --save-mark --mask \(markMask)",
            "-A \(chain) \(match) \(marked) \(comment) -j ACCEPT",
            "-A \(chain) \(match) \(comment) -j CONNMARK --restore-mark --mask \(markMask)",
            "-A \(chain) \(match) \(marked) \(comment) -j ACCEPT",
            "-A \(chain) \(match) \(comment) -j \(queueTarget)",
        ]
    }
}

/// The owner of a kernel connection on the conntrack fast path, as its conntrack entry shows it: the original
/// destination (the virtual service), and the real server: for NAT and FULLNAT where its replies come from
/// (the reply tuple's source), for DR its route's mark (the replies do not pass the balancer).
struct OffloadOwner: Hashable, Sendable {
    var vip: IPAddress
    var port: UInt16
    var transport: TransportProtocol
    /// NAT, FULLNAT: the real server's endpoint; DR: unspecified.
    var real: Endpoint
    /// DR: the route's mark (under ``ConntrackOffload/markMask``); NAT, FULLNAT: 0.
    var mark: Fwmark

    init(service: VirtualService, translatedTo real: Endpoint) {
        (vip, port, transport) = (service.vip, service.port, service.transport)
        self.real = real
        mark = 0
    }

    init(service: VirtualService, mark: Fwmark) {
        (vip, port, transport) = (service.vip, service.port, service.transport)
        real = FlowKey.unspecified.source
        self.mark = mark
    }

    /// The two owners `entry` could name: translated (NAT, FULLNAT), and marked (DR).
    static func candidates(_ entry: ConntrackEntry) -> (translated: OffloadOwner, marked: OffloadOwner) {
        let service = entry.original.destination
        var translated = OffloadOwner(vip: service.address, port: service.port, transport: entry.original.transport,
                                      real: entry.reply.source, mark: 0)
        var marked = translated
        marked.real = FlowKey.unspecified.source
        marked.mark = Fwmark(rawValue: entry.mark.rawValue & ConntrackOffload.markMask.rawValue)
        if entry.reply.source == service { translated.real = FlowKey.unspecified.source }  // not translated
        return (translated, marked)
    }

    private init(vip: IPAddress, port: UInt16, transport: TransportProtocol, real: Endpoint, mark: Fwmark) {
        (self.vip, self.port, self.transport, self.real, self.mark) = (vip, port, transport, real, mark)
    }
}

extension Dictionary where Key == OffloadOwner {
    /// The owner of `entry` among these, if it has one: a connection with one of nfqlb's marks, translated to
    /// a known real server (NAT, FULLNAT) or marked with a known route (DR).
    func owner(of entry: ConntrackEntry) -> Value? {
        guard entry.mark.rawValue & ConntrackOffload.markMask.rawValue != 0 else { return nil }
        let (translated, marked) = OffloadOwner.candidates(entry)
        return self[translated] ?? self[marked]
    }
}

/// A rule in one of the chains nfqlb owns beside the raw queueing chain: the conntrack fast path's NAT.
struct ChainRule: Sendable, Equatable {
    /// The nat table's chains: DNAT at PREROUTING, SNAT at POSTROUTING.
    enum Chain: String, Sendable, CaseIterable {
        case destinationNAT = "NFQLB-DNAT"
        case sourceNAT = "NFQLB-SNAT"
        /// The raw table's queueing chain (``IptablesRules/chain``), for rules that only mark packets untracked.
        case raw = "NFQLB-PREROUTING"
    }

    var chain: Chain
    /// The whole rule after `-A CHAIN`.
    var rule: String
}
