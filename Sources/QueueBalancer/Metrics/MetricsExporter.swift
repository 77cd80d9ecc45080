import CoreMetrics
import Foundation
import Prometheus

/// The Prometheus metrics of a running balancer (`metrics-listen`), through swift-metrics with
/// swift-prometheus as its backend, in a registry of its own. Values are read from the balancer at each scrape
/// (``render()``): the per-real-server counters are the workers' blocks summed (``RealServerTraffic``), the
/// queues' counters their atomics, so the packet path does nothing for the metrics.
///
/// Names follow node_exporter's IPVS collector with `nfqlb_` in front of `ipvs_` (same label names:
/// `local_address`, `local_port`, `remote_address`, `remote_port`, `proto`), plus what it lacks. No label value
/// changes with state: a real server's lifecycle is a number (``lifecycleValues``), so series never multiply.
/// Counters never go down (`nfqlb zero` zeroes what `nfqlb list --stats` shows, not these).
public final class MetricsExporter: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private let plane: ControlPlane
    private let state: Lock<State>
    public static let version = "0.12.0"

    /// `nfqlb_backend_state`: 0 active, 1 quiescent (weight 0), 2 overloaded (-x threshold), 3 draining,
    /// 4 removed (drained, connections being forgotten).
    public static let lifecycleValues = ["active": 0.0, "quiescent": 1, "overloaded": 2, "draining": 3, "removed": 4]

    /// A counter fed from a monotonic total: incremented by what the total grew since the last scrape.
    final class FedCounter {
        let counter: CoreMetrics.Counter
        var last: UInt64
        init(_ counter: CoreMetrics.Counter, from value: UInt64 = 0) {
            self.counter = counter
            last = value
        }
        func feed(_ value: UInt64) {
            if value > last { counter.increment(by: Int64(clamping: value - last)) }
            last = value
        }
    }

    struct Backend {
        var active, inactive, weight, lifecycle: CoreMetrics.Meter
        var connections, packetsIn, packetsOut, bytesIn, bytesOut: FedCounter
        /// With a health check.
        var health: (up: CoreMetrics.Meter, transitions: FedCounter, probe: CoreMetrics.Meter)?
    }

    struct State: @unchecked Sendable {
        var backends: [RealServerRegistry.Key: Backend] = [:]
        var global: [String: FedCounter] = [:]
        var globalTotals = TrafficTotals()
        var queue: [String: FedCounter] = [:]
        var meters: [String: CoreMetrics.Meter] = [:]
    }

    public init(plane: ControlPlane) {
        self.plane = plane
        factory = PrometheusMetricsFactory(registry: registry)
        state = Lock(State())
        CoreMetrics.Meter(label: "nfqlb_build_info", dimensions: [("version", Self.version)], factory: factory).set(1.0)
    }

    /// The metrics now, in Prometheus' text exposition format.
    public func render() -> String {
        refresh()
        return registry.emitToString()
    }

    private func meter(_ state: inout State, _ name: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Meter {
        let key = name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        if let known = state.meters[key] { return known }
        let made = CoreMetrics.Meter(label: name, dimensions: dimensions, factory: factory)
        state.meters[key] = made
        return made
    }

    private func counter(_ table: inout [String: FedCounter], _ name: String, _ dimensions: [(String, String)] = []) -> FedCounter {
        let key = name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        if let known = table[key] { return known }
        let made = FedCounter(CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory))
        table[key] = made
        return made
    }

    private func refresh() {
        let balancer = plane.balancer
        let handler = balancer.handler
        let registry = handler.registry
        let entries = registry.servers()
        let reloads = plane.reloadCounts
        let health = plane.health?.observations ?? [:]
        let quorums = plane.quorumStates
        let cluster = plane.clusterStatus
        let sync = plane.syncCounters
        state.withLock { state in
            // Per real server: node_exporter's backend gauges, and the counters it lacks.
            var seen = Set<RealServerRegistry.Key>()
            var sum = TrafficTotals()
            for entry in entries {
                let key = entry.key
                seen.insert(key)
                let load = registry[entry.number]
                let totals = registry.traffic.lifetimeTotals(entry.number.index) &+ load.offloaded.totals
                var backend = state.backends[key] ?? makeBackend(key)
                if let observed = health[key] {
                    if backend.health == nil {
                        let labels = Self.labels(key)
                        backend.health = (CoreMetrics.Meter(label: "nfqlb_backend_up", dimensions: labels, factory: factory),
                                          FedCounter(CoreMetrics.Counter(label: "nfqlb_backend_health_transitions_total", dimensions: labels, factory: factory)),
                                          CoreMetrics.Meter(label: "nfqlb_backend_probe_duration_seconds", dimensions: labels, factory: factory))
                    }
                    backend.health?.up.set(observed.up ? 1.0 : 0.0)
                    backend.health?.transitions.feed(UInt64(observed.transitions))
                    backend.health?.probe.set(observed.probeSeconds)
                }
                state.backends[key] = backend
                backend.active.set(Double(max(0, load.active)))
                backend.inactive.set(Double(max(0, load.inactive)))
                backend.weight.set(Double(load.weight))
                let name = load.overloaded && entry.lifecycle == .active ? "overloaded" : "\(entry.lifecycle)"
                backend.lifecycle.set(Self.lifecycleValues[name] ?? 4)
                let grown = totals &- TrafficTotals(connections: backend.connections.last, packetsIn: backend.packetsIn.last,
                                                    packetsOut: backend.packetsOut.last, bytesIn: backend.bytesIn.last,
                                                    bytesOut: backend.bytesOut.last)
                sum = sum &+ grown
                backend.connections.feed(totals.connections)
                backend.packetsIn.feed(totals.packetsIn)
                backend.packetsOut.feed(totals.packetsOut)
                backend.bytesIn.feed(totals.bytesIn)
                backend.bytesOut.feed(totals.bytesOut)
            }
            for (key, backend) in state.backends where !seen.contains(key) {
                [backend.active, backend.inactive, backend.weight, backend.lifecycle].forEach { $0.destroy() }
                [backend.connections, backend.packetsIn, backend.packetsOut, backend.bytesIn, backend.bytesOut].forEach { $0.counter.destroy() }
                if let health = backend.health {
                    health.up.destroy()
                    health.transitions.counter.destroy()
                    health.probe.destroy()
                }
                state.backends[key] = nil
            }
            // node_exporter's totals (/proc/net/ip_vs_stats): every real server's traffic, gone ones included.
            state.globalTotals = state.globalTotals &+ sum
            let totals = state.globalTotals
            counter(&state.global, "nfqlb_ipvs_connections_total").feed(totals.connections)
            counter(&state.global, "nfqlb_ipvs_incoming_packets_total").feed(totals.packetsIn)
            counter(&state.global, "nfqlb_ipvs_outgoing_packets_total").feed(totals.packetsOut)
            counter(&state.global, "nfqlb_ipvs_incoming_bytes_total").feed(totals.bytesIn)
            counter(&state.global, "nfqlb_ipvs_outgoing_bytes_total").feed(totals.bytesOut)
            // Per queue: packets received, what became of them, and the kernel's drops.
            for (queue, counters) in balancer.queueCounters {
                let q = ("queue", "\(queue.rawValue)")
                for item in DatapathCounter.allCases {
                    let (name, dimension) = Self.metric(for: item)
                    counter(&state.queue, name, [q] + (dimension.map { [$0] } ?? [])).feed(counters[item])
                }
                let kernel = KernelQueueStats.read(queues: [queue])
                counter(&state.queue, "nfqlb_queue_kernel_dropped_packets_total", [q, ("reason", "queue_full")]).feed(kernel.queueDropped)
                counter(&state.queue, "nfqlb_queue_kernel_dropped_packets_total", [q, ("reason", "socket_buffer_full")]).feed(kernel.userDropped)
                meter(&state, "nfqlb_queue_waiting_packets", [q]).set(Double(kernel.waiting))
            }
            // The connection tracker.
            meter(&state, "nfqlb_tracker_connections").set(Double(handler.tracker.count))
            meter(&state, "nfqlb_tracker_capacity").set(Double(handler.config.maxConnections))
            counter(&state.global, "nfqlb_tracker_evicted_total").feed(handler.tracker.evictions.load(ordering: .relaxed))
            // Services with a quorum: 1 while they have it.
            for (id, up) in quorums {
                meter(&state, "nfqlb_service_quorum_up", [("local_address", "\(id.endpoint.address)"), ("local_port", "\(id.endpoint.port)"),
                                                         ("proto", id.transport == .tcp ? "TCP" : "UDP")]).set(up ? 1.0 : 0.0)
            }
            // A cluster balancer: each VIP announced through BIRD (1) or withdrawn (0), and the operator's switch.
            if let cluster {
                for (vip, announced) in cluster.announced {
                    meter(&state, "nfqlb_cluster_vip_announced", [("vip", "\(vip)")]).set(announced ? 1.0 : 0.0)
                }
                meter(&state, "nfqlb_cluster_withdrawn").set(cluster.withdrawn ? 1.0 : 0.0)
            }
            // Connection sync: messages and records sent, received, applied and refused, by event.
            for (event, value) in sync ?? [:] {
                counter(&state.global, "nfqlb_cluster_sync_events_total", [("event", event)]).feed(value)
            }
            // Reloads (SIGHUP and nfqlb reload).
            counter(&state.global, "nfqlb_reloads_total", [("result", "success")]).feed(reloads.succeeded)
            counter(&state.global, "nfqlb_reloads_total", [("result", "failure")]).feed(reloads.failed)
            meter(&state, "nfqlb_last_reload_success_timestamp_seconds").set(reloads.lastGood?.timeIntervalSince1970 ?? 0)
        }
    }

    private func makeBackend(_ key: RealServerRegistry.Key) -> Backend {
        let labels = Self.labels(key)
        func meter(_ name: String) -> CoreMetrics.Meter { CoreMetrics.Meter(label: name, dimensions: labels, factory: factory) }
        func counter(_ name: String) -> FedCounter { FedCounter(CoreMetrics.Counter(label: name, dimensions: labels, factory: factory)) }
        return Backend(active: meter("nfqlb_ipvs_backend_connections_active"),
                       inactive: meter("nfqlb_ipvs_backend_connections_inactive"),
                       weight: meter("nfqlb_ipvs_backend_weight"), lifecycle: meter("nfqlb_backend_state"),
                       connections: counter("nfqlb_backend_connections_total"),
                       packetsIn: counter("nfqlb_backend_incoming_packets_total"),
                       packetsOut: counter("nfqlb_backend_outgoing_packets_total"),
                       bytesIn: counter("nfqlb_backend_incoming_bytes_total"),
                       bytesOut: counter("nfqlb_backend_outgoing_bytes_total"))
    }

    /// node_exporter's IPVS labels of a real server.
    static func labels(_ key: RealServerRegistry.Key) -> [(String, String)] {
        [("local_address", "\(key.vip)"), ("local_port", "\(key.port)"), ("remote_address", "\(key.real.address)"),
         ("remote_port", "\(key.real.port)"), ("proto", key.transport == .tcp ? "TCP" : "UDP")]
    }

    /// The metric of a datapath counter: drops by reason, the rest by outcome.
    static func metric(for counter: DatapathCounter) -> (name: String, dimension: (String, String)?) {
        let name = counter.name
        if counter == .received { return ("nfqlb_queue_received_packets_total", nil) }
        if counter == .batches { return ("nfqlb_queue_batches_total", nil) }
        if name.hasPrefix("dropped_") { return ("nfqlb_queue_dropped_packets_total", ("reason", String(name.dropFirst("dropped_".count)))) }
        return ("nfqlb_queue_events_total", ("event", name))
    }
}
