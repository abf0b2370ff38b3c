// swift-tools-version:5.9
// The dcl iOS demo: a SwiftUI app (DclDemo) over a small core library (DclCore) that mirrors the
// Android demo's core classes (Manifest, Bundle, Samples, TrainingLoop, WeightsFile). Before building:
//   .venv/bin/dcl bundle BUNDLE --app ios_demo      (copies the Core ML artifacts into Sources/DclDemo/Resources/bundle)
// Open this folder in Xcode 15+ (File > Open...), choose the DclDemo scheme and an iOS 17 device.
import PackageDescription

let package = Package(
    name: "DclDemo",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .executable(name: "DclDemo", targets: ["DclDemo"]),
        .library(name: "DclCore", targets: ["DclCore"]),
    ],
    targets: [
        .target(name: "DclCore"),
        .executableTarget(
            name: "DclDemo",
            dependencies: ["DclCore"],
            resources: [.copy("Resources/bundle")]
        ),
        .testTarget(name: "DclCoreTests", dependencies: ["DclCore"]),
    ]
)
