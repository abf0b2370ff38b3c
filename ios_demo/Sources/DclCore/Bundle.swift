// Mirrors Bundle.kt: open = parse (refusing an unknown format_version) + sha256 of every file.
import CryptoKit
import Foundation

public final class Bundle {
    public static let MANIFEST = "manifest.json"
    public let root: URL
    public let manifest: Manifest

    private init(root: URL, manifest: Manifest) {
        self.root = root
        self.manifest = manifest
    }

    public static func open(_ root: URL, verify: Bool = true) throws -> Bundle {
        let m = root.appendingPathComponent(MANIFEST)
        guard let data = try? Data(contentsOf: m) else {
            throw BundleError("\(m.path) is missing; run `dcl bundle BUNDLE --app ios_demo` first")
        }
        let b = Bundle(root: root, manifest: try ManifestParser.parse(data))
        if verify { try b.manifest.artifacts.forEach(b.verify) }
        return b
    }

    public func file(_ a: Artifact) throws -> URL { try inside(a.path) }

    public func samples() throws -> Samples { try Samples.read(root) }

    private func inside(_ rel: String) throws -> URL {
        let f = root.appendingPathComponent(rel).standardizedFileURL
        guard f.path.hasPrefix(root.standardizedFileURL.path + "/") else {
            throw BundleError("manifest path '\(rel)' points outside the bundle; re-run `dcl bundle`")
        }
        return f
    }

    public func verify(_ a: Artifact) throws {
        guard !a.files.isEmpty else { throw BundleError("artifact \(a.name) lists no files; re-run `dcl export`") }
        for e in a.files {
            guard let data = try? Data(contentsOf: try inside(e.path)) else {
                throw BundleError("bundle file \(e.path) is missing; re-run `dcl bundle`")
            }
            if data.count != e.bytes || Bundle.sha256(data) != e.sha256 {
                throw BundleError("bundle file \(e.path) fails its sha256 check (corrupt or modified); re-run `dcl bundle`")
            }
        }
        let whole = (a.files.count == 1 && a.files[0].path == a.path) ? a.files[0].sha256 : Bundle.folderHash(a.files)
        if whole != a.sha256 {
            throw BundleError("artifact \(a.name): its files do not add up to its sha256; re-run `dcl export`")
        }
    }

    public static func sha256(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// dcl_core.bundle.describe_files: sha256 over "path\0sha\n" of the sorted file entries.
    public static func folderHash(_ files: [FileEntry]) -> String {
        let text = files.sorted { $0.path < $1.path }.map { "\($0.path)\u{0}\($0.sha256)\n" }.joined()
        return sha256(Data(text.utf8))
    }
}
