// optim.cu -- the optimizer update of a whole model in one launch each: AdamW and the EMA of the weights.
//
// The arrays are the flat buffers of minisdit/autograd/flat.py (every parameter of the model end
// to end), so one thread per entry covers the whole model.  scalar_t is a -D define (float or
// double); the per-step scalars (1 - lr*wd, the bias corrections) are computed once on the host in
// double and passed rounded to scalar_t, exactly the numbers the NumPy reference multiplies by,
// and every operation happens in the reference's order, so the CPU build (cuda_cpu_shim.h) gives
// the reference's result bit for bit.  (CuPy compiles with FMA contraction, so on a GPU the
// result may differ in the last bit.)  No shared memory, no barriers: entry i depends only on entry i.
//
// The NumPy references that read like the equations are in minisdit/autograd/optim.py
// (adamw_step_reference, ema_update_reference).

// AdamW, PyTorch's order of operations (minisdit/autograd/optim.py: AdamW):
//   theta <- theta * decay_factor                       decay_factor = 1 - lr * weight_decay
//   m     <- beta1 m + (1 - beta1) g
//   v     <- beta2 v + (1 - beta2) g^2
//   theta <- theta - step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps))
// with step_size = lr / (1 - beta1^t) and bias_correction2_sqrt = sqrt(1 - beta2^t).
// theta, m and v are read and written in place (the outputs); g is the input.
extern "C" __global__ void adamw_step(const scalar_t* __restrict__ grad,
                                      scalar_t* __restrict__ param,
                                      scalar_t* __restrict__ exp_avg,
                                      scalar_t* __restrict__ exp_avg_sq,
                                      long long n,
                                      scalar_t decay_factor, scalar_t beta1, scalar_t one_minus_beta1,
                                      scalar_t beta2, scalar_t one_minus_beta2, scalar_t step_size,
                                      scalar_t bias_correction2_sqrt, scalar_t eps)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const scalar_t g = grad[i];
        // each line stored through a named scalar_t, so no longer intermediate survives between them
        const scalar_t theta = param[i] * decay_factor;
        const scalar_t m = exp_avg[i] * beta1 + one_minus_beta1 * g;
        const scalar_t g2 = g * g;
        const scalar_t v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g2;
        const scalar_t denominator = sqrt(v) / bias_correction2_sqrt + eps;
        const scalar_t update = step_size * (m / denominator);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = theta - update;
    }
}

// AdamW without weight decay: the reference skips the multiplication by 1 when weight_decay = 0
// (theta * 1 is exact anyway, so this kernel only saves the multiply).
extern "C" __global__ void adamw_step_no_decay(const scalar_t* __restrict__ grad,
                                               scalar_t* __restrict__ param,
                                               scalar_t* __restrict__ exp_avg,
                                               scalar_t* __restrict__ exp_avg_sq,
                                               long long n,
                                               scalar_t beta1, scalar_t one_minus_beta1,
                                               scalar_t beta2, scalar_t one_minus_beta2, scalar_t step_size,
                                               scalar_t bias_correction2_sqrt, scalar_t eps)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const scalar_t g = grad[i];
        const scalar_t m = exp_avg[i] * beta1 + one_minus_beta1 * g;
        const scalar_t g2 = g * g;
        const scalar_t v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g2;
        const scalar_t denominator = sqrt(v) / bias_correction2_sqrt + eps;
        const scalar_t update = step_size * (m / denominator);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = param[i] - update;
    }
}

// EMA of the weights: shadow <- decay * shadow + (1 - decay) * theta, in place on shadow.
extern "C" __global__ void ema_update(const scalar_t* __restrict__ param,
                                      scalar_t* __restrict__ shadow,
                                      long long n,
                                      scalar_t decay, scalar_t one_minus_decay)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const scalar_t kept = shadow[i] * decay;
        const scalar_t added = one_minus_decay * param[i];
        shadow[i] = kept + added;
    }
}
