// Mirrors Training.kt: backends, the training loop, and the safetensors weights file.
import Foundation

public protocol InferenceBackend { func infer(_ inputs: [String: HostTensor]) throws -> [[Float]] }

public protocol TrainingBackend {
    /// Runs `steps` steps over `batch(i)`, reporting each loss; Core ML's MLUpdateTask drives its own loop.
    func train(steps: Int, batch: (Int) throws -> [String: HostTensor], onStep: @escaping (Int, Float) -> Void) throws -> [Float]
    /// Trainable weights under their PyTorch names (empty where the runtime cannot read them back).
    func weights() throws -> [String: HostTensor]
}

public final class TrainingLoop {
    let program: Program
    let artifact: Artifact
    let samples: Samples

    public init(_ program: Program, _ artifact: Artifact, _ samples: Samples) throws {
        guard artifact.isTraining else { throw BundleError("\(artifact.name) is not a training artifact") }
        self.program = program; self.artifact = artifact; self.samples = samples
    }

    public func batch(_ step: Int) throws -> [String: HostTensor] { try samples.batch(program.name, artifact.inputs, step) }

    public func run(_ backend: TrainingBackend, steps: Int, onStep: @escaping (Int, Float) -> Void = { _, _ in }) throws -> [Float] {
        let losses = try backend.train(steps: steps, batch: batch, onStep: onStep)
        if let bad = losses.firstIndex(where: { !$0.isFinite }) {
            throw BundleError("training step \(bad + 1) of \(artifact.name) gave a non-finite loss")
        }
        return losses
    }
}

public enum WeightsFile {
    /// safetensors (what `dcl import-weights` reads): float32, PyTorch names, 8-byte aligned header.
    public static func write(_ url: URL, _ weights: [String: HostTensor]) throws {
        var header: [String: Any] = [:]
        var offset = 0
        let names = weights.keys.sorted()
        for n in names {
            guard let f = weights[n]!.floats else { throw BundleError("weight \(n) is not float32") }
            header[n] = ["dtype": "F32", "shape": weights[n]!.shape, "data_offsets": [offset, offset + 4 * f.count]]
            offset += 4 * f.count
        }
        var h = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        h.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - h.count % 8) % 8))
        var out = Data()
        var len = UInt64(h.count).littleEndian
        out.append(Data(bytes: &len, count: 8))
        out.append(h)
        for n in names { for v in weights[n]!.floats! { var b = v.bitPattern.littleEndian; out.append(Data(bytes: &b, count: 4)) } }
        try out.write(to: url, options: .atomic)
    }
}
