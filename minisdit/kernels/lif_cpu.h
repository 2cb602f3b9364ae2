// lif_cpu.h -- the LIF kernels of lif.cu with their loops interchanged for a CPU's vector unit.
//
// Included at the end of lif.cu only when it is compiled as C++ for the CPU (cuda_cpu_shim.h
// defines MINISDIT_CPU; NVRTC never sees this file).  The runtime's launcher calls these
// cpu_serial_<kernel> functions for the fast CPU launch (one block of one thread,
// runtime.CPU_LAUNCH); a launch with an explicit block runs the GPU body of lif.cu thread by thread.
//
// Why: on the GPU each thread walks the T steps of its own neuron.  Run one thread after another
// on a CPU, the recurrence v_{t-1} -> h_t -> s_t -> v_t is one dependent chain of divisions per
// neuron, and compilers do not vectorise the loop over neurons around it (GCC 12: "control flow in
// loop").  The neurons are independent, so here the loop over neurons is the inner one: a chunk of
// MINISDIT_LANES neurons keeps its state in small arrays, and every time step is one
// `#pragma omp simd` loop over the chunk, which the compiler turns into vector instructions.
// Each neuron's arithmetic is the same sequence of the same inline functions of lif.cu (charge,
// fire, reset, surrogate_derivative, ...), so only the order in which neurons are visited changes.

#pragma once

#ifndef MINISDIT_LANES
#define MINISDIT_LANES 256
#endif

static void cpu_serial_lif_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ spikes,
                                   scalar_t* __restrict__ h_seq, long long N, int T, scalar_t tau,
                                   scalar_t v_threshold, scalar_t v_reset) {
    for (long long start = 0; start < N; start += MINISDIT_LANES) {
        const int lanes = (int)std::min<long long>(MINISDIT_LANES, N - start);
        scalar_t v[MINISDIT_LANES];
        for (int j = 0; j < lanes; ++j) v[j] = v_reset;
        for (int t = 0; t < T; ++t) {
            const long long row = (long long)t * N + start;
#pragma omp simd
            for (int j = 0; j < lanes; ++j) {
                const scalar_t h = charge(v[j], x[row + j], tau, v_reset);
                const scalar_t s = fire(h - v_threshold);
                h_seq[row + j] = h;
                spikes[row + j] = s;
                v[j] = reset(h, s, v_threshold, v_reset);
            }
        }
    }
}

static void cpu_serial_lif_backward(const scalar_t* __restrict__ h_seq, const scalar_t* __restrict__ grad_spikes,
                                    scalar_t* __restrict__ grad_x, long long N, int T, scalar_t tau,
                                    scalar_t v_threshold, scalar_t v_reset, scalar_t alpha) {
    const scalar_t leak = (scalar_t)1 - (scalar_t)1 / tau;
    const scalar_t gain = input_gain(tau);
    for (long long start = 0; start < N; start += MINISDIT_LANES) {
        const int lanes = (int)std::min<long long>(MINISDIT_LANES, N - start);
        scalar_t grad_v[MINISDIT_LANES];
        for (int j = 0; j < lanes; ++j) grad_v[j] = (scalar_t)0;
        for (int t = T - 1; t >= 0; --t) {
            const long long row = (long long)t * N + start;
#pragma omp simd
            for (int j = 0; j < lanes; ++j) {
                const scalar_t h = h_seq[row + j];
                const scalar_t s = fire(h - v_threshold);
                const scalar_t spike_derivative = surrogate_derivative(h - v_threshold, alpha);
                const scalar_t grad_h = grad_spikes[row + j] * spike_derivative
                                      + grad_v[j] * reset_derivative(h, s, spike_derivative, v_threshold, v_reset);
                grad_x[row + j] = grad_h * gain;
                grad_v[j] = grad_h * leak;
            }
        }
    }
}

static void cpu_serial_spike_rate_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ rate,
                                          long long N, int T, scalar_t tau, scalar_t v_threshold,
                                          scalar_t v_reset) {
    for (long long start = 0; start < N; start += MINISDIT_LANES) {
        const int lanes = (int)std::min<long long>(MINISDIT_LANES, N - start);
        scalar_t v[MINISDIT_LANES], count[MINISDIT_LANES];
        for (int j = 0; j < lanes; ++j) { v[j] = v_reset; count[j] = (scalar_t)0; }
        for (int t = 0; t < T; ++t) {
#pragma omp simd
            for (int j = 0; j < lanes; ++j) {
                const scalar_t h = charge(v[j], x[start + j], tau, v_reset);
                const scalar_t s = fire(h - v_threshold);
                count[j] += s;
                v[j] = reset(h, s, v_threshold, v_reset);
            }
        }
#pragma omp simd
        for (int j = 0; j < lanes; ++j) rate[start + j] = count[j] / (scalar_t)T;
    }
}

static void cpu_serial_spike_rate_backward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad_rate,
                                           scalar_t* __restrict__ grad_x, long long N, int T, scalar_t tau,
                                           scalar_t v_threshold, scalar_t v_reset, scalar_t alpha) {
    const scalar_t leak = (scalar_t)1 - (scalar_t)1 / tau;
    const scalar_t gain = input_gain(tau);
    for (long long start = 0; start < N; start += MINISDIT_LANES) {
        const int lanes = (int)std::min<long long>(MINISDIT_LANES, N - start);
        scalar_t v[MINISDIT_LANES], dv_dx[MINISDIT_LANES], dcount_dx[MINISDIT_LANES];
        for (int j = 0; j < lanes; ++j) { v[j] = v_reset; dv_dx[j] = (scalar_t)0; dcount_dx[j] = (scalar_t)0; }
        for (int t = 0; t < T; ++t) {
#pragma omp simd
            for (int j = 0; j < lanes; ++j) {
                const scalar_t h = charge(v[j], x[start + j], tau, v_reset);
                const scalar_t dh_dx = leak * dv_dx[j] + gain;
                const scalar_t s = fire(h - v_threshold);
                const scalar_t spike_derivative = surrogate_derivative(h - v_threshold, alpha);
                dcount_dx[j] += spike_derivative * dh_dx;
                dv_dx[j] = reset_derivative(h, s, spike_derivative, v_threshold, v_reset) * dh_dx;
                v[j] = reset(h, s, v_threshold, v_reset);
            }
        }
#pragma omp simd
        for (int j = 0; j < lanes; ++j) grad_x[start + j] = grad_rate[start + j] * dcount_dx[j] / (scalar_t)T;
    }
}
