// Mirrors Samples / HostTensor (Tensors.kt): samples/index.json + little-endian raw tensors.
import Foundation

public struct HostTensor {
    public let name: String
    public let shape: [Int]
    public let floats: [Float]?
    public let longs: [Int64]?
    public var numel: Int { floats?.count ?? longs?.count ?? 0 }
    public init(name: String, shape: [Int], floats: [Float]?, longs: [Int64]?) {
        self.name = name; self.shape = shape; self.floats = floats; self.longs = longs
    }
}

public struct Samples {
    public static let VERSION = 1
    public let source: String
    let byProgram: [String: [String: HostTensor]]

    public func of(_ program: String) throws -> [String: HostTensor] {
        guard let p = byProgram[program] else { throw BundleError("samples/index.json has no samples for program \(program)") }
        return p
    }

    /// Rows [index*rows, +rows) of every tensor a spec list names, wrapping around the sample count.
    public func batch(_ program: String, _ specs: [TensorSpec], _ index: Int) throws -> [String: HostTensor] {
        let all = try of(program)
        var out: [String: HostTensor] = [:]
        for s in specs {
            guard let t = all[s.name] else { throw BundleError("samples lack input '\(s.name)' of program \(program)") }
            let rows = max(s.shape.first ?? 1, 1)
            let n = t.shape[0], row = t.numel / n
            let idx = (0..<rows).map { (index * rows + $0) % n }
            let shape = [rows] + Array(t.shape.dropFirst())
            if let f = t.floats {
                out[s.name] = HostTensor(name: s.name, shape: shape, floats: idx.flatMap { f[($0 * row)..<($0 * row + row)] }, longs: nil)
            } else if let l = t.longs {
                out[s.name] = HostTensor(name: s.name, shape: shape, floats: nil, longs: idx.flatMap { l[($0 * row)..<($0 * row + row)] })
            }
        }
        return out
    }

    public static func read(_ root: URL) throws -> Samples {
        let url = root.appendingPathComponent("samples/index.json")
        guard let data = try? Data(contentsOf: url),
              let o = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BundleError("\(url.path) is missing; re-run `dcl bundle`")
        }
        guard o["version"] as? Int == VERSION else { throw BundleError("samples/index.json has another version; re-run `dcl bundle`") }
        var progs: [String: [String: HostTensor]] = [:]
        for (p, v) in (o["programs"] as? [String: [String: Any]]) ?? [:] {
            var tensors: [String: HostTensor] = [:]
            for t in (v["tensors"] as? [[String: Any]]) ?? [] {
                let name = t["name"] as! String, shape = t["shape"] as! [Int]
                let raw = try Data(contentsOf: root.appendingPathComponent(t["file"] as! String))
                switch t["dtype"] as! String {
                case "float32":
                    tensors[name] = HostTensor(name: name, shape: shape, floats: raw.withUnsafeBytes { b in
                        (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
                    }, longs: nil)
                case "int64":
                    tensors[name] = HostTensor(name: name, shape: shape, floats: nil, longs: raw.withUnsafeBytes { b in
                        (0..<(raw.count / 8)).map { Int64(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
                    })
                default: throw BundleError("sample \(name) has an unsupported dtype")
                }
            }
            progs[p] = tensors
        }
        return Samples(source: o["source"] as? String ?? "", byProgram: progs)
    }
}
