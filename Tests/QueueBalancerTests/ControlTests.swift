import Foundation
import Logging
import Testing
@testable import QueueBalancer

/// The control protocol's framing and errors, without a socket.
@Suite struct ControlProtocolTests {
    func parse(_ text: String) -> Result<ControlRequest, ControlAnswer> { ControlRequest.parse(Array(text.utf8)) }

    @Test func aRequestIsReadWithItsIDAndArguments() throws {
        let request = try parse(#"{"id":"a1","cmd":"list","args":{"service":{"protocol":"tcp"}}}"#).get()
        #expect(request.id == .string("a1") && request.cmd == "list")
        #expect(request.args["service"]?["protocol"] == .string("tcp"))
        #expect(try parse(#"{"cmd":"reload"}"#).get() == ControlRequest(cmd: "reload"))
    }

    @Test(arguments: [
        ("not json", "bad-request"), ("[1, 2]", "bad-request"), (#"{"id": 3}"#, "bad-request"),
        (#"{"id": 3, "cmd": 7}"#, "bad-request"), (#"{"cmd": "list", "args": [1]}"#, "bad-request"),
        ("{\"cmd\": \"list\"", "bad-request"), ("", "bad-request"),
    ])
    func malformedRequestsGetAnErrorAnswer(line: String, code: String) {
        guard case .failure(let answer) = parse(line) else { Issue.record("\(line) was accepted"); return }
        #expect(answer.errorCode == code && !answer.isSuccess)
        // Every answer is one line of JSON.
        #expect(answer.line.filter { $0 == "\n" }.count == 1 && answer.line.hasSuffix("\n"))
        #expect((try? JSONValue.parse(Array(answer.line.utf8))) != nil)
    }

    @Test func theIDOfABadRequestIsEchoedWhenItCanBeRead() {
        guard case .failure(let answer) = parse(#"{"id": 42, "args": {}}"#) else { Issue.record("accepted"); return }
        #expect(answer.value["id"] == JSONValue(42))
    }

    @Test func aHugeLineIsRefusedAsTooLong() {
        let line = #"{"cmd":"list","args":{"x":""# + String(repeating: "y", count: ControlRequest.maximumLength) + #""}}"#
        guard case .failure(let answer) = parse(line) else { Issue.record("accepted"); return }
        #expect(answer.errorCode == "too-long")
    }

    @Test func requestsAndAnswersRoundTrip() throws {
        let request = ControlRequest(id: JSONValue(7), cmd: "real.edit", args: ["real": .object(["weight": JSONValue(0)])])
        #expect(try parse(String(request.line.dropLast())).get() == request)
        let answer = ControlAnswer.failure(id: .null, code: .invalid, message: "lb.yaml:3: bad")
        #expect(answer.line == #"{"error":{"code":"invalid","message":"lb.yaml:3: bad"},"id":null,"ok":false}"# + "\n")
    }
}

/// The configuration as a document: what `save` writes and live changes edit, validated by the loader.
@Suite struct ConfigDocumentTests {
    static let rich = """
        queues: [2, 3]
        syn-queue: 9
        fwmark-base: 8192
        fullnat-ports: 50000-60000
        max-connections: 1000
        queue-length: 100
        socket-buffer-mb: 4
        metrics-listen: "[::1]:9469"
        timeouts: { tcp: 600, tcpfin: 60, udp: 30 }
        services:
          - { name: web, vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, scheduler: sh,
              scheduler-flags: [sh-fallback, sh-port], persistence: 300, persistence-netmask: 255.255.255.0, drain: 30,
              reals: [{ address: 198.51.100.11, port: 8080, weight: 3, upper: 100, lower: 50 }, { address: 198.51.100.12, weight: 0 }] }
          - { vip: "2001:db8:f::10", port: 53, protocol: udp, mode: dr, scheduler: rr, ops: true,
              reals: [{ address: "2001:db8:5::11" }] }
          - { vip: 203.0.113.11, port: 443, protocol: tcp, mode: fullnat, scheduler: mh, mh-table-size: 251,
              local-addresses: [198.51.100.1, 198.51.100.2], offload: conntrack, reals: [{ address: 198.51.100.13 }] }
          - { vip: 203.0.113.12, port: 80, protocol: tcp, mode: tun, tunnel-source: 192.0.2.1, reals: [{ address: 198.51.100.14 }] }
        """

    @Test(arguments: ["rich", "examples/nat.yaml", "examples/dual-stack.yaml"])
    func aConfigSurvivesTheRoundTrip(source: String) throws {
        let config = source == "rich" ? try ConfigLoader.parse(yaml: Self.rich)
            : try ConfigLoader.load(path: EndToEnd.packageRoot.appendingPathComponent(source).path)
        let yaml = ConfigDocument.yaml(ConfigDocument.document(config))
        #expect(try ConfigLoader.parse(yaml: yaml) == config, "\(yaml)")
    }

    @Test func defaultsAreLeftOut() throws {
        let yaml = ConfigDocument.yaml(ConfigDocument.document(natConfig()))
        #expect(yaml == """
            queues: [0]
            services:
              - vip: 203.0.113.10
                port: 80
                protocol: tcp
                mode: nat
                scheduler: rr
                reals:
                  - { address: 198.51.100.11, port: 8080, weight: 1 }
                  - { address: 198.51.100.12, port: 8080, weight: 1 }
              - vip: 203.0.113.10
                port: 53
                protocol: udp
                mode: nat
                scheduler: rr
                reals:
                  - { address: 198.51.100.11, port: 5353, weight: 1 }
                  - { address: 198.51.100.12, port: 5353, weight: 1 }

            """)
    }
}

/// Live changes on a document: what they name, what they refuse, and whether the file defines them.
@Suite struct ConfigChangeTests {
    let web = ConfigChange.ServiceID(transport: .tcp, endpoint: endpoint("203.0.113.10", 80))

    func apply(_ changes: ConfigChange...) throws -> BalancerConfig {
        var document = ConfigDocument.document(natConfig())
        for change in changes { document = try change.apply(to: document) }
        return try ConfigDocument.config(document)
    }

    @Test func realServersAreAddedEditedAndDeleted() throws {
        let config = try apply(.addReal(web, endpoint("198.51.100.13", 8080), fields: ["weight": JSONValue(5), "upper": JSONValue(10)]),
                               .editReal(web, endpoint("198.51.100.11", 8080), fields: ["weight": JSONValue(0)]),
                               .deleteReal(web, endpoint("198.51.100.12", 8080)))
        let reals = config.services[0].reals
        #expect(reals.map(\.endpoint) == [endpoint("198.51.100.11", 8080), endpoint("198.51.100.13", 8080)])
        #expect(reals.map(\.weight) == [0, 5] && reals[1].upper == 10)
    }

    @Test func servicesAreAddedEditedAndDeleted() throws {
        let id = ConfigChange.ServiceID(transport: .tcp, endpoint: endpoint("203.0.113.20", 443))
        let fields: [String: JSONValue] = ["mode": .string("nat"), "scheduler": .string("wrr"),
                                           "reals": .array([.object(["address": .string("198.51.100.21")])])]
        let config = try apply(.addService(id, fields: fields),
                               .editService(id, fields: ["persistence": JSONValue(60), "scheduler": .string("lc")]),
                               .deleteService(ConfigChange.ServiceID(transport: .udp, endpoint: endpoint("203.0.113.10", 53))))
        #expect(config.services.map(\.description) == ["203.0.113.10:80/tcp", "203.0.113.20:443/tcp"])
        #expect(config.services[1].scheduler == .lc && config.services[1].persistence == 60)
        #expect(config.services[1].reals.map(\.endpoint) == [endpoint("198.51.100.21", 443)])
    }

    @Test func whatDoesNotExistOrExistsAlreadyIsRefused() {
        #expect(throws: ConfigChange.Refusal.self) { try apply(.addReal(web, endpoint("198.51.100.11", 8080), fields: [:])) }
        #expect(throws: ConfigChange.Refusal.self) { try apply(.editReal(web, endpoint("198.51.100.99", 8080), fields: [:])) }
        #expect(throws: ConfigChange.Refusal.self) {
            try apply(.deleteService(ConfigChange.ServiceID(transport: .udp, endpoint: endpoint("203.0.113.10", 80))))
        }
        #expect(throws: ConfigChange.Refusal.self) {
            try apply(.deleteReal(web, endpoint("198.51.100.11", 8080)), .deleteReal(web, endpoint("198.51.100.12", 8080)))
        }
    }

    @Test func invalidValuesAreRefusedByTheLoaderWithItsReason() {
        do {
            _ = try apply(.editReal(web, endpoint("198.51.100.11", 8080), fields: ["weight": JSONValue(70000)]))
            Issue.record("weight 70000 accepted")
        } catch let error as ConfigError {
            #expect(error.reason == "weight 70000 is out of range 0..65535")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func theFileDefinesItsOwnServicesAndRealServersOnly() {
        let file = natConfig()
        #expect(ConfigChange.editReal(web, endpoint("198.51.100.11", 8080), fields: [:]).isDefined(by: file))
        #expect(!ConfigChange.addReal(web, endpoint("198.51.100.13", 8080), fields: [:]).isDefined(by: file))
        #expect(ConfigChange.editService(web, fields: [:]).isDefined(by: file))
        let other = ConfigChange.ServiceID(transport: .tcp, endpoint: endpoint("203.0.113.20", 80))
        #expect(!ConfigChange.addService(other, fields: [:]).isDefined(by: file))
    }
}

/// The control plane over a balancer that is not bound to queues: packets go through its handler directly.
@Suite struct ControlPlaneTests {
    let logger = Logger(label: "test")

    func plane(file: String) -> ControlPlane {
        let config = try! ConfigLoader.load(path: file)
        return ControlPlane(balancer: Balancer(config: config, logger: logger), configPath: file, rules: nil, logger: logger)
    }

    func temporaryConfig(_ text: String) -> String {
        let path = NSTemporaryDirectory() + "nfqlb-control-\(UUID().uuidString).yaml"
        try! text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let twoReals = """
        queues: [0]
        services:
          - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, scheduler: rr,
              reals: [{ address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080 }] }
        """

    func call(_ plane: ControlPlane, _ cmd: String, _ args: [String: JSONValue] = [:]) -> ControlAnswer {
        plane.answer(ControlRequest(id: JSONValue(1), cmd: cmd, args: args), uid: 0)
    }

    @Test func statsCountConnectionsPacketsAndBytesPerRealServer() throws {
        let path = temporaryConfig(Self.twoReals)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plane = plane(file: path)
        let handler = plane.balancer.handler
        var counters = handler.counterBatch(worker: 0)
        // Two connections (rr: one per server), each a SYN in, a SYN-ACK out, 100 bytes of data in.
        for port: UInt16 in [40000, 40001] {
            var syn = PacketBuilder()
            syn.sourcePort = port
            _ = handler.run(syn.build(), counters: &counters)
            let real: [UInt8] = port == 40000 ? [198, 51, 100, 11] : [198, 51, 100, 12]
            var synAck = PacketBuilder()
            (synAck.source, synAck.sourcePort, synAck.destination, synAck.destinationPort, synAck.tcpFlags) = (real, 8080, [192, 0, 2, 2], port, 0x12)
            _ = handler.run(synAck.build(), counters: &counters)
            var data = syn
            data.tcpFlags = 0x18
            data.payload = Array(repeating: 0x61, count: 100)
            _ = handler.run(data.build(), counters: &counters)
        }
        let list = call(plane, "list")
        let reals = try #require(list.result?["services"]?.array?.first?["reals"]?.array)
        for real in reals {
            #expect(real["stats"] == .object(["conns": JSONValue(1), "inpkts": JSONValue(2), "outpkts": JSONValue(1),
                                              "inbytes": JSONValue(40 + 140), "outbytes": JSONValue(40)]))
        }
        #expect(list.result?["services"]?.array?.first?["stats"]?["inpkts"] == JSONValue(4))
        // Zeroed: from 0 again, and new traffic counts from there.
        #expect(call(plane, "zero").isSuccess)
        var again = PacketBuilder()
        again.sourcePort = 40000
        again.tcpFlags = 0x10
        _ = handler.run(again.build(), counters: &counters)
        let after = try #require(call(plane, "list").result?["services"]?.array?.first?["reals"]?.array)
        #expect(after.map { $0["stats"]?["inpkts"] } == [JSONValue(1), JSONValue(0)])
        #expect(after.map { $0["stats"]?["conns"] } == [JSONValue(0), JSONValue(0)])
    }

    @Test func aRealServerEditedToWeightZeroIsQuiescentAndKeepsItsConnections() throws {
        let path = temporaryConfig(Self.twoReals)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plane = plane(file: path)
        let service: JSONValue = .object(["protocol": .string("tcp"), "vip": .string("203.0.113.10"), "port": JSONValue(80)])
        let answer = call(plane, "real.edit", ["service": service,
                                               "real": .object(["address": .string("198.51.100.11"), "port": JSONValue(8080), "weight": JSONValue(0)])])
        #expect(answer.isSuccess, "\(answer.value)")
        let reals = try #require(call(plane, "list").result?["services"]?.array?.first?["reals"]?.array)
        #expect(reals.map { $0["state"] } == [.string("quiescent"), .string("active")])
        // Refused changes name their reason and change nothing.
        let refused = call(plane, "real.edit", ["service": service,
                                                "real": .object(["address": .string("198.51.100.12"), "port": JSONValue(8080), "weight": JSONValue(-1)])])
        #expect(refused.errorCode == "invalid" && refused.errorMessage == "weight -1 is out of range 0..65535")
        #expect(plane.balancer.handler.config.services[0].reals.map(\.weight) == [0, 1])
        #expect(call(plane, "real.add", ["service": service]).errorCode == "bad-argument")
        #expect(call(plane, "frobnicate").errorCode == "unknown-command")
    }

    @Test func aBrokenFileIsRefusedWithItsLineAndTheRunningConfigStays() throws {
        let path = temporaryConfig(Self.twoReals)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plane = plane(file: path)
        try (Self.twoReals + "\nbogus: 1\n").write(toFile: path, atomically: true, encoding: .utf8)
        let answer = call(plane, "reload")
        #expect(answer.errorCode == "invalid")
        #expect(answer.errorMessage?.hasPrefix("\(path):5: unknown key 'bogus' in the configuration") == true, "\(answer.errorMessage ?? "")")
        #expect(plane.balancer.handler.config.services[0].reals.count == 2)
        #expect(plane.reloadCounts.failed == 1 && plane.reloadCounts.succeeded == 0)
    }

    @Test func liveChangesAreLayeredOnTheFile() throws {
        let path = temporaryConfig(Self.twoReals)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plane = plane(file: path)
        let service: JSONValue = .object(["protocol": .string("tcp"), "vip": .string("203.0.113.10"), "port": JSONValue(80)])
        func real(_ address: String, _ weight: Int) -> JSONValue {
            .object(["address": .string(address), "port": JSONValue(8080), "weight": JSONValue(weight)])
        }
        #expect(call(plane, "real.edit", ["service": service, "real": real("198.51.100.11", 0)]).isSuccess)   // the file's
        #expect(call(plane, "real.add", ["service": service, "real": real("198.51.100.13", 4)]).isSuccess)    // not the file's
        #expect(call(plane, "reload").isSuccess)
        let reals = plane.balancer.handler.config.services[0].reals
        // The file wins for its own real server (weight 1 again); the live-added one stays.
        #expect(reals.map(\.address) == [ip("198.51.100.11"), ip("198.51.100.12"), ip("198.51.100.13")])
        #expect(reals.map(\.weight) == [1, 1, 4])
        // Once the file defines it too, the file's version wins.
        try (Self.twoReals.replacingOccurrences(of: "port: 8080 }] }", with: "port: 8080 }, { address: 198.51.100.13, port: 8080, weight: 9 }] }"))
            .write(toFile: path, atomically: true, encoding: .utf8)
        #expect(call(plane, "reload").isSuccess)
        #expect(plane.balancer.handler.config.services[0].reals.map(\.weight) == [1, 1, 9])
        let saved = try #require(call(plane, "save").result?["text"]?.string)
        #expect(try ConfigLoader.parse(yaml: saved) == plane.balancer.handler.config)
    }

    @Test func theRulesOfLeavingRealServersStayUntilTheyAreForgotten() throws {
        let config = natConfig()
        let registry = RealServerRegistry()
        try registry.apply(config, now: 0)
        var smaller = config
        smaller.services[0].reals.removeLast()
        smaller.services[0].drain = 60
        var leaving = config
        leaving.services[0].drain = 60
        try registry.apply(leaving, now: 0)
        try registry.apply(smaller, now: 0)
        // 198.51.100.12 drains: its reply rules are still wanted.
        #expect(ControlPlane.rulesConfig(running: smaller, retained: [leaving], registry: registry).services[0].reals.count == 2)
        // Drained and freed: only the running config's rules.
        registry.advance(now: 61_000)
        registry.advance(now: 62_000)
        #expect(ControlPlane.rulesConfig(running: smaller, retained: [leaving], registry: registry) == smaller)
    }
}

/// The control socket itself, over a real Unix socket in a temporary directory.
@Suite struct ControlServerTests {
    let logger = Logger(label: "test")

    /// Runs a server for the duration of `body`, with a short idle timeout.
    func withServer(_ body: (String) throws -> Void) throws {
        let directory = NSTemporaryDirectory() + "nfqlb-socket-\(UUID().uuidString.prefix(8))"
        let path = directory + "/ctl.sock"
        let config = natConfig()
        let plane = ControlPlane(balancer: Balancer(config: config, logger: logger), configPath: "/nonexistent.yaml",
                                 rules: nil, logger: logger)
        let server = try ControlServer(path: path, plane: plane, logger: logger, idleTimeoutMilliseconds: 300)
        let stop = StopSignal()
        let thread = Thread { server.run(stop: stop) }
        thread.start()
        defer {
            stop.raise()
            while FileManager.default.fileExists(atPath: path) { Thread.sleep(forTimeInterval: 0.05) }
            try? FileManager.default.removeItem(atPath: directory)
        }
        try body(path)
    }

    @Test func answersRequestsAndErrorsOnOneConnection() throws {
        try withServer { path in
            var info = stat()
            #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
            let client = try ControlClient(path: path, timeoutMilliseconds: 5000)
            let list = try client.call("list")
            #expect(list.isSuccess && list.result?["services"]?.array?.count == 2)
            try client.write("garbage\n")
            #expect(try JSONValue.parse(client.readLine())["error"]?["code"] == .string("bad-request"))
            #expect(try client.call("nope").errorCode == "unknown-command")
            let reload = try client.call("reload")
            #expect(reload.errorCode == "invalid" && reload.errorMessage?.contains("/nonexistent.yaml") == true)
            // Still serving after all of it.
            #expect(try client.call("list").isSuccess)
        }
    }

    @Test func aReadOnlySocketListsAndRefusesChanges() throws {
        let directory = NSTemporaryDirectory() + "nfqlb-ro-\(UUID().uuidString.prefix(8))"
        let path = directory + "/ro.sock"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plane = ControlPlane(balancer: Balancer(config: natConfig(), logger: logger), configPath: "/x", rules: nil, logger: logger)
        let server = try ControlServer(path: path, plane: plane, logger: logger, readOnlyGroup: getegid())
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o660 && info.st_gid == getegid())
        let stop = StopSignal()
        Thread { server.run(stop: stop) }.start()
        defer {
            stop.raise()
            while !server.finished.isRaised { Thread.sleep(forTimeInterval: 0.05) }
        }
        let client = try ControlClient(path: path, timeoutMilliseconds: 5000)
        #expect(try client.call("list").isSuccess)
        #expect(try client.call("save").isSuccess)
        let change = try client.call("zero")
        #expect(change.errorCode == "denied" && change.errorMessage?.hasPrefix("this socket is read-only") == true)
    }

    @Test func anOversizedLineGetsTooLongAndTheConnectionCloses() throws {
        try withServer { path in
            let client = try ControlClient(path: path, timeoutMilliseconds: 5000)
            try? client.write(String(repeating: "x", count: ControlRequest.maximumLength + 20_000))
            #expect(try JSONValue.parse(client.readLine())["error"]?["code"] == .string("too-long"))
            #expect(throws: ControlSocketError.self) { try client.readLine() }
            // Others are served.
            #expect(try ControlClient(path: path).call("list").isSuccess)
        }
    }

    @Test func aSilentClientTimesOut() throws {
        try withServer { path in
            let client = try ControlClient(path: path, timeoutMilliseconds: 5000)
            try client.write(#"{"cmd": "li"#)
            #expect(try JSONValue.parse(client.readLine())["error"]?["code"] == .string("timeout"))
        }
    }

    @Test func aLiveSocketIsNotTakenOverAndAStaleOneIs() throws {
        try withServer { path in
            let plane = ControlPlane(balancer: Balancer(config: natConfig(), logger: logger), configPath: "/x", rules: nil, logger: logger)
            #expect(throws: ControlSocketError.self) { _ = try ControlServer(path: path, plane: plane, logger: logger) }
        }
        // A socket file nobody listens on (a crashed nfqlb's) is replaced.
        let directory = NSTemporaryDirectory() + "nfqlb-stale-\(UUID().uuidString.prefix(8))"
        let path = directory + "/ctl.sock"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let plane = ControlPlane(balancer: Balancer(config: natConfig(), logger: logger), configPath: "/x", rules: nil, logger: logger)
        let first = try ControlServer(path: path, plane: plane, logger: logger)
        _ = first   // never run: the file stays, nobody accepts
        let stop = StopSignal()
        stop.raise()
        first.run(stop: stop)   // closes and unlinks
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        #expect(throws: ControlSocketError.self) { _ = try ControlServer(path: path, plane: plane, logger: logger) }
    }
}

/// `nfqlb list` as ipvsadm prints it.
@Suite struct ListFormatterTests {
    static let result: JSONValue = {
        let text = #"""
        {"size": 1024, "services": [{"protocol": "tcp", "vip": "203.0.113.10", "port": 80, "scheduler": "wlc", "mode": "nat",
          "persistence": 300, "persistence-netmask": 24,
          "stats": {"conns": 3, "inpkts": 123456789, "outpkts": 12, "inbytes": 5000, "outbytes": 0},
          "rate": {"cps": 1, "inpps": 2, "outpps": 3, "inbps": 4, "outbps": 5},
          "reals": [{"address": "198.51.100.11", "port": 8080, "forward": "Masq", "weight": 2, "active": 5, "inactive": 1,
                     "state": "draining", "upper": 100, "lower": 50, "persistent": 7,
                     "stats": {"conns": 3, "inpkts": 123456789, "outpkts": 12, "inbytes": 5000, "outbytes": 0},
                     "rate": {"cps": 1, "inpps": 2, "outpps": 3, "inbps": 4, "outbps": 5}}]}]}
        """#
        return try! JSONValue.parse(Array(text.utf8))
    }()

    @Test func standardColumns() {
        #expect(ListFormatter().services(Self.result) == """
            nfqlb virtual servers (connection table size=1024)
            Prot LocalAddress:Port Scheduler Flags
              -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State
            TCP  203.0.113.10:80 wlc persistent 300 mask 255.255.255.0
              -> 198.51.100.11:8080           Masq    2      5          1         draining

            """)
    }

    @Test func statsWithLargeNumbersAndExact() {
        let stats = ListFormatter(columns: .stats).services(Self.result).split(separator: "\n")
        #expect(stats[3] == "TCP  203.0.113.10:80                     3  123456K       12     5000        0")
        let exact = ListFormatter(columns: .stats, exact: true).services(Self.result).split(separator: "\n")
        #expect(exact[4] == "  -> 198.51.100.11:8080                  3 123456789       12     5000        0")
    }

    @Test func thresholdsAndPersistentConnections() {
        let thresholds = ListFormatter(columns: .thresholds).services(Self.result).split(separator: "\n")
        #expect(thresholds[4] == "  -> 198.51.100.11:8080           100        50         5          1")
        let persistent = ListFormatter(columns: .persistent).services(Self.result).split(separator: "\n")
        #expect(persistent[4] == "  -> 198.51.100.11:8080           Masq    2      7           5          1")
    }
}

/// The metrics' names, labels and values, rendered as Prometheus scrapes them.
@Suite struct MetricsExporterTests {
    @Test func namesLabelsAndValuesFollowNodeExportersIPVSCollector() throws {
        let logger = Logger(label: "test")
        let balancer = Balancer(config: natConfig(weights: [1, 3]), logger: logger)
        let plane = ControlPlane(balancer: balancer, configPath: "/x", rules: nil, logger: logger)
        let exporter = MetricsExporter(plane: plane)
        var counters = balancer.handler.counterBatch(worker: 0)
        var syn = PacketBuilder()
        syn.payload = Array(repeating: 1, count: 60)
        _ = balancer.handler.run(syn.build(), counters: &counters)   // rr: the first real server
        let text = exporter.render()
        let labels = #"{local_address="203.0.113.10",local_port="80",remote_address="198.51.100.11",remote_port="8080",proto="TCP"}"#
        for line in ["nfqlb_backend_connections_total\(labels) 1", "nfqlb_backend_incoming_packets_total\(labels) 1",
                     "nfqlb_backend_incoming_bytes_total\(labels) 100", "nfqlb_backend_outgoing_packets_total\(labels) 0",
                     "nfqlb_ipvs_backend_connections_inactive\(labels) 1.0", "nfqlb_ipvs_backend_weight\(labels) 1.0",
                     "nfqlb_backend_state\(labels) 0.0", "nfqlb_ipvs_connections_total 1", "nfqlb_ipvs_incoming_bytes_total 100",
                     "nfqlb_tracker_connections 1.0", "nfqlb_reloads_total{result=\"failure\"} 0",
                     "nfqlb_build_info{version=\"\(MetricsExporter.version)\"} 1.0"] {
            #expect(text.split(separator: "\n").contains(Substring(line)), "missing: \(line)")
        }
        // Zeroing the listed counters leaves the exported ones alone (counters never go down).
        _ = plane.answer(ControlRequest(cmd: "zero"), uid: 0)
        #expect(exporter.render().contains("nfqlb_backend_incoming_bytes_total\(labels) 100"))
        // Every series of a family has the same label names, none of which is a state.
        for line in text.split(separator: "\n") where line.hasPrefix("nfqlb_backend_") || line.hasPrefix("nfqlb_ipvs_backend_") {
            #expect(line.contains(#"{local_address=""#) && line.contains(#",proto=""#) && !line.contains("state="))
        }
    }
}
