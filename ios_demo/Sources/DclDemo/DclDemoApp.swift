// The iOS demo: classify the bundle's sample images with the Core ML inference artifact, and run
// MLUpdateTask on a program's updatable .mlmodel when the bundle has one (DC-CCL's device_step has
// none: Core ML cannot backpropagate through its summed logits; the app shows the manifest's reason).
import DclCore
import SwiftUI

@main
struct DclDemoApp: App {
    var body: some Scene { WindowGroup { ContentView() } }
}

@MainActor
final class DemoModel: ObservableObject {
    @Published var log: [String] = []
    private var bundle: DclCore.Bundle?
    private var sample = 0

    func open() {
        run("opening the bundle") {
            guard let root = Foundation.Bundle.main.url(forResource: "bundle", withExtension: nil) else {
                throw BundleError("no bundle in the app; run `dcl bundle BUNDLE --app ios_demo` and rebuild")
            }
            let b = try DclCore.Bundle.open(root)  // format_version + every file's sha256
            self.bundle = b
            return "bundle \(b.manifest.method) for \(b.manifest.target): \(b.manifest.programs.map(\.name).joined(separator: ", "))"
        }
    }

    func classify() {
        run("classifying") {
            guard let b = self.bundle else { throw BundleError("the bundle is not open") }
            let (p, a) = try Selection.choose(b.manifest, .coreml, KIND_INFERENCE)
            let input = try b.samples().batch(p.name, a.inputs, self.sample)
            self.sample += 1
            let logits = try CoreMLInference(try b.file(a), a).infer(input)[0]
            let best = logits.indices.max { logits[$0] < logits[$1] } ?? -1
            return "Core ML: sample \(self.sample - 1) -> class \(best)"
        }
    }

    func train(steps: Int = 5) {
        run("training") {
            guard let b = self.bundle else { throw BundleError("the bundle is not open") }
            let (p, a) = try Selection.choose(b.manifest, .coreml, KIND_TRAINING)
            let loop = try TrainingLoop(p, a, try b.samples())
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("\(a.name)-updated.mlmodelc")
            let backend = try CoreMLTraining(try b.file(a), a, updatedModel: out)
            let losses = try loop.run(backend, steps: steps) { step, loss in
                Task { @MainActor in self.log.append("\(p.name) epoch \(step): loss \(loss)") }
            }
            return "trained \(losses.count) epochs; updated model at \(out.path)"
        }
    }

    private func run(_ what: String, _ job: @escaping () throws -> String) {
        log.append("\(what) ...")
        Task.detached {
            let line: String
            do { line = try await MainActor.run { try job() } } catch { line = "\(what) failed: \(error)" }
            await MainActor.run { self.log.append(line) }
        }
    }
}

struct ContentView: View {
    @StateObject private var model = DemoModel()

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            HStack {
                Button("Classify next sample") { model.classify() }
                Button("Train on device") { model.train() }
            }
            List(model.log, id: \.self) { Text($0).font(.footnote.monospaced()) }
        }
        .padding()
        .onAppear { model.open() }
    }
}
