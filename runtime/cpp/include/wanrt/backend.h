// A backend runs one component graph per call: text_encoder, dit, vae_encoder, vae_decoder_first,
// vae_decoder_step, with the tensor names of manifest.json. Implementations: TritonBackend (KServe v2 over HTTP,
// triton.h), TensorRTBackend (when built with WANRT_WITH_TENSORRT, tensorrt.h), or your own.
//
// Besides `run` (host tensors in, host tensors out: all a backend of your own has to write), the interface has
// what the pipeline's residency design needs, each with a default that works for any backend:
// - `open` / `close` one component's engine (--memory stage opens a stage's engines and releases them after it);
// - `call`: inputs that already live in the backend (`Resident`, e.g. the decoder caches of the previous chunk or
//   the DiT's context uploaded once), outputs to leave there (`keep`) and outputs nobody reads (`skip`);
// - `put`: upload a host tensor once, to be bound by reference in later calls;
// - `device_memory`: the backend's free memory, for --memory auto;
// - `stats`: what was copied between the host and the backend's memory, and engine open/close events.
// The defaults keep "resident" tensors in host memory and open nothing, so the traffic a backend without device
// residency causes is visible in its stats.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "wanrt/manifest.h"
#include "wanrt/tensor.h"

namespace wanrt {

// A tensor held in a backend's memory between calls (device memory for TensorRT, a shared-memory region the
// server reads and writes for Triton). Freed (back to the backend's pool) when the last reference goes.
class Resident {
public:
    Resident(std::string name, DType dtype, std::vector<int64_t> shape, std::shared_ptr<void> storage,
             const void* owner)
        : name(std::move(name)), dtype(dtype), shape(std::move(shape)), storage_(std::move(storage)), owner_(owner) {}
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::size_t nbytes() const { return static_cast<std::size_t>(numel(shape)) * dtype_size(dtype); }
    std::string describe() const;  // "cache_out.x float32 [1, 48, 2, 6, 10] (resident)"
    // The backend-specific storage, for the backend that made it (`owner`); nullptr for any other.
    template <class T> T* storage_for(const void* owner) const {
        return owner == owner_ ? static_cast<T*>(storage_.get()) : nullptr;
    }
    const void* owner() const { return owner_; }

private:
    std::shared_ptr<void> storage_;
    const void* owner_;
};
using ResidentPtr = std::shared_ptr<Resident>;

// One component call.
struct Call {
    std::vector<Tensor> inputs;                                   // host tensors, copied in
    std::vector<std::pair<std::string, ResidentPtr>> resident;    // input name -> tensor already in the backend
    std::set<std::string> keep;                                   // outputs to leave in the backend
    std::set<std::string> skip;                                   // outputs not needed: never copied back
    // Shapes of the declared outputs resolved from the inputs' (CheckedBackend fills them from the manifest):
    // what a backend that must size an output before the call (Triton's shared memory) uses.
    std::map<std::string, std::vector<int64_t>> output_shapes;
};

struct CallResult {
    std::vector<Tensor> outputs;     // on the host: every declared output neither kept nor skipped
    std::vector<ResidentPtr> kept;   // the `keep` outputs, in the backend
};

// Bytes copied between the host and the backend's memory, per tensor name, and engine residency.
struct BackendStats {
    std::map<std::string, uint64_t> to_backend, from_backend;
    uint64_t calls = 0;
    std::vector<std::pair<std::string, std::string>> events;  // ("open" | "close", component), in order
    std::set<std::string> open;  // engines open now
    std::size_t max_open = 0;    // most engines open at once
    // Most engines the backend itself reported loaded at once (Triton: the server's repository index, read after
    // every load and unload); -1 when the backend has no such report.
    int64_t reported_max_open = -1;
};

struct DeviceMemory {
    uint64_t free = 0, total = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    // Run `component` on `inputs` (every declared input, by name); returns every declared output.
    virtual std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) = 0;
    // One line for logs: "triton http://127.0.0.1:8000", "tensorrt /engines".
    virtual std::string describe() const = 0;

    // The residency interface (see the top of this file). Defaults: everything through `run` on the host.
    virtual CallResult call(const std::string& component, Call call);
    virtual ResidentPtr put(const Tensor& tensor);
    // Load / release a component's engine. Default: nothing to do (the engine is there or loads on first use).
    virtual void open(const std::string& component);
    virtual void close(const std::string& component);
    // Whether close() really releases memory (false: --memory stage only orders the work).
    virtual bool releases_engines() const { return false; }
    // Free and total memory where the engines run; nullopt when the backend cannot tell (--memory auto: keep).
    virtual std::optional<DeviceMemory> device_memory() { return std::nullopt; }
    virtual const BackendStats& stats() const { return stats_; }

protected:
    void count_to_backend(const std::string& name, uint64_t bytes) { stats_.to_backend[name] += bytes; }
    void count_from_backend(const std::string& name, uint64_t bytes) { stats_.from_backend[name] += bytes; }
    void note_opened(const std::string& component);
    void note_closed(const std::string& component);
    BackendStats stats_;
};

// Wraps a backend: inputs are checked against the manifest before the call (one clear line instead of a server
// or library error), outputs after it (every declared output present, declared dtype and rank); the declared
// output shapes are resolved for the inner backend (Call::output_shapes).
class CheckedBackend : public Backend {
public:
    CheckedBackend(const Manifest& manifest, Backend& inner) : manifest_(manifest), inner_(inner) {}
    std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) override;
    CallResult call(const std::string& component, Call call) override;
    ResidentPtr put(const Tensor& tensor) override { return inner_.put(tensor); }
    void open(const std::string& component) override { inner_.open(component); }
    void close(const std::string& component) override { inner_.close(component); }
    bool releases_engines() const override { return inner_.releases_engines(); }
    std::optional<DeviceMemory> device_memory() override { return inner_.device_memory(); }
    const BackendStats& stats() const override { return inner_.stats(); }
    std::string describe() const override { return inner_.describe(); }

private:
    const Manifest& manifest_;
    Backend& inner_;
};

}  // namespace wanrt
