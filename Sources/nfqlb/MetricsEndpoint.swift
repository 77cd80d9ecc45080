import NIOCore
import NIOHTTP1
import NIOPosix
import QueueBalancer

/// The `/metrics` listener of `nfqlb run` (`metrics-listen`, `--metrics-listen`): a swift-nio HTTP/1.1 server on
/// one event loop thread of its own, answering `GET /metrics` with ``MetricsExporter/render()`` (Prometheus text
/// format 0.0.4) and anything else with 404. It reads the balancer's counters and never touches the packet path.
final class MetricsEndpoint {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel

    init(listen: Endpoint, exporter: MetricsExporter) throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(MetricsHandler(exporter: exporter))
                }
            }
        do {
            channel = try bootstrap.bind(host: "\(listen.address)", port: Int(listen.port)).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// One HTTP connection: each request head decides the answer, sent at its end.
private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let exporter: MetricsExporter
    private var head: HTTPRequestHead?

    init(exporter: MetricsExporter) { self.exporter = exporter }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let request = head else { return }
            head = nil
            let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
            let (status, type, body): (HTTPResponseStatus, String, String) =
                request.method == .GET && path == "/metrics"
                    ? (.ok, "text/plain; version=0.0.4; charset=utf-8", exporter.render())
                    : (.notFound, "text/plain; charset=utf-8", "nfqlb serves only GET /metrics\n")
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            let keepAlive = request.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            let channel = context.channel
            if !keepAlive { done.whenComplete { _ in channel.close(promise: nil) } }
        }
    }
}
