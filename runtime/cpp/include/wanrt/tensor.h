// Tensors passed to and from a backend: a small owned struct (name, dtype, shape, bytes), C order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace wanrt {

// A problem with the user's input or environment, with the fix in the message (one line).
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Element types named as in manifest.json (numpy names).
enum class DType { Float32, Float16, BFloat16, Float64, Int64, Int32, Int8, UInt8, Bool };

const char* dtype_name(DType dtype);                // "float32", ...
DType dtype_from_name(const std::string& name);     // throws Error for an unknown name
std::size_t dtype_size(DType dtype);                // bytes per element
const char* kserve_datatype(DType dtype);           // "FP32", ... (KServe v2 / Triton)
DType dtype_from_kserve(const std::string& name);   // throws Error

std::string shape_str(const std::vector<int64_t>& shape);  // "[1, 48, 3, 6, 10]"
int64_t numel(const std::vector<int64_t>& shape);

struct Tensor {
    std::string name;
    DType dtype = DType::Float32;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;  // numel(shape) * dtype_size(dtype) bytes, C order

    Tensor() = default;
    Tensor(std::string name, DType dtype, std::vector<int64_t> shape);  // zero-filled
    template <class T>
    static Tensor of(std::string name, std::vector<int64_t> shape, const T* values);

    int64_t numel() const { return wanrt::numel(shape); }
    std::size_t nbytes() const { return bytes.size(); }
    template <class T> T* data() { check_type<T>(); return reinterpret_cast<T*>(bytes.data()); }
    template <class T> const T* data() const { check_type<T>(); return reinterpret_cast<const T*>(bytes.data()); }
    std::string describe() const;  // "velocity float32 [2, 60, 192]"

private:
    template <class T> void check_type() const;
};

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::Float32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::Float64; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::Int32; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::Int8; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::UInt8; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::Float16; };  // raw half bits

template <class T>
void Tensor::check_type() const {
    DType want = DTypeOf<T>::value;
    bool ok = dtype == want || (want == DType::Float16 && dtype == DType::BFloat16) ||
              (want == DType::UInt8 && dtype == DType::Bool);
    if (!ok)
        throw std::logic_error("tensor " + name + " is " + dtype_name(dtype) + ", accessed as " + dtype_name(want));
}

template <class T>
Tensor Tensor::of(std::string name, std::vector<int64_t> shape, const T* values) {
    Tensor t(std::move(name), DTypeOf<T>::value, std::move(shape));
    if (!t.bytes.empty()) std::memcpy(t.bytes.data(), values, t.bytes.size());
    return t;
}

// The tensor called `name` in a list; throws Error naming what is there when it is missing.
const Tensor& find_tensor(const std::vector<Tensor>& tensors, const std::string& name);
Tensor& find_tensor(std::vector<Tensor>& tensors, const std::string& name);

// .npy files (format 1.0/2.0, little-endian, C order): what --noise, --save-latents and the tests use.
Tensor read_npy(const std::string& path, const std::string& name = "");
void write_npy(const std::string& path, const Tensor& tensor);  // atomic: temp file + rename

}  // namespace wanrt
