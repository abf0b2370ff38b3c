// Run on macOS with `swift test` after `dcl bundle BUNDLE --app ios_demo` (needs the bundle in
// Sources/DclDemo/Resources/bundle). Not run by dcl's CI: no Swift toolchain there.
import DclCore
import Foundation
import XCTest

final class ManifestTests: XCTestCase {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/DclDemo/Resources/bundle").standardizedFileURL

    func testOpensAndVerifiesTheBundle() throws {
        let b = try DclCore.Bundle.open(root)
        XCTAssertEqual(b.manifest.formatVersion, ManifestParser.FORMAT_VERSION)
        XCTAssertNoThrow(try Selection.choose(b.manifest, .coreml, KIND_INFERENCE))
    }

    func testRefusesAnUnknownFormatVersion() throws {
        let data = try Data(contentsOf: root.appendingPathComponent("manifest.json"))
        var o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        o["format_version"] = 3
        XCTAssertThrowsError(try ManifestParser.parse(try JSONSerialization.data(withJSONObject: o)))
    }

    func testFolderHashMatchesDcl() {
        let files = [FileEntry(path: "a/b", sha256: String(repeating: "0", count: 64), bytes: 1)]
        XCTAssertEqual(DclCore.Bundle.folderHash(files).count, 64)
    }
}
