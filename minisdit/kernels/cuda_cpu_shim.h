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

// Marks the C++ build, so that a .cu file can include its CPU-only loops (lif_cpu.h, wkv_cpu.h)
// in a block that NVRTC skips.
#define MINISDIT_CPU 1

// Vector versions of exp and log for `#pragma omp simd` loops: glibc's libmvec has them
// (_ZGVdN8v_expf, ...; at most 4 ulp, special values handled) but math.h declares them only
// under -ffast-math, which minisdit cannot use (it breaks the isfinite/inf handling the WKV and
// the loss checks rely on).  Declaring the functions `omp declare simd` here is what math.h would
// do; the runtime defines MINISDIT_VECTOR_MATH and links -lmvec only where libmvec exists.
#ifdef MINISDIT_VECTOR_MATH
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
float logf(float) noexcept;
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
double log(double) noexcept;
}
#endif
