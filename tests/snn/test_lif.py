"""Multi-step LIF neurons and the spike rate: references, fused backward, minisdit/kernels/lif.cu."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minisdit
from minisdit import backend
from minisdit.kernel_checks import lif as lif_check
from minisdit.kernels import runtime
from minisdit import functional as F
from minisdit.snn import LIF, LIFKernels, LIFOptions, SpikeRate, lif, lif_unrolled, spike_rate
from minisdit.snn import firing_rates, record_firing_rates, reset_firing_rates
from minisdit.snn.lif import THREADS_PER_BLOCK, lif_forward_reference
from minisdit.snn.surrogate import ATan, Erf, PiecewiseQuadratic, Sigmoid, SoftSign
from minisdit.autograd.gradcheck import gradcheck

SURROGATES = [ATan(), Sigmoid(), PiecewiseQuadratic(), SoftSign(), Erf()]
# (v_reset, detach_reset, decay_input); v_reset None is a soft reset
STRUCTURES = list(itertools.product([0.0, -0.3, None], [False, True], [True, False]))

options_strategy = st.builds(
    dict,
    tau=st.sampled_from([1.5, 2.0, 3.7]),
    v_threshold=st.sampled_from([1.0, 0.6]),
    v_reset=st.sampled_from([0.0, -0.3, None]),
    decay_input=st.booleans(),
    detach_reset=st.booleans(),
    surrogate=st.sampled_from(SURROGATES),
)
shape_strategy = st.tuples(st.integers(1, 8), st.lists(st.integers(1, 4), min_size=0, max_size=2))


def random_input(rng, shape):
    """Inputs spread around the threshold, so that spikes, silences and resets all happen."""
    return rng.normal(0.8, 1.0, size=shape)


# ---------------------------------------------------------------------------------------------
# hand-computed spike trains
# ---------------------------------------------------------------------------------------------
def test_constant_input_hand_computed_spike_trains():
    # tau = 2, v_threshold = 1, decay_input: h_t = v_{t-1} + (x - v_{t-1}) / 2.
    # x = 1.5, hard reset to 0: h = 0.75 (v = 0.75), h = 1.125 -> spike (v = 0), then the same again:
    #   spikes 0, 1, 0, 1, 0, 1.
    x = minisdit.Tensor(np.full((6, 1), 1.5))
    np.testing.assert_array_equal(LIF()(x).numpy()[:, 0], [0, 1, 0, 1, 0, 1])
    # x = 1.9, hard reset: h = 0.95, 1.425 -> spike (v = 0), 0.95, 1.425 -> spike, ...: 0, 1, 0, 1, 0, 1.
    # x = 1.9, soft reset (v_reset=None, v -= 1 on a spike):
    #   h1 = 0.95                        no spike, v = 0.95
    #   h2 = 0.95 + 0.475    = 1.425     spike,    v = 0.425
    #   h3 = 0.425 + 0.7375  = 1.1625    spike,    v = 0.1625
    #   h4 = 0.1625 + 0.86875 = 1.03125  spike,    v = 0.03125
    #   h5 = 0.03125 + 0.934375 = 0.965625  no spike, v = 0.965625
    #   h6 = 0.965625 + 0.4671875 = 1.4328125  spike
    x = minisdit.Tensor(np.full((6, 1), 1.9))
    np.testing.assert_array_equal(LIF()(x).numpy()[:, 0], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(LIF(v_reset=None)(x).numpy()[:, 0], [0, 1, 1, 1, 0, 1])
    # decay_input=False, x = 0.6: h = v - v/2 + 0.6: 0.6, 0.9, 1.05 -> spike (v = 0), repeat: 0, 0, 1, 0, 0, 1
    x = minisdit.Tensor(np.full((6, 1), 0.6))
    np.testing.assert_array_equal(LIF(decay_input=False)(x).numpy()[:, 0], [0, 0, 1, 0, 0, 1])
    # the membrane potential h saved for backward follows the same numbers
    _, h = lif_forward_reference(np.full((6, 1), 1.9), LIFOptions(v_reset=None))
    np.testing.assert_allclose(h[:, 0], [0.95, 1.425, 1.1625, 1.03125, 0.965625, 1.4328125], rtol=1e-14)


def test_threshold_is_inclusive_and_state_restarts_every_call():
    # decay_input=False, tau=2, v_threshold=1: x = 1 gives h1 = 1 exactly, and Theta(0) = 1
    neuron = LIF(decay_input=False)
    x = minisdit.Tensor(np.ones((1, 3)))
    np.testing.assert_array_equal(neuron(x).numpy(), [[1, 1, 1]])
    # x = 0.6 for one step is below threshold on every call (nothing carries over between calls)
    x = minisdit.Tensor(np.full((1, 2), 0.6))
    for _ in range(3):
        np.testing.assert_array_equal(neuron(x).numpy(), [[0, 0]])


def test_lif_module_has_no_parameters_and_keyword_only_options():
    neuron = LIF(tau=3.0, v_reset=None, surrogate=Sigmoid())
    assert neuron.parameters() == [] and neuron.state_dict() == {}
    assert (neuron.tau, neuron.v_reset, neuron.surrogate) == (3.0, None, Sigmoid())
    assert SpikeRate(T=4).parameters() == []
    with pytest.raises(TypeError):
        LIF(2.0)
    assert "surrogate=ATan(alpha=2.0)" in repr(LIF())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="tau > 1"):
        LIF(tau=1.0)
    with pytest.raises(ValueError, match="tau > 1"):
        LIF(tau=0.5)
    with pytest.raises(TypeError, match="instance"):
        LIF(surrogate=ATan)
    with pytest.raises(TypeError, match="minisdit.Tensor"):
        LIF()(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        LIF()(minisdit.Tensor(np.zeros((2, 3), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"\(T, \.\.\.\)"):
        LIF()(minisdit.Tensor(np.float32(1.0)))
    with pytest.raises(ValueError, match="positive integer"):
        SpikeRate(T=0)
    with pytest.raises(TypeError, match="LIF module"):
        spike_rate(minisdit.Tensor(np.zeros(3)), neuron="lif")


def test_float32_in_float32_out():
    x = minisdit.Tensor(np.random.default_rng(0).normal(1, 1, (4, 3)).astype(np.float32), requires_grad=True)
    s = lif(x)
    assert s.dtype == np.float32
    s.backward(np.ones((4, 3), np.float32))
    assert x.grad.dtype == np.float32
    rate = SpikeRate()(minisdit.Tensor(np.ones(5, np.float32)))
    assert rate.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# the fused backward against finite differences (smooth neurons, spiking=False)
# ---------------------------------------------------------------------------------------------
def smooth_lif(x, o: LIFOptions, reset_spikes=None):
    """The spiking=False neuron written out from docs/DESIGN.md §3 on NumPy arrays (T, ...).

    ``reset_spikes`` (T, ...), when given, replaces s_t in the reset equation: holding it constant
    while x moves is what detach_reset means, so finite differences of this function with the
    reset spikes frozen at their unperturbed values give the detached gradient.
    """
    v_r = 0.0 if o.v_reset is None else o.v_reset
    v = np.full(x.shape[1:], v_r)
    spikes = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_r)) / o.tau if o.decay_input else v - (v - v_r) / o.tau + x[t]
        s = o.surrogate.primitive(h - o.v_threshold)
        r = s if reset_spikes is None else reset_spikes[t]
        v = h * (1 - r) + o.v_reset * r if o.v_reset is not None else h - o.v_threshold * r
        spikes.append(s)
    return np.stack(spikes)


def check_lif_gradient(x, options: dict):
    """The fused backward against central differences of ``smooth_lif`` (reset spikes frozen for
    detach_reset), entry by entry."""
    o = LIFOptions(spiking=False, **options)
    frozen = smooth_lif(x, o) if o.detach_reset else None
    gradcheck(lambda t: lif(t, spiking=False, **options), [x], reference=lambda x: smooth_lif(x, o, frozen),
              max_dense=x.size)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: s.name)
@pytest.mark.parametrize("v_reset,detach_reset,decay_input", STRUCTURES)
def test_fused_backward_matches_finite_differences_for_every_option(surrogate, v_reset, detach_reset, decay_input):
    options = dict(tau=2.0, v_threshold=1.0, v_reset=v_reset, decay_input=decay_input,
                   detach_reset=detach_reset, surrogate=surrogate)
    x = random_input(np.random.default_rng(surrogate.id), (5, 3))
    check_lif_gradient(x, options)
    # the fused smooth forward is the written-out smooth neuron and the unrolled autograd one
    o = LIFOptions(spiking=False, **options)
    np.testing.assert_allclose(lif(minisdit.Tensor(x), spiking=False, **options).numpy(), smooth_lif(x, o),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(lif_unrolled(minisdit.Tensor(x), spiking=False, **options).numpy(), smooth_lif(x, o),
                               rtol=1e-13, atol=1e-15)


@given(shape=shape_strategy, options=options_strategy, seed=st.integers(0, 2**31 - 1))
def test_fused_backward_matches_finite_differences_hypothesis(shape, options, seed):
    T, neurons = shape
    check_lif_gradient(random_input(np.random.default_rng(seed), (T, *neurons)), options)


@given(n=st.integers(1, 6), T=st.integers(1, 8), options=options_strategy, seed=st.integers(0, 2**31 - 1))
def test_smooth_spike_rate_matches_finite_differences(n, T, options, seed):
    x = random_input(np.random.default_rng(seed), (n,))
    o = LIFOptions(spiking=False, **options)
    frozen = smooth_lif(np.stack([x] * T), o) if o.detach_reset else None
    gradcheck(lambda t: spike_rate(t, T=T, neuron=LIF(**options), spiking=False), [x],
              reference=lambda x: smooth_lif(np.stack([x] * T), o, frozen).mean(axis=0), max_dense=x.size)


def test_detach_reset_changes_only_the_gradient():
    x = random_input(np.random.default_rng(5), (6, 4))
    upstream = np.random.default_rng(6).normal(size=x.shape)
    attached = forward_and_gradient(lambda t: lif(t), x, upstream)
    detached = forward_and_gradient(lambda t: lif(t, detach_reset=True), x, upstream)
    np.testing.assert_array_equal(attached[0], detached[0])
    assert np.abs(attached[1] - detached[1]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# the fused op against the autograd composition of charge / fire / reset
# ---------------------------------------------------------------------------------------------
def forward_and_gradient(function, x, upstream):
    leaf = minisdit.Tensor(x, requires_grad=True)
    out = function(leaf)
    out.backward(upstream)
    return out.numpy(), leaf.grad


@given(shape=shape_strategy, options=options_strategy, spiking=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fused_equals_autograd_composition(shape, options, spiking, seed):
    T, neurons = shape
    rng = np.random.default_rng(seed)
    x = random_input(rng, (T, *neurons))
    upstream = rng.normal(size=x.shape)
    fused = forward_and_gradient(lambda x: lif(x, spiking=spiking, **options), x, upstream)
    unrolled = forward_and_gradient(lambda x: lif_unrolled(x, spiking=spiking, **options), x, upstream)
    np.testing.assert_allclose(fused[0], unrolled[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(fused[1], unrolled[1], rtol=1e-12, atol=1e-14)


def test_unrolled_composition_uses_functional_ops_and_surrogate_node():
    # one spike, then its gradient by hand: T = 1, h = x / 2 (tau 2, v_r 0), s = Theta(h - 1),
    # ds/dx = g'(h - 1) / 2 with ATan(2): g'(0.2) = 1 / (1 + (0.2 pi)^2)
    x = minisdit.Tensor(np.array([[2.4]]), requires_grad=True)
    s = lif_unrolled(x)
    s.backward(np.ones((1, 1)))
    assert s.numpy()[0, 0] == 1.0
    assert x.grad[0, 0] == pytest.approx(0.5 / (1 + (0.2 * np.pi) ** 2), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# spike rate = mean over T of LIF on the repeated input
# ---------------------------------------------------------------------------------------------
@given(neurons=st.lists(st.integers(1, 5), min_size=1, max_size=2), T=st.integers(1, 8),
       options=options_strategy, spiking=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_spike_rate_equals_lif_on_the_repeated_input(neurons, T, options, spiking, seed):
    rng = np.random.default_rng(seed)
    x = random_input(rng, tuple(neurons))
    upstream = rng.normal(size=x.shape)
    neuron = LIF(**options)
    fused = forward_and_gradient(lambda x: spike_rate(x, T=T, neuron=neuron, spiking=spiking), x, upstream)
    repeated = forward_and_gradient(
        lambda x: F.mean(lif(F.stack([x] * T, axis=0), spiking=spiking, **options), axis=0), x, upstream)
    np.testing.assert_allclose(fused[0], repeated[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(fused[1], repeated[1], rtol=1e-11, atol=1e-14)


def test_spike_rate_module_uses_its_options():
    x = minisdit.Tensor(np.array([1.9, 1.5, 0.0]))
    # from the hand-computed trains above: T = 4, x = 1.9 soft reset 0,1,1,1 -> 0.75; x = 1.5 -> 0.5
    np.testing.assert_allclose(SpikeRate(T=4, v_reset=None)(x).numpy(), [0.75, 0.5, 0.0])
    np.testing.assert_allclose(SpikeRate(T=4)(x).numpy(), [0.5, 0.5, 0.0])


# ---------------------------------------------------------------------------------------------
# the firing-rate hook
# ---------------------------------------------------------------------------------------------
class TwoNeurons(minisdit.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = SpikeRate(T=4)
        self.block = minisdit.nn.Sequential(SpikeRate(T=4, v_reset=None))

    def forward(self, x):
        return self.block(self.first(x))


def test_firing_rate_hook_reports_known_rates():
    model = TwoNeurons()
    x = minisdit.Tensor(np.full((3, 5), 1.5))
    model(x)  # not recording: nothing counted
    assert firing_rates(model) == {}
    with record_firing_rates():
        model(x)  # first: rate 0.5 everywhere; second sees 0.5: h = 0.25, 0.375, ... never spikes
        model(minisdit.Tensor(np.zeros((3, 5))))  # first: no spikes
    assert firing_rates(model) == {"first": pytest.approx(0.25), "block.0": pytest.approx(0.0)}
    assert model.first.neuron_steps == 2 * 15 * 4 and float(model.first.spike_count) == 30.0
    reset_firing_rates(model)
    assert firing_rates(model) == {}
    with record_firing_rates():
        LIF_inside = LIF()
        LIF_inside(minisdit.Tensor(np.full((4, 2), 1.5)))
    assert firing_rates(LIF_inside) == {"": pytest.approx(0.5)}


# ---------------------------------------------------------------------------------------------
# minisdit/kernels/lif.cu: compiled with NVRTC for every variant, run on the CPU against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not runtime.nvrtc_available(), reason="needs libnvrtc (pip install nvidia-cuda-nvrtc-cu12)")
@pytest.mark.parametrize("arch", runtime.NVRTC_ARCHITECTURES)
def test_every_kernel_variant_compiles_with_nvrtc(arch):
    source = runtime.kernel_source("lif.cu")
    variants = lif_check.variants()
    assert len(variants) == 5 * 2 * 2 * 2 * 2
    for defines in variants:
        ptx = runtime.nvrtc_compile(source, defines, arch=arch, name="lif.cu")
        for kernel in lif_check.KERNELS:
            assert f".entry {kernel}" in ptx, (kernel, defines)


def _cpu_variants():
    """Ten variants that cover every surrogate with both resets and both dtypes, every value of
    detach_reset and decay_input with every surrogate, and all eight reset/detach/decay triples
    (the full grid of 80 runs with ``-m slow``).  Each variant costs one C++ compilation."""
    f32, f64 = np.float32, np.float64
    return [
        # (surrogate, v_reset, detach_reset, decay_input, dtype)
        (ATan(), 0.0, False, True, f64), (ATan(), None, True, False, f32),
        (Sigmoid(), -0.3, True, False, f64), (Sigmoid(), None, False, True, f32),
        (PiecewiseQuadratic(), 0.0, False, False, f32), (PiecewiseQuadratic(), None, True, True, f64),
        (SoftSign(), -0.3, True, True, f32), (SoftSign(), None, False, False, f64),
        (Erf(), 0.0, False, True, f64), (Erf(), None, True, False, f32),
    ]


CPU_VARIANTS = _cpu_variants()
ALL_CPU_VARIANTS = [(surrogate, v_reset, detach, decay, dtype) for surrogate, v_reset, detach, decay, dtype
                    in itertools.product(SURROGATES, [0.0, None], [False, True], [True, False], [np.float32, np.float64])]


def variant_id(variant):
    surrogate, v_reset, detach, decay, dtype = variant
    reset = "soft" if v_reset is None else f"hard{v_reset}"
    return f"{surrogate.name}-{reset}-detach{int(detach)}-decay{int(decay)}-{np.dtype(dtype).name}"


def check_kernels_against_reference(variant, neurons, T, block=THREADS_PER_BLOCK, max_blocks=None):
    """minisdit.kernel_checks.lif.check: on the CPU with GPU-sized blocks by default, so that the kernels'
    block indexing is used (``block=None`` is the one-thread launch of the CPU fast path).  Spikes and
    rates exactly, h and the gradients within rounding, on an input that both fires and stays silent."""
    surrogate, v_reset, detach, decay, dtype = variant
    options = LIFOptions(tau=1.7, v_threshold=0.9, v_reset=v_reset, decay_input=decay, detach_reset=detach,
                         surrogate=surrogate)
    assert lif_check.check(options, dtype, neurons, T, block=block, max_blocks=max_blocks) <= 1


@pytest.mark.parametrize("variant", CPU_VARIANTS, ids=variant_id)
@pytest.mark.parametrize("neurons,T", [(1, 3), (257, 5), (1000, 4)])
def test_kernels_run_on_cpu_match_the_reference(variant, neurons, T):
    # blocks of 256 threads: 1, 2 (the second with one neuron) and 4 blocks
    check_kernels_against_reference(variant, neurons, T)


def test_kernels_grid_stride_loop_covers_every_neuron():
    # 2 blocks of 256 threads for 1000 neurons: each thread handles up to 2 neurons
    check_kernels_against_reference(CPU_VARIANTS[0], 1000, 6, max_blocks=2)
    check_kernels_against_reference(CPU_VARIANTS[-1], 1000, 6, max_blocks=1)
    # one thread for everything: the launch the CPU fast path uses
    check_kernels_against_reference(CPU_VARIANTS[1], 257, 6, block=None)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ALL_CPU_VARIANTS, ids=variant_id)
def test_every_kernel_variant_runs_on_cpu_and_matches_the_reference(variant):
    check_kernels_against_reference(variant, 257, 7, max_blocks=1)


def test_kernels_refuse_the_smooth_neuron():
    with pytest.raises(ValueError, match="spiking neurons only"):
        LIFKernels(LIFOptions(spiking=False), np.float64)


# ---------------------------------------------------------------------------------------------
# GPU: the CuPy path (minisdit/kernels/lif.cu) against NumPy in float32
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu  # skipped with the reason, or failed under MINISDIT_REQUIRE_GPU=1, by tests/conftest.py
@pytest.mark.parametrize("variant", CPU_VARIANTS, ids=variant_id)
def test_gpu_lif_matches_numpy(variant):
    surrogate, v_reset, detach, decay, _ = variant
    options = dict(tau=2.0, v_reset=v_reset, detach_reset=detach, decay_input=decay, surrogate=surrogate)
    rng = np.random.default_rng(0)
    x = random_input(rng, (4, 33, 97)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    cpu = forward_and_gradient(lambda t: lif(t, **options), x, upstream)
    leaf = minisdit.Tensor(x, device="gpu", requires_grad=True)
    out = lif(leaf, **options)
    out.backward(backend.to_device(upstream, "gpu"))
    np.testing.assert_array_equal(out.numpy(), cpu[0])
    np.testing.assert_allclose(backend.to_numpy(leaf.grad), cpu[1], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu  # skipped with the reason, or failed under MINISDIT_REQUIRE_GPU=1, by tests/conftest.py
@pytest.mark.parametrize("variant", CPU_VARIANTS, ids=variant_id)
def test_gpu_spike_rate_matches_numpy(variant):
    surrogate, v_reset, detach, decay, _ = variant
    neuron = SpikeRate(T=4, tau=2.0, v_reset=v_reset, detach_reset=detach, decay_input=decay, surrogate=surrogate)
    rng = np.random.default_rng(1)
    x = random_input(rng, (5, 129, 7)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    cpu = forward_and_gradient(neuron, x, upstream)
    leaf = minisdit.Tensor(x, device="gpu", requires_grad=True)
    out = neuron(leaf)
    out.backward(backend.to_device(upstream, "gpu"))
    np.testing.assert_array_equal(out.numpy(), cpu[0])
    np.testing.assert_allclose(backend.to_numpy(leaf.grad), cpu[1], rtol=1e-5, atol=1e-5)
