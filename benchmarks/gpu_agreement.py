"""Whole-model agreement: one SDiT forward + backward on two routes, from the same weights and batch.

    python benchmarks/gpu_agreement.py [--device gpu|cpu] [--preset small] [--batch 8] [--dtypes float64,float32]

The candidate is the GPU (``--device gpu``: every .cu kernel through CuPy, the matmuls through
cuBLAS) against the CPU as ``python -m minisdit.train`` runs it there (the kernels compiled as C++,
``runtime.cpu_kernels()``, which the kernel tests hold to the NumPy references; the references
themselves where no C++ compiler is found); or, with ``--device
cpu`` (the dry run of ``scripts/gpu_check.sh --cpu``), those compiled kernels against the NumPy
references.  One step
as the trainer takes it (``GaussianDiffusion.training_losses`` in train mode, then ``backward``), per
dtype: the relative difference of the loss, and of the gradients the worst over parameters of
max |g - g_ref| / max |g_ref| (relative to each gradient's own scale, so a near-zero entry cannot
dominate), with the parameter that has it.

The two routes need not agree bitwise: CuPy compiles with FMA contraction and (float32)
flush-to-zero, and cuBLAS sums in another order, so a membrane potential within rounding of the
threshold can spike on one route only, and a spike flip moves the gradients by far more than
rounding.  In float64 that is all but impossible, so there the loss must agree to
FLOAT64_LOSS_RTOL (exit 1 otherwise); float32 is reported, not judged.  Also exit 1 on any
non-finite number.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minisdit import Tensor, backend  # noqa: E402
from minisdit.kernels import runtime  # noqa: E402
from minisdit.training.config import RECIPES, build_diffusion, build_model  # noqa: E402

FLOAT64_LOSS_RTOL = 1e-9  # rounding differences of ~1e-16 per op, over a few thousand ops in sequence


def one_step(config, dtype, batch: np.ndarray, device: str, compiled_cpu_kernels: bool):
    """The loss (a float) and {name: gradient (NumPy)} of one training forward + backward."""
    x0, t, noise, y = batch
    model = build_model(config).to(device=device, dtype=dtype)  # the seed fixes the weights
    model.train()
    diffusion = build_diffusion(config)
    xp = backend.get_array_module(device)
    with runtime.cpu_kernels(compiled_cpu_kernels):
        losses = diffusion.training_losses(model, Tensor(xp.asarray(x0.astype(dtype))), t,
                                           noise=xp.asarray(noise.astype(dtype)), y=y)
        losses["loss"].backward()
    return float(losses["loss"].item()), {name: backend.to_numpy(p.grad) for name, p in model.named_parameters()}


def compare(config, dtype, batch, device: str) -> dict:
    """Loss and worst gradient difference of the candidate route on ``device`` against the CPU reference."""
    # the GPU against the CPU's fast route (the references loop over time in Python: minutes for `small`),
    # where a C++ compiler is there to build it
    fast_reference = device == "gpu" and runtime.cpu_compiler() is not None
    loss_ref, grads_ref = one_step(config, dtype, batch, "cpu", compiled_cpu_kernels=fast_reference)
    loss, grads = one_step(config, dtype, batch, device, compiled_cpu_kernels=device == "cpu")
    worst, worst_name = 0.0, "-"
    for name, reference in grads_ref.items():
        scale = float(np.abs(reference).max())
        difference = float(np.abs(grads[name].astype(np.float64) - reference).max())
        relative = difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)
        if not np.all(np.isfinite(grads[name])):
            relative = math.inf
        if relative > worst:
            worst, worst_name = relative, name
    return dict(dtype=np.dtype(dtype).name, loss_ref=loss_ref, loss=loss,
                loss_rel=abs(loss - loss_ref) / abs(loss_ref), grad_rel=worst, grad_worst=worst_name)


def random_batch(config, batch_size: int, seed: int):
    """x_0 in [-1, 1], steps t spread over the whole schedule, ε and labels (host arrays, float64)."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.in_channels, config.input_size, config.input_size)
    return (rng.uniform(-1, 1, shape), rng.integers(0, config.num_timesteps, batch_size),
            rng.standard_normal(shape), rng.integers(0, config.num_classes, batch_size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu",
                        help="the candidate route: gpu (CuPy), or cpu (the kernels compiled as C++)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "gpu" and not backend.gpu_available():
        print(f"error: {backend.gpu_unavailable_reason()}", file=sys.stderr)
        return 1
    config = dataclasses.replace(RECIPES[args.device], preset=args.preset, seed=args.seed)
    batch = random_batch(config, args.batch, args.seed)
    if args.device == "cpu":
        route = "CPU kernels compiled as C++ against the CPU NumPy references"
    elif runtime.cpu_compiler() is not None:
        route = "GPU (CuPy) against the CPU kernels compiled as C++"
    else:
        route = "GPU (CuPy) against the CPU NumPy references (no C++ compiler here for the CPU kernels: slower)"
    print(f"preset {args.preset}, batch {args.batch}: {route}")
    print(f"{'dtype':8} {'loss (reference)':>18} {'loss':>18} {'loss rel diff':>14} {'grad rel diff':>14}  worst parameter")
    failed = False
    for dtype in args.dtypes.split(","):
        r = compare(config, np.dtype(dtype), batch, args.device)
        print(f"{r['dtype']:8} {r['loss_ref']:18.10g} {r['loss']:18.10g} {r['loss_rel']:14.3e} {r['grad_rel']:14.3e}  "
              f"{r['grad_worst']}", flush=True)
        if not (math.isfinite(r["loss_rel"]) and math.isfinite(r["grad_rel"])):
            print(f"FAIL: a non-finite loss or gradient in {r['dtype']}")
            failed = True
        elif r["dtype"] == "float64" and r["loss_rel"] > FLOAT64_LOSS_RTOL:
            print(f"FAIL: the float64 losses differ by {r['loss_rel']:.3e} relative, more than {FLOAT64_LOSS_RTOL:g}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
