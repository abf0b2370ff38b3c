// Mirrors android_demo/app/src/main/kotlin/org/dcl/demo/core/Manifest.kt: the same names, the same
// contract (dcl_core/bundle.py, dcl_core/manifest.schema.json, format_version 2).
import Foundation

public struct BundleError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Free-form JSON (an artifact's format-specific `details`, a program's `extra`).
public enum JSONValue: Codable, Equatable {
    case string(String), number(Double), bool(Bool), array([JSONValue]), object([String: JSONValue]), null

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let n): try c.encode(n)
        case .bool(let b): try c.encode(b)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        case .null: try c.encodeNil()
        }
    }

    public subscript(key: String) -> JSONValue? { if case .object(let o) = self { return o[key] } else { return nil } }
    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var int: Int? { if case .number(let n) = self { return Int(n) } else { return nil } }
}

public struct TensorSpec: Codable, Equatable {
    public let name: String
    public let shape: [Int]
    public let dtype: String
    /// Elements of one tensor of this spec; a dynamic (-1) dimension counts as 1.
    public var numel: Int { shape.reduce(1) { $0 * max($1, 1) } }
}

public struct FileEntry: Codable, Equatable {
    public let path: String
    public let sha256: String
    public let bytes: Int
    public init(path: String, sha256: String, bytes: Int) { self.path = path; self.sha256 = sha256; self.bytes = bytes }
}

public struct Optimizer: Codable, Equatable {
    public let name: String
    public let lr: Double
    public let momentum: Double?
    public let weightDecay: Double?
    enum CodingKeys: String, CodingKey { case name, lr, momentum, weightDecay = "weight_decay" }
}

public let KIND_INFERENCE = "inference"
public let KIND_TRAINING = "training"

public struct Artifact: Codable {
    public let name: String
    public let path: String
    public let format: String
    public let kind: String
    public let sha256: String
    public let bytes: Int
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    public let trainable: [String]?
    public let loss: String?
    public let optimizer: Optimizer?
    public let files: [FileEntry]
    public let details: JSONValue?
    public var isTraining: Bool { kind == KIND_TRAINING }
}

public struct Program: Codable {
    public let name: String
    public let artifacts: [Artifact]
    public let notExported: [JSONValue]?
    public let extra: JSONValue?
    enum CodingKeys: String, CodingKey { case name, artifacts, notExported = "not_exported", extra }
}

public struct Manifest: Codable {
    public let formatVersion: Int
    public let method: String
    public let target: String
    public let programs: [Program]
    enum CodingKeys: String, CodingKey { case formatVersion = "format_version", method, target, programs }

    public var artifacts: [Artifact] { programs.flatMap { $0.artifacts } }

    public func program(_ name: String) throws -> Program {
        guard let p = programs.first(where: { $0.name == name }) else {
            throw BundleError("no program named '\(name)' in the bundle; it has: \(programs.map(\.name).joined(separator: ", "))")
        }
        return p
    }

    public func artifact(_ name: String) throws -> Artifact {
        guard let a = artifacts.first(where: { $0.name == name }) else {
            throw BundleError("no artifact named '\(name)' in the manifest")
        }
        return a
    }
}

public enum ManifestParser {
    /// The only version this app reads; dcl_core/manifest.schema.json pins the same constant.
    public static let FORMAT_VERSION = 2

    public static func parse(_ data: Data) throws -> Manifest {
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BundleError("manifest.json is not JSON; re-run `dcl export`")
        }
        let version = obj["format_version"] as? Int
        guard version == FORMAT_VERSION else {
            throw BundleError("manifest.json has format_version \(version.map(String.init) ?? "nil"); this app reads version " +
                              "\(FORMAT_VERSION): re-run `dcl export` and `dcl bundle` with the dcl that matches this app")
        }
        do {
            return try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            throw BundleError("manifest.json is corrupt (\(error)); re-run `dcl export`")
        }
    }
}

/// The runtimes this app embeds, by the manifest's format names (iOS: Core ML only).
public enum RuntimeKind: String, CaseIterable {
    case coreml

    public var display: String { "Core ML" }
}

public enum Selection {
    public static func choose(_ m: Manifest, _ runtime: RuntimeKind, _ kind: String, program: String? = nil) throws -> (Program, Artifact) {
        let p: Program
        if let name = program { p = try m.program(name) } else if let first = m.programs.first { p = first } else {
            throw BundleError("the bundle has no programs")
        }
        guard let a = p.artifacts.first(where: { $0.format == runtime.rawValue && $0.kind == kind }) else {
            let why = p.notExported?.first(where: { $0["format"]?.string == runtime.rawValue && $0["kind"]?.string == kind })?["reason"]?.string
            throw BundleError("program \(p.name) has no \(runtime.display) \(kind) artifact" + (why.map { ": \($0)" } ?? ""))
        }
        return (p, a)
    }

    public static func trainable(_ m: Manifest, _ runtime: RuntimeKind) -> [Program] {
        m.programs.filter { p in p.artifacts.contains { $0.format == runtime.rawValue && $0.isTraining } }
    }
}
