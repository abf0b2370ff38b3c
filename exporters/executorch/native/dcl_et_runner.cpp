// dcl_et_runner: runs an ExecuTorch program the way an app on a phone does, as the C++ runtime
// alone (no Python, no torch), and prints what it measured.
//
// Inference: the method runs on the given inputs. Training: the method is the joint
// forward/backward program dcl exports (outputs: loss, running statistics, gradients,
// parameters; the offsets come from the program's own __et_training_* metadata methods), and
// after each execution an SGD step (torch.optim.SGD's update rule) is applied in place to the
// parameter outputs, which alias the weights the next execution reads.
//
// Output (stdout), in the lines executor_runner prints so one parser reads both, plus dcl's own:
//   Model loaded in <ms> ms.                 program + method load (and training metadata)
//   Iteration <i> of <n>: <ms> ms            first run (i = 0), then every measured run
//   DCL-WARMUP <i> <ms>                      warm-up runs, not part of the statistics
//   DCL-CPU <s> / DCL-WALL <s>               process CPU time and wall time of the measured runs
//   DCL-RSS <base_kb> <peak_kb> <how>        memory before loading, and the peak after all runs
//   DCL-LOSS <step> <value>                  training: the loss of each step, in order
//   DCL-PARAM <i> <name> <d0,d1,...>         training: the parameters, in the dumped order
//   DCL-OUTPUT <i> <dtype> <d0,d1,...>       inference: the outputs of the last run
// --etdump=FILE also writes the runtime's per-operator profile (ETDump) of every run.
// Errors: one line "DCL-ERROR <what>" on stderr and exit status 2 (bad arguments, files) or 3
// (the runtime refused the program).
//
// Portable by intent (Linux x86-64 and ARM64, Android): no intrinsics, no x86 assumptions; the
// memory figures come from /proc when it exists and from getrusage otherwise.

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/platform/runtime.h>

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The wheel ships the thread pool library but not its header (extension/threadpool/threadpool.h);
// these are the two entry points used, declared as that header declares them.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::extension::TensorPtr;
using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

const char* kGradIndex = "__et_training_gradients_index_";
const char* kParamIndex = "__et_training_parameters_index_";
const char* kFqn = "__et_training_fqn_";

[[noreturn]] void die(int code, const std::string& what) {
  std::fprintf(stderr, "DCL-ERROR %s\n", what.c_str());
  std::exit(code);
}

struct Args {
  std::string model, data, method = "forward", mode = "infer", dump, etdump;
  std::vector<std::string> inputs;
  long runs = 10, warmup = 3, threads = 1;
  double min_secs = 0.0;
  double lr = 0.01, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};

double number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) die(2, flag + " needs a finite number, got '" + text + "'");
  return v;
}

long count(const std::string& flag, const std::string& text, long lo, long hi) {
  double v = number(flag, text);
  if (v != std::floor(v) || v < lo || v > hi)
    die(2, flag + " needs a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + text + "'");
  return static_cast<long>(v);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) die(2, "arguments are --name=value, got '" + arg + "'");
    std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "--model") a.model = value;
    else if (key == "--data") a.data = value;
    else if (key == "--method") a.method = value;
    else if (key == "--mode") a.mode = value;
    else if (key == "--input") a.inputs.push_back(value);
    else if (key == "--dump") a.dump = value;
    else if (key == "--etdump") a.etdump = value;
    else if (key == "--runs") a.runs = count(key, value, 1, 1000000);
    else if (key == "--warmup") a.warmup = count(key, value, 0, 1000000);
    else if (key == "--threads") a.threads = count(key, value, 1, 256);
    else if (key == "--min-secs") a.min_secs = number(key, value);
    else if (key == "--lr") a.lr = number(key, value);
    else if (key == "--momentum") a.momentum = number(key, value);
    else if (key == "--dampening") a.dampening = number(key, value);
    else if (key == "--weight-decay") a.weight_decay = number(key, value);
    else if (key == "--nesterov") a.nesterov = count(key, value, 0, 1) == 1;
    else die(2, "unknown argument " + key);
  }
  if (a.model.empty()) die(2, "--model=<program.pte> is required");
  if (a.mode != "infer" && a.mode != "train") die(2, "--mode is infer or train, got '" + a.mode + "'");
  if (a.min_secs < 0) die(2, "--min-secs must be >= 0");
  return a;
}

// ---- memory: the high-water mark is reset after start-up so it measures the model, not the libraries

long status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::atol(line.c_str() + n + 1);
  return -1;
}

long maxrss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
#ifdef __APPLE__
  return u.ru_maxrss / 1024;  // bytes on macOS
#else
  return u.ru_maxrss;  // KiB on Linux and Android
#endif
}

bool reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string dims(const executorch::aten::Tensor& t) {
  std::ostringstream s;
  for (ssize_t i = 0; i < t.dim(); ++i) s << (i ? "," : "") << t.size(i);
  return s.str();
}

// ---- inputs: raw little-endian tensors, one file per input in the method's order

struct Input {
  std::vector<uint8_t> bytes;
  TensorPtr tensor;
};

std::vector<Input> read_inputs(Module& module, const Args& a) {
  auto meta = module.method_meta(a.method);
  if (!meta.ok()) die(3, "the program has no method '" + a.method + "'");
  size_t n = meta->num_inputs();
  if (a.inputs.size() != n)
    die(2, "method '" + a.method + "' takes " + std::to_string(n) + " inputs, got " + std::to_string(a.inputs.size()));
  std::vector<Input> out(n);
  for (size_t i = 0; i < n; ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) die(3, "input " + std::to_string(i) + " of '" + a.method + "' is not a tensor");
    std::ifstream f(a.inputs[i], std::ios::binary | std::ios::ate);
    if (!f) die(2, "cannot read input file " + a.inputs[i]);
    auto size = static_cast<size_t>(f.tellg());
    if (size != info->nbytes())
      die(2, "input file " + a.inputs[i] + " has " + std::to_string(size) + " bytes, input " + std::to_string(i) +
                 " needs " + std::to_string(info->nbytes()));
    out[i].bytes.resize(size);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(out[i].bytes.data()), static_cast<std::streamsize>(size));
    auto s = info->sizes();
    std::vector<executorch::aten::SizesType> sizes(s.begin(), s.end());
    out[i].tensor = from_blob(out[i].bytes.data(), sizes, info->scalar_type());
  }
  return out;
}

void write_tensor(const std::string& path, const executorch::aten::Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(t.const_data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!f) die(2, "cannot write " + path);
}

// ---- training: offsets from the program's metadata, SGD as torch.optim.SGD computes it

struct Training {
  size_t grad_start = 0, param_start = 0, count = 0;
  std::vector<std::string> names;
  std::vector<std::vector<float>> momentum;  // empty until the first step, as in PyTorch
};

int64_t metadata_int(Module& module, const std::string& name) {
  auto r = module.execute(name);
  if (!r.ok() || r->empty() || !(*r)[0].isInt())
    die(3, "the program lacks training metadata method " + name + " (not a dcl training export?)");
  return (*r)[0].toInt();
}

Training training_layout(Module& module, const Args& a, size_t num_outputs) {
  Training t;
  t.grad_start = static_cast<size_t>(metadata_int(module, kGradIndex + a.method));
  t.param_start = static_cast<size_t>(metadata_int(module, kParamIndex + a.method));
  if (t.param_start < t.grad_start || num_outputs < t.param_start ||
      num_outputs - t.param_start != t.param_start - t.grad_start)
    die(3, "the training metadata does not match the method's " + std::to_string(num_outputs) + " outputs");
  t.count = num_outputs - t.param_start;
  auto names = module.execute(kFqn + a.method);
  for (size_t i = 0; i < t.count; ++i) {
    bool ok = names.ok() && i < names->size() && (*names)[i].isString();
    t.names.push_back(ok ? std::string((*names)[i].toString()) : "param_" + std::to_string(i));
  }
  t.momentum.resize(t.count);
  return t;
}

void sgd_step(Training& t, std::vector<EValue>& outs, const Args& a) {
  for (size_t i = 0; i < t.count; ++i) {
    auto& g_t = outs[t.grad_start + i].toTensor();
    auto& p_t = outs[t.param_start + i].toTensor();
    if (g_t.scalar_type() != ScalarType::Float || p_t.scalar_type() != ScalarType::Float || g_t.numel() != p_t.numel())
      die(3, "parameter " + t.names[i] + " is not float32 or its gradient differs in size");
    const float* g = g_t.const_data_ptr<float>();
    float* p = p_t.mutable_data_ptr<float>();
    size_t n = static_cast<size_t>(p_t.numel());
    auto& buf = t.momentum[i];
    bool first = buf.empty() && a.momentum != 0.0;
    if (first) buf.resize(n);
    const float lr = a.lr, wd = a.weight_decay, mom = a.momentum, damp = a.dampening;
    for (size_t k = 0; k < n; ++k) {
      float d = g[k];
      if (wd != 0.0f) d += wd * p[k];
      if (mom != 0.0f) {
        buf[k] = first ? d : mom * buf[k] + (1.0f - damp) * d;
        d = a.nesterov ? d + mom * buf[k] : buf[k];
      }
      p[k] -= lr * d;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  executorch::runtime::runtime_init();
  if (auto* pool = executorch::extension::threadpool::get_threadpool())
    pool->_unsafe_reset_threadpool(static_cast<uint32_t>(a.threads));

  bool hwm_reset = reset_peak();
  long base_kb = hwm_reset ? status_kb("VmRSS") : maxrss_kb();

  // Mmap, as an app maps its model file; weights a training program updates live in its own
  // planned memory, not in the mapped file.
  auto t_load = Clock::now();
  auto mode = Module::LoadMode::Mmap;
  // --etdump: the runtime's own per-operator profile (ETDump), read with executorch.devtools.Inspector
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
  executorch::etdump::ETDumpGen* etdump = nullptr;
  if (!a.etdump.empty()) {
    auto gen = std::make_unique<executorch::etdump::ETDumpGen>();
    etdump = gen.get();
    tracer = std::move(gen);
  }
  Module module = a.data.empty() ? Module(a.model, mode, std::move(tracer))
                                 : Module(a.model, a.data, mode, std::move(tracer));
  if (module.load() != Error::Ok) die(3, "cannot load program " + a.model + " (missing, corrupt or not an ExecuTorch program)");
  if (module.load_method(a.method) != Error::Ok) die(3, "cannot load method '" + a.method + "' of " + a.model);
  auto meta = module.method_meta(a.method);
  size_t num_outputs = meta->num_outputs();
  Training tr;
  if (a.mode == "train") tr = training_layout(module, a, num_outputs);
  std::printf("Model loaded in %.4f ms.\n", ms_since(t_load));

  std::vector<Input> inputs = read_inputs(module, a);
  std::vector<EValue> values;
  for (auto& in : inputs) values.emplace_back(in.tensor);

  long step = 0;
  std::vector<EValue> last;
  auto run_once = [&]() {
    auto r = module.execute(a.method, values);
    if (!r.ok()) die(3, "method '" + a.method + "' failed with runtime error " + std::to_string(static_cast<int>(r.error())));
    last = std::move(*r);
    if (a.mode == "train") {
      std::printf("DCL-LOSS %ld %.9g\n", step++, static_cast<double>(last[0].toTensor().const_data_ptr<float>()[0]));
      sgd_step(tr, last, a);
    }
  };

  long total = 1 + a.warmup;
  auto t = Clock::now();
  run_once();
  double first_ms = ms_since(t);
  for (long i = 0; i < a.warmup; ++i) {
    t = Clock::now();
    run_once();
    std::printf("DCL-WARMUP %ld %.4f\n", i, ms_since(t));
  }
  // MLPerf's rule, as the Python harness: at least --runs runs and at least --min-secs seconds
  std::vector<double> samples;
  double c0 = cpu_seconds();
  auto w0 = Clock::now();
  while (samples.size() < static_cast<size_t>(a.runs) || ms_since(w0) < a.min_secs * 1e3) {
    t = Clock::now();
    run_once();
    samples.push_back(ms_since(t));
  }
  double wall_s = ms_since(w0) * 1e-3, cpu_s = cpu_seconds() - c0;
  total += static_cast<long>(samples.size());
  long n = 1 + static_cast<long>(samples.size());
  std::printf("Iteration 0 of %ld: %.4f ms\n", n, first_ms);
  for (size_t i = 0; i < samples.size(); ++i) std::printf("Iteration %zu of %ld: %.4f ms\n", i + 1, n, samples[i]);
  std::printf("Model executed successfully %ld time(s).\n", total);
  std::printf("DCL-CPU %.6f\nDCL-WALL %.6f\n", cpu_s, wall_s);
  long peak_kb = hwm_reset ? status_kb("VmHWM") : maxrss_kb();
  std::printf("DCL-RSS %ld %ld %s\n", base_kb, peak_kb, hwm_reset ? "hwm-reset" : "ru_maxrss");

  if (a.mode == "train") {
    for (size_t i = 0; i < tr.count; ++i) {
      const auto& p = last[tr.param_start + i].toTensor();
      std::printf("DCL-PARAM %zu %s %s\n", i, tr.names[i].c_str(), dims(p).c_str());
      if (!a.dump.empty()) write_tensor(a.dump + "/param_" + std::to_string(i) + ".bin", p);
    }
  } else {
    for (size_t i = 0; i < last.size(); ++i) {
      if (!last[i].isTensor()) continue;
      const auto& o = last[i].toTensor();
      std::printf("DCL-OUTPUT %zu %s %s\n", i, executorch::runtime::toString(o.scalar_type()), dims(o).c_str());
      if (!a.dump.empty()) write_tensor(a.dump + "/output_" + std::to_string(i) + ".bin", o);
    }
  }
  if (etdump != nullptr) {
    auto result = etdump->get_etdump_data();
    std::ofstream f(a.etdump, std::ios::binary);
    if (result.buf == nullptr || !f.write(static_cast<const char*>(result.buf), static_cast<std::streamsize>(result.size)))
      die(2, "cannot write the ETDump to " + a.etdump);
    std::free(result.buf);
  }
  std::fflush(stdout);
  return 0;
}
