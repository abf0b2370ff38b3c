// Core ML: the .mlpackage (ML program) for inference, MLUpdateTask on an updatable .mlmodel
// (neural network) for training. Mirrors the Android runtime classes (runtime/*.kt).
import CoreML
import DclCore
import Foundation

enum CoreMLFeatures {
    static func array(_ t: HostTensor, _ spec: TensorSpec) throws -> MLMultiArray {
        let type: MLMultiArrayDataType = spec.dtype == "float64" ? .double : (spec.dtype.hasPrefix("int") ? .int32 : .float32)
        let a = try MLMultiArray(shape: spec.shape.map { NSNumber(value: max($0, 1)) }, dataType: type)
        for i in 0..<t.numel {
            a[i] = NSNumber(value: t.floats.map { Double($0[i]) } ?? Double(t.longs![i]))
        }
        return a
    }

    static func floats(_ a: MLMultiArray) -> [Float] { (0..<a.count).map { a[$0].floatValue } }
}

/// Compiles the bundle's .mlpackage once (MLModel.compileModel) and runs predictions on the CPU, as
/// the exporter validated it (fp32; the GPU and Neural Engine compute in fp16).
final class CoreMLInference: InferenceBackend {
    private let model: MLModel
    private let artifact: Artifact

    init(_ url: URL, _ artifact: Artifact) throws {
        let config = MLModelConfiguration()
        config.computeUnits = .cpuOnly
        model = try MLModel(contentsOf: try MLModel.compileModel(at: url), configuration: config)
        self.artifact = artifact
    }

    func infer(_ inputs: [String: HostTensor]) throws -> [[Float]] {
        var dict: [String: MLFeatureValue] = [:]
        for s in artifact.inputs {
            guard let t = inputs[s.name] else { throw BundleError("the Core ML model needs input \(s.name)") }
            dict[s.name] = MLFeatureValue(multiArray: try CoreMLFeatures.array(t, s))
        }
        let out = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: dict))
        return try artifact.outputs.map { o in
            guard let a = out.featureValue(for: o.name)?.multiArrayValue else { throw BundleError("no output \(o.name)") }
            return CoreMLFeatures.floats(a)
        }
    }
}

/// MLUpdateTask over examples from the bundle's samples (one feature provider per example:
/// details.per_example_features), mini-batch size and epochs from the artifact's details; the loss
/// per epoch is reported from the task's progress handler. The updated model is written next to the
/// bundle (Core ML cannot hand parameters back by PyTorch name, so weights() is empty).
final class CoreMLTraining: TrainingBackend {
    private let url: URL
    private let artifact: Artifact
    private let out: URL

    init(_ url: URL, _ artifact: Artifact, updatedModel out: URL) throws {
        self.url = url; self.artifact = artifact; self.out = out
    }

    func train(steps: Int, batch: (Int) throws -> [String: HostTensor], onStep: @escaping (Int, Float) -> Void) throws -> [Float] {
        var examples: [MLFeatureProvider] = []
        for step in 0..<steps {
            let b = try batch(step)
            let rows = b.values.first?.shape.first ?? 1
            for r in 0..<rows {
                var dict: [String: MLFeatureValue] = [:]
                for s in artifact.inputs {
                    guard let t = b[s.name] else { throw BundleError("samples lack \(s.name)") }
                    let row = t.numel / rows
                    let one = HostTensor(name: s.name, shape: s.shape, floats: t.floats.map { Array($0[(r * row)..<(r * row + row)]) },
                                         longs: t.longs.map { Array($0[(r * row)..<(r * row + row)]) })
                    dict[s.name] = MLFeatureValue(multiArray: try CoreMLFeatures.array(one, s))
                }
                examples.append(try MLDictionaryFeatureProvider(dictionary: dict))
            }
        }
        let compiled = try MLModel.compileModel(at: url)
        let config = MLModelConfiguration()
        config.computeUnits = .cpuOnly
        var losses: [Float] = []
        var failure: Error?
        let done = DispatchSemaphore(value: 0)
        let handlers = MLUpdateProgressHandlers(
            forEvents: [.epochEnd],
            progressHandler: { ctx in
                let loss = (ctx.metrics[.lossValue] as? NSNumber)?.floatValue ?? .nan
                losses.append(loss)
                onStep(losses.count, loss)
            },
            completionHandler: { ctx in
                if let e = ctx.task.error { failure = e } else {
                    do { try ctx.model.write(to: self.out) } catch { failure = error }
                }
                done.signal()
            })
        let params: [MLParameterKey: Any] = [.epochs: steps, .miniBatchSize: artifact.details?["mini_batch_size"]?.int ?? 32]
        config.parameters = params
        let task = try MLUpdateTask(forModelAt: compiled, trainingData: MLArrayBatchProvider(array: examples),
                                    configuration: config, progressHandlers: handlers)
        task.resume()
        done.wait()
        if let e = failure { throw BundleError("MLUpdateTask failed: \(e.localizedDescription)") }
        return losses
    }

    func weights() throws -> [String: HostTensor] { [:] }
}
