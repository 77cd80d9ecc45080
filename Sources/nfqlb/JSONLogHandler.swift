import Foundation
import Logging
import QueueBalancer

/// `--log-format json`: one JSON object per line on standard error, for log shippers:
/// `{"time":"2026-12-03T02:04:41Z","level":"notice","label":"nfqlb","message":"...","uid":"0",...}` (metadata as
/// string fields beside the fixed ones).
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: JSONValue] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { _, new in new }) {
            fields[key] = .string("\(value)")
        }
        fields["time"] = .string(ISO8601DateFormatter().string(from: Date()))
        fields["level"] = .string("\(event.level)")
        fields["label"] = .string(label)
        fields["message"] = .string("\(event.message)")
        FileHandle.standardError.write(Data((JSONValue.object(fields).jsonText + "\n").utf8))
    }
}
