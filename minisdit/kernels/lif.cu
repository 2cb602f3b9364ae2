// lif.cu -- multi-step Leaky Integrate-and-Fire neurons with surrogate gradients (docs/DESIGN.md §3).
//
// One thread per neuron; each thread walks the T time steps of its neuron with stride N, so the
// arrays are laid out (T, N) contiguous and every load and store of a warp is coalesced.  T and N
// are run-time arguments; the variant is chosen by preprocessor defines:
//
//   scalar_t      float or double
//   SURROGATE     0 ATan, 1 Sigmoid, 2 PiecewiseQuadratic, 3 SoftSign, 4 Erf  (minisdit/snn/surrogate.py)
//   HARD_RESET    1: v = h (1 - s) + v_reset s      0 (soft): v = h - v_threshold s
//   DETACH_RESET  1: the reset is treated as a constant in the backward pass
//   DECAY_INPUT   1: h = v + (x - (v - v_reset)) / tau      0: h = v - (v - v_reset) / tau + x
//
// Only spiking neurons (s = Heaviside(h - v_threshold)) run here; the smooth spiking=False variant
// that the gradient checks use runs the array reference in Python on either device.
// The NumPy reference that these kernels must match is minisdit/snn/lif.py (lif_forward_reference,
// lif_backward_reference, spike_rate_forward_reference, spike_rate_backward_reference).
// For a soft reset the caller passes v_reset = 0 (the resting potential v_r of the charge equation).

#ifndef SURROGATE
#define SURROGATE 0
#endif
#ifndef HARD_RESET
#define HARD_RESET 1
#endif
#ifndef DETACH_RESET
#define DETACH_RESET 0
#endif
#ifndef DECAY_INPUT
#define DECAY_INPUT 1
#endif

#define LIF_PI ((scalar_t)3.14159265358979323846)

// The surrogate's derivative g'(x) (used for ds/dh in every backward pass).
__device__ __forceinline__ scalar_t surrogate_derivative(scalar_t x, scalar_t alpha) {
#if SURROGATE == 0
    // ATan: g'(x) = (alpha / 2) / (1 + (pi alpha x / 2)^2)
    const scalar_t z = LIF_PI / (scalar_t)2 * alpha * x;
    return alpha / (scalar_t)2 / ((scalar_t)1 + z * z);
#elif SURROGATE == 1
    // Sigmoid: g'(x) = alpha sigma(alpha x) (1 - sigma(alpha x))
    const scalar_t sigma = (scalar_t)1 / ((scalar_t)1 + exp(-alpha * x));
    return alpha * sigma * ((scalar_t)1 - sigma);
#elif SURROGATE == 2
    // PiecewiseQuadratic: g'(x) = alpha - alpha^2 |x| for |x| <= 1 / alpha, else 0
    const scalar_t magnitude = fabs(x);
    return magnitude > (scalar_t)1 / alpha ? (scalar_t)0 : alpha - alpha * alpha * magnitude;
#elif SURROGATE == 3
    // SoftSign: g'(x) = alpha / (2 (1 + |alpha x|)^2)
    const scalar_t denominator = (scalar_t)1 + fabs(alpha * x);
    return alpha / ((scalar_t)2 * denominator * denominator);
#elif SURROGATE == 4
    // Erf: g'(x) = alpha / sqrt(pi) exp(-(alpha x)^2)
    return alpha / sqrt(LIF_PI) * exp(-(alpha * x) * (alpha * x));
#else
#error "SURROGATE must be 0 (ATan), 1 (Sigmoid), 2 (PiecewiseQuadratic), 3 (SoftSign) or 4 (Erf)"
#endif
}

// fire: s = Theta(x) with Theta(0) = 1 (x = h - v_threshold).
__device__ __forceinline__ scalar_t fire(scalar_t x) {
    return x >= (scalar_t)0 ? (scalar_t)1 : (scalar_t)0;
}

// charge: the membrane potential before the spike, from the previous v and the input x.
__device__ __forceinline__ scalar_t charge(scalar_t v, scalar_t x, scalar_t tau, scalar_t v_reset) {
#if DECAY_INPUT
    return v + (x - (v - v_reset)) / tau;
#else
    return v - (v - v_reset) / tau + x;
#endif
}

// reset: the membrane potential after the spike.
__device__ __forceinline__ scalar_t reset(scalar_t h, scalar_t s, scalar_t v_threshold, scalar_t v_reset) {
#if HARD_RESET
    return h * ((scalar_t)1 - s) + v_reset * s;
#else
    (void)v_reset;
    return h - v_threshold * s;
#endif
}

// dv/dh of the reset step, given s and ds/dh.
__device__ __forceinline__ scalar_t reset_derivative(scalar_t h, scalar_t s, scalar_t spike_derivative,
                                                     scalar_t v_threshold, scalar_t v_reset) {
#if HARD_RESET
#if DETACH_RESET
    (void)h; (void)spike_derivative; (void)v_reset;
    return (scalar_t)1 - s;
#else
    return (scalar_t)1 - s + (v_reset - h) * spike_derivative;
#endif
#else
    (void)h; (void)s; (void)v_reset;
#if DETACH_RESET
    (void)spike_derivative; (void)v_threshold;
    return (scalar_t)1;
#else
    return (scalar_t)1 - v_threshold * spike_derivative;
#endif
#endif
}

// dh/dx: the weight of the input in the charge equation.
__device__ __forceinline__ scalar_t input_gain(scalar_t tau) {
#if DECAY_INPUT
    return (scalar_t)1 / tau;
#else
    (void)tau;
    return (scalar_t)1;
#endif
}

// Forward over T steps: x (T, N) -> spikes (T, N) and h (T, N), the only thing backward needs.
extern "C" __global__ void lif_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ spikes,
                                       scalar_t* __restrict__ h_seq, long long N, int T, scalar_t tau,
                                       scalar_t v_threshold, scalar_t v_reset) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (long long)blockDim.x * gridDim.x) {
        scalar_t v = v_reset;
        for (int t = 0; t < T; ++t) {
            const long long index = (long long)t * N + i;
            const scalar_t h = charge(v, x[index], tau, v_reset);
            const scalar_t s = fire(h - v_threshold);
            h_seq[index] = h;
            spikes[index] = s;
            v = reset(h, s, v_threshold, v_reset);
        }
    }
}

// Backpropagation through time: h (T, N) and dL/ds (T, N) -> dL/dx (T, N).
//   dL/dh_t = dL/ds_t ds_t/dh_t + dL/dv_t dv_t/dh_t,   dL/dx_t = dL/dh_t dh_t/dx_t,
//   dL/dv_{t-1} = dL/dh_t (1 - 1/tau),   dL/dv_T = 0.
extern "C" __global__ void lif_backward(const scalar_t* __restrict__ h_seq, const scalar_t* __restrict__ grad_spikes,
                                        scalar_t* __restrict__ grad_x, long long N, int T, scalar_t tau,
                                        scalar_t v_threshold, scalar_t v_reset, scalar_t alpha) {
    const scalar_t leak = (scalar_t)1 - (scalar_t)1 / tau;
    const scalar_t gain = input_gain(tau);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (long long)blockDim.x * gridDim.x) {
        scalar_t grad_v = (scalar_t)0;
        for (int t = T - 1; t >= 0; --t) {
            const long long index = (long long)t * N + i;
            const scalar_t h = h_seq[index];
            const scalar_t s = fire(h - v_threshold);
            const scalar_t spike_derivative = surrogate_derivative(h - v_threshold, alpha);
            const scalar_t grad_h = grad_spikes[index] * spike_derivative
                                  + grad_v * reset_derivative(h, s, spike_derivative, v_threshold, v_reset);
            grad_x[index] = grad_h * gain;
            grad_v = grad_h * leak;
        }
    }
}

// Spike rate: the same x (N) presented at each of T steps; rate = (1/T) sum_t s_t.  Reads x once.
extern "C" __global__ void spike_rate_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ rate,
                                              long long N, int T, scalar_t tau, scalar_t v_threshold,
                                              scalar_t v_reset) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (long long)blockDim.x * gridDim.x) {
        const scalar_t input = x[i];
        scalar_t v = v_reset;
        scalar_t count = (scalar_t)0;
        for (int t = 0; t < T; ++t) {
            const scalar_t h = charge(v, input, tau, v_reset);
            const scalar_t s = fire(h - v_threshold);
            count += s;
            v = reset(h, s, v_threshold, v_reset);
        }
        rate[i] = count / (scalar_t)T;
    }
}

// Spike-rate backward: dL/dx = dL/drate * drate/dx, with drate/dx = (1/T) sum_t ds_t/dx carried
// forward in time next to the state (x is one number per neuron, so forward-mode differentiation
// gives the whole derivative in one pass and nothing but x needs to be kept from the forward):
//   dh_t/dx = (1 - 1/tau) dv_{t-1}/dx + dh/dx,  ds_t/dx = g'(h_t - v_threshold) dh_t/dx,
//   dv_t/dx = dv_t/dh_t dh_t/dx,  dv_0/dx = 0.
extern "C" __global__ void spike_rate_backward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad_rate,
                                               scalar_t* __restrict__ grad_x, long long N, int T, scalar_t tau,
                                               scalar_t v_threshold, scalar_t v_reset, scalar_t alpha) {
    const scalar_t leak = (scalar_t)1 - (scalar_t)1 / tau;
    const scalar_t gain = input_gain(tau);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (long long)blockDim.x * gridDim.x) {
        const scalar_t input = x[i];
        scalar_t v = v_reset;
        scalar_t dv_dx = (scalar_t)0;
        scalar_t dcount_dx = (scalar_t)0;
        for (int t = 0; t < T; ++t) {
            const scalar_t h = charge(v, input, tau, v_reset);
            const scalar_t dh_dx = leak * dv_dx + gain;
            const scalar_t s = fire(h - v_threshold);
            const scalar_t spike_derivative = surrogate_derivative(h - v_threshold, alpha);
            dcount_dx += spike_derivative * dh_dx;
            dv_dx = reset_derivative(h, s, spike_derivative, v_threshold, v_reset) * dh_dx;
            v = reset(h, s, v_threshold, v_reset);
        }
        grad_x[i] = grad_rate[i] * dcount_dx / (scalar_t)T;
    }
}

// On the CPU the fast launch runs the same recurrences with the loop over threads innermost, so
// that it vectorises (lif_cpu.h); NVRTC never defines MINISDIT_CPU, so the GPU compiles only the above.
#ifdef MINISDIT_CPU
#include "lif_cpu.h"
#endif
