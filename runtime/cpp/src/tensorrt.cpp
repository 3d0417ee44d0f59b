// TensorRT backend: deserialize each component's engine on first use, then per call set the input shapes and
// tensor addresses and enqueueV3 on one CUDA stream. Kept small on purpose: plain device buffers per tensor,
// grown when a larger shape comes, no CUDA graphs, no shared activation memory.
// Built only with -DWANRT_WITH_TENSORRT=ON (TensorRT 10 C++ API: NvInferRuntime.h, libnvinfer, CUDA runtime).
#include "wanrt/tensorrt.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>

namespace wanrt {
namespace {

void cuda_check(cudaError_t code, const char* what) {
    if (code != cudaSuccess) throw Error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(code));
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "tensorrt: %s\n", message);
    }
};

DType dtype_of(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return DType::Float32;
        case nvinfer1::DataType::kHALF: return DType::Float16;
        case nvinfer1::DataType::kBF16: return DType::BFloat16;
        case nvinfer1::DataType::kINT64: return DType::Int64;
        case nvinfer1::DataType::kINT32: return DType::Int32;
        case nvinfer1::DataType::kINT8: return DType::Int8;
        case nvinfer1::DataType::kUINT8: return DType::UInt8;
        case nvinfer1::DataType::kBOOL: return DType::Bool;
        default: throw Error("TensorRT engine uses a tensor type wan-rt-cpp does not handle");
    }
}

struct DeviceBuffer {
    void* ptr = nullptr;
    std::size_t size = 0;
    void reserve(std::size_t bytes) {
        if (bytes <= size) return;
        if (ptr) cudaFree(ptr);
        ptr = nullptr;
        cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc");
        size = bytes;
    }
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
};

struct Engine {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::map<std::string, DeviceBuffer> buffers;
};

}  // namespace

struct TensorRTBackend::Impl {
    Manifest manifest;
    int device = 0;
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    cudaStream_t stream = nullptr;
    std::map<std::string, Engine> engines;

    Engine& engine(const std::string& name) {
        auto it = engines.find(name);
        if (it != engines.end()) return it->second;
        const ComponentInfo& info = manifest.component(name);
        if (info.backend != "tensorrt")
            throw Error(name + ": built for " + info.backend + ", not tensorrt; rebuild with a tensorrt profile");
        std::string path = manifest.path(name);
        std::ifstream in(path, std::ios::binary);
        if (!in) throw Error("cannot read engine " + path);
        std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        Engine e;
        e.engine.reset(runtime->deserializeCudaEngine(plan.data(), plan.size()));
        if (!e.engine)
            throw Error(path + ": TensorRT cannot load this engine (other TensorRT version or GPU?); rebuild the engines");
        e.context.reset(e.engine->createExecutionContext());
        if (!e.context) throw Error(path + ": cannot create a TensorRT execution context (out of GPU memory?)");
        return engines.emplace(name, std::move(e)).first->second;
    }
};

TensorRTBackend::TensorRTBackend(const Manifest& manifest, int device) : impl_(std::make_unique<Impl>()) {
    impl_->manifest = manifest;
    impl_->device = device;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    impl_->runtime.reset(nvinfer1::createInferRuntime(impl_->logger));
    if (!impl_->runtime) throw Error("cannot create the TensorRT runtime");
    cuda_check(cudaStreamCreate(&impl_->stream), "cudaStreamCreate");
}

TensorRTBackend::~TensorRTBackend() {
    impl_->engines.clear();
    if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

std::string TensorRTBackend::describe() const { return "tensorrt " + impl_->manifest.root; }

std::vector<Tensor> TensorRTBackend::run(const std::string& component, const std::vector<Tensor>& inputs) {
    cuda_check(cudaSetDevice(impl_->device), "cudaSetDevice");
    Engine& e = impl_->engine(component);
    cudaStream_t stream = impl_->stream;
    for (const Tensor& t : inputs) {
        const char* name = t.name.c_str();
        if (e.engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT)
            throw Error(component + ": the engine has no input " + t.name);
        if (dtype_of(e.engine->getTensorDataType(name)) != t.dtype)
            throw Error(component + ": input " + t.name + " is " + dtype_name(t.dtype) + ", the engine takes " +
                        dtype_name(dtype_of(e.engine->getTensorDataType(name))));
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int32_t>(t.shape.size());
        for (std::size_t i = 0; i < t.shape.size(); ++i) dims.d[i] = t.shape[i];
        if (!e.context->setInputShape(name, dims))
            throw Error(component + ": input " + t.describe() + " is outside the engine's optimization profile");
        DeviceBuffer& buffer = e.buffers[t.name];
        buffer.reserve(std::max<std::size_t>(t.bytes.size(), 1));
        cuda_check(cudaMemcpyAsync(buffer.ptr, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice, stream),
                   "copy to device");
        e.context->setTensorAddress(name, buffer.ptr);
    }
    std::vector<Tensor> outputs;
    for (int32_t i = 0; i < e.engine->getNbIOTensors(); ++i) {
        const char* name = e.engine->getIOTensorName(i);
        if (e.engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT) continue;
        nvinfer1::Dims dims = e.context->getTensorShape(name);  // resolved from the input shapes
        std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
        for (int64_t d : shape)
            if (d < 0) throw Error(component + ": output " + name + " has an unresolved shape; are all inputs set?");
        outputs.emplace_back(name, dtype_of(e.engine->getTensorDataType(name)), shape);
        DeviceBuffer& buffer = e.buffers[name];
        buffer.reserve(std::max<std::size_t>(outputs.back().bytes.size(), 1));
        e.context->setTensorAddress(name, buffer.ptr);
    }
    if (!e.context->enqueueV3(stream)) throw Error(component + ": TensorRT enqueueV3 failed (see the log above)");
    for (Tensor& t : outputs)
        cuda_check(cudaMemcpyAsync(t.bytes.data(), e.buffers[t.name].ptr, t.bytes.size(), cudaMemcpyDeviceToHost, stream),
                   "copy to host");
    cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return outputs;
}

}  // namespace wanrt
