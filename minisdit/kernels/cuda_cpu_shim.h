// cuda_cpu_shim.h -- lets a minisdit/kernels/*.cu file compile as plain C++ and run on the CPU.
//
// minisdit's kernels give every thread an independent recurrence (one neuron, one (batch, channel)
// pair) and use no shared memory or barriers, so running the threads one after another on the
// CPU computes what the GPU computes, up to float rounding (CuPy compiles with FMA contraction and
// float32 flush-to-zero, so float32 results may differ in the last bits).  This header supplies the CUDA built-ins those
// kernels use; minisdit/kernels/runtime.py (cpu_launcher_source) generates a launcher that loops over blocks and threads.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>

struct minisdit_dim3 { unsigned int x, y, z; };
static minisdit_dim3 threadIdx = {0, 0, 0};
static minisdit_dim3 blockIdx = {0, 0, 0};
static minisdit_dim3 blockDim = {1, 1, 1};
static minisdit_dim3 gridDim = {1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__

using std::exp;
using std::log;
using std::fabs;
using std::atan;
using std::sqrt;
using std::tanh;
using std::erf;
using std::fmax;
using std::fmin;
using std::isfinite;
