#include "wanrt/tensor.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace wanrt {
namespace {

struct DTypeRow {
    DType dtype;
    const char* name;
    const char* kserve;
    const char* npy;  // numpy descr, little-endian
    std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::Float32, "float32", "FP32", "<f4", 4}, {DType::Float16, "float16", "FP16", "<f2", 2},
    {DType::BFloat16, "bfloat16", "BF16", "", 2},  {DType::Float64, "float64", "FP64", "<f8", 8},
    {DType::Int64, "int64", "INT64", "<i8", 8},    {DType::Int32, "int32", "INT32", "<i4", 4},
    {DType::Int8, "int8", "INT8", "|i1", 1},       {DType::UInt8, "uint8", "UINT8", "|u1", 1},
    {DType::Bool, "bool", "BOOL", "|b1", 1},
};

const DTypeRow& row(DType dtype) {
    for (const auto& r : kDTypes)
        if (r.dtype == dtype) return r;
    throw std::logic_error("unknown DType");
}

}  // namespace

const char* dtype_name(DType dtype) { return row(dtype).name; }
std::size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* kserve_datatype(DType dtype) { return row(dtype).kserve; }

DType dtype_from_name(const std::string& name) {
    for (const auto& r : kDTypes)
        if (name == r.name) return r.dtype;
    throw Error("unknown tensor dtype '" + name + "'");
}

DType dtype_from_kserve(const std::string& name) {
    for (const auto& r : kDTypes)
        if (name == r.kserve) return r.dtype;
    throw Error("unsupported KServe datatype '" + name + "'");
}

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

Tensor::Tensor(std::string name_, DType dtype_, std::vector<int64_t> shape_)
    : name(std::move(name_)), dtype(dtype_), shape(std::move(shape_)) {
    for (int64_t d : shape)
        if (d < 0) throw Error("tensor " + name + ": negative dimension in " + shape_str(shape));
    bytes.assign(static_cast<std::size_t>(wanrt::numel(shape)) * dtype_size(dtype), 0);
}

std::string Tensor::describe() const { return name + " " + dtype_name(dtype) + " " + shape_str(shape); }

const Tensor& find_tensor(const std::vector<Tensor>& tensors, const std::string& name) {
    for (const auto& t : tensors)
        if (t.name == name) return t;
    std::string have;
    for (const auto& t : tensors) have += (have.empty() ? "" : ", ") + t.name;
    throw Error("no tensor named " + name + " (have: " + (have.empty() ? "none" : have) + ")");
}

Tensor& find_tensor(std::vector<Tensor>& tensors, const std::string& name) {
    return const_cast<Tensor&>(find_tensor(static_cast<const std::vector<Tensor>&>(tensors), name));
}

// ------------------------------------------------------------------------------------------------ .npy
namespace {

// The value of `key` in a numpy header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
std::string header_value(const std::string& header, const std::string& key, const std::string& path) {
    auto at = header.find("'" + key + "'");
    if (at == std::string::npos) throw Error(path + ": not a .npy file (no '" + key + "' in its header)");
    at = header.find(':', at);
    auto start = header.find_first_not_of(' ', at + 1);
    std::size_t end;
    if (header[start] == '\'') {
        end = header.find('\'', start + 1);
        return header.substr(start + 1, end - start - 1);
    }
    if (header[start] == '(') {
        end = header.find(')', start);
        return header.substr(start + 1, end - start - 1);
    }
    end = header.find_first_of(",}", start);
    return header.substr(start, end - start);
}

}  // namespace

Tensor read_npy(const std::string& path, const std::string& name) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read " + path + ": no such file or not readable");
    char magic[8];
    in.read(magic, 8);
    if (!in || std::string(magic, 6) != "\x93NUMPY") throw Error(path + ": not a .npy file");
    uint32_t header_len = 0;
    if (magic[6] == 1) {
        unsigned char b[2];
        in.read(reinterpret_cast<char*>(b), 2);
        header_len = b[0] | (b[1] << 8);
    } else {
        unsigned char b[4];
        in.read(reinterpret_cast<char*>(b), 4);
        header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
    }
    std::string header(header_len, '\0');
    in.read(header.data(), header_len);
    if (!in) throw Error(path + ": truncated .npy header");
    std::string descr = header_value(header, "descr", path);
    if (header_value(header, "fortran_order", path) != "False")
        throw Error(path + ": Fortran-order arrays are not supported; save with np.ascontiguousarray");
    DType dtype = DType::Float32;
    bool found = false;
    for (const auto& r : kDTypes)
        if (descr == r.npy || (descr.size() == 3 && descr[0] == '=' && descr.substr(1) == std::string(r.npy).substr(1))) {
            dtype = r.dtype;
            found = true;
        }
    if (!found) throw Error(path + ": unsupported .npy dtype '" + descr + "' (little-endian float32/int64/... only)");
    std::vector<int64_t> shape;
    std::stringstream dims(header_value(header, "shape", path));
    std::string item;
    while (std::getline(dims, item, ',')) {
        auto first = item.find_first_not_of(' ');
        if (first == std::string::npos) continue;
        shape.push_back(std::stoll(item.substr(first)));
    }
    Tensor t(name, dtype, shape);
    in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    if (static_cast<std::size_t>(in.gcount()) != t.bytes.size())
        throw Error(path + ": truncated .npy data (expected " + std::to_string(t.bytes.size()) + " bytes)");
    return t;
}

void write_npy(const std::string& path, const Tensor& t) {
    const char* descr = row(t.dtype).npy;
    if (!*descr) throw Error("cannot write " + std::string(dtype_name(t.dtype)) + " to .npy");
    std::string shape;  // numpy's spelling: (), (5,), (2, 3)
    for (std::size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
    if (t.shape.size() == 1) shape += ",";
    std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
    std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string tmp = path + ".partial-" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw Error("cannot write " + path + ": cannot create a file there");
        out.write("\x93NUMPY\x01\x00", 8);
        unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
        out.write(reinterpret_cast<char*>(len), 2);
        out << header;
        out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
        if (!out.flush()) {
            std::remove(tmp.c_str());
            throw Error("cannot write " + path + ": write failed (disk full?)");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error("cannot write " + path + ": rename failed");
    }
}

}  // namespace wanrt
