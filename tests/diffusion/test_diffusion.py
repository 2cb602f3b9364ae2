"""minisdit.diffusion against independent derivations: the schedule, q(x_t|x_0) (closed form and the
Markov chain it summarises), the posterior (Gaussian product), the normal KL (numeric integral),
the discretised decoder (scipy's exact normal CDF), IDDPM's respacing rule, gradients of L_vb and
of the ε-MSE (central differences), and the samplers (seeds, Gaussian data with an exact oracle,
DDIM inversion, classifier-free guidance)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from minisdit import Tensor
from minisdit import functional as F
from minisdit.diffusion import (AncestralStep, DDIMStep, EpsilonMSE, GaussianDiffusion, SpacedDiffusion,
                                approx_standard_normal_cdf, ddim_sigma, discretized_gaussian_log_likelihood, generate, generate_in_workers, normal_kl,
                                space_timesteps)
from minisdit.diffusion.samplers import sample_loop
from minisdit.models import sdit_from_preset
from minisdit.autograd.gradcheck import gradcheck

FAST = settings(max_examples=settings().max_examples * 5 // 6, deadline=None)
DIFFUSION = GaussianDiffusion()


class FakeModel:
    """Looks like an SDiT to the diffusion: ``num_classes``, ``device``, ``dtype``, ``training``,
    ``eval()``/``train()``; ``fn(x, t, y)`` on raw arrays gives the output.  Records every call."""

    def __init__(self, fn, num_classes=None, dtype=np.float64):
        self.fn, self.num_classes, self.dtype = fn, num_classes, np.dtype(dtype)
        self.device, self.training, self.calls = "cpu", False, []

    def __call__(self, x, t, y):
        self.calls.append({"t": np.array(t), "y": None if y is None else np.array(y), "training": self.training,
                           "batch": x.shape[0]})
        return Tensor(self.fn(x.data, np.asarray(t), y))

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self


def linear_model(x, t, y):
    """A fixed linear map: ε̂ = 0.8 x + 0.05, v = 0.3 − 0.2 x."""
    return np.concatenate([0.8 * x + 0.05, 0.3 - 0.2 * x], axis=1)


def quantised_images(rng, shape):
    """Data like the training set: k/255 mapped to [−1, 1], so ±1 (the open bins) occur."""
    return rng.integers(0, 256, shape) / 255.0 * 2.0 - 1.0


# ---------------------------------------------------------------------------------------------
# schedule and forward process
# ---------------------------------------------------------------------------------------------
def test_linear_schedule_values():
    d = DIFFUSION
    assert d.num_timesteps == len(d.betas) == 1000
    assert d.betas[0] == pytest.approx(1e-4, rel=1e-14) and d.betas[-1] == pytest.approx(0.02, rel=1e-14)
    np.testing.assert_allclose(np.diff(d.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    for t in (0, 1, 17, 500, 999):
        product = math.exp(math.fsum(math.log1p(-b) for b in d.betas[:t + 1]))
        assert d.alphas_cumprod[t] == pytest.approx(product, rel=1e-12)
    assert d.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    np.testing.assert_allclose(d.posterior_variance[1:], d.betas[1:] * (1 - d.alphas_cumprod[:-1]) / (1 - d.alphas_cumprod[1:]))
    assert d.posterior_variance[0] == 0.0
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1] == np.log(d.posterior_variance[1])
    np.testing.assert_allclose(d.posterior_log_variance_clipped[2:], np.log(d.posterior_variance[2:]))
    # the ends scale with 1000/T for other lengths (IDDPM), and the cosine schedule follows its ᾱ(s)
    short = GaussianDiffusion(num_timesteps=500)
    assert short.betas[0] == pytest.approx(2e-4) and short.betas[-1] == pytest.approx(0.04)
    cosine = GaussianDiffusion(num_timesteps=100, beta_schedule="cosine")

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [alpha_bar((t + 1) / 100) / alpha_bar(0) for t in range(99)]
    np.testing.assert_allclose(cosine.alphas_cumprod[:99], expected, rtol=1e-10)
    assert cosine.betas[-1] == 0.999


@FAST
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_q_sample_closed_form(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x0, noise = rng.uniform(-1, 1, shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    t = rng.integers(0, 1000, shape[0])
    x_t = DIFFUSION.q_sample(x0, t, noise)
    assert isinstance(x_t, np.ndarray) and x_t.dtype == dtype
    for n in range(shape[0]):
        alpha_bar = math.prod(1.0 - b for b in DIFFUSION.betas[:t[n] + 1])
        np.testing.assert_allclose(x_t[n], math.sqrt(alpha_bar) * x0[n] + math.sqrt(1 - alpha_bar) * noise[n],
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6 if dtype == np.float32 else 1e-13)
    as_tensor = DIFFUSION.q_sample(Tensor(x0), t, Tensor(noise))
    assert isinstance(as_tensor, Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), x_t)


def test_coefficients_are_the_float64_schedule_indexed_then_cast():
    """Per-sample coefficients are the float64 schedule at t cast to the data's dtype, bit for bit,
    in whichever order dtypes and steps come (the cast copies are kept per dtype, the last t is
    reused), and a replaced schedule array is picked up."""
    d = GaussianDiffusion()
    rng = np.random.default_rng(4)

    def column(values, t, dtype):
        return values[t].astype(dtype).reshape(-1, 1, 1, 1)

    for dtype, t in [(np.float32, [0, 7, 999, 7]), (np.float64, [0, 7, 999, 7]), (np.float32, [5, 1, 2, 3]),
                     (np.float32, [5, 1, 2, 3])]:
        t = np.array(t)
        x0, noise = (rng.standard_normal((4, 1, 3, 2)).astype(dtype) for _ in range(2))
        np.testing.assert_array_equal(d.q_sample(x0, t, noise), column(d.sqrt_alphas_cumprod, t, dtype) * x0
                                      + column(d.sqrt_one_minus_alphas_cumprod, t, dtype) * noise)
        np.testing.assert_array_equal(d.predict_x0(x0, t, noise), column(d.sqrt_recip_alphas_cumprod, t, dtype) * x0
                                      - column(d.sqrt_recipm1_alphas_cumprod, t, dtype) * noise)
    d.sqrt_recip_alphas_cumprod = 2.0 * d.sqrt_recip_alphas_cumprod
    np.testing.assert_array_equal(d.predict_x0(x0, t, noise), column(d.sqrt_recip_alphas_cumprod, t, dtype) * x0
                                  - column(d.sqrt_recipm1_alphas_cumprod, t, dtype) * noise)


def test_q_sample_summarises_the_markov_chain():
    """x_t = √(1−β_t) x_{t−1} + √β_t z_t, step by step, has the marginal N(√ᾱ_t x_0, 1 − ᾱ_t)."""
    rng = np.random.default_rng(0)
    samples, x0 = 20000, 0.7
    x = np.full(samples, x0)
    for t in range(300):
        x = math.sqrt(1 - DIFFUSION.betas[t]) * x + math.sqrt(DIFFUSION.betas[t]) * rng.standard_normal(samples)
    mean, variance = math.sqrt(DIFFUSION.alphas_cumprod[299]) * x0, 1 - DIFFUSION.alphas_cumprod[299]
    assert abs(x.mean() - mean) < 4.5 * math.sqrt(variance / samples)
    assert abs(x.var() - variance) < 4.5 * variance * math.sqrt(2 / samples)


@FAST
@given(t=st.integers(0, 999), seed=st.integers(0, 2**32 - 1))
def test_posterior_is_the_gaussian_product(t, seed):
    """q(x_{t−1}|x_t,x_0) ∝ N(x_t; √α_t x_{t−1}, β_t) N(x_{t−1}; √ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})."""
    rng = np.random.default_rng(seed)
    x0, x_t = rng.uniform(-1, 1, (2, 1, 2, 3, 3))
    mean, variance, log_variance = DIFFUSION.q_posterior_mean_variance(x0, x_t, np.array([t]))
    beta = DIFFUSION.betas[t]
    alpha_bar_prev = math.prod(1.0 - b for b in DIFFUSION.betas[:t])  # 1 for t = 0
    if t == 0:  # x_{−1} = x_0 exactly
        np.testing.assert_allclose(mean, x0, rtol=1e-12)
        assert variance.item() == 0.0
        assert log_variance.item() == pytest.approx(np.log(DIFFUSION.posterior_variance[1]))
        return
    precision = (1 - beta) / beta + 1 / (1 - alpha_bar_prev)
    expected_mean = (math.sqrt(1 - beta) * x_t / beta + math.sqrt(alpha_bar_prev) * x0 / (1 - alpha_bar_prev)) / precision
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-9, atol=1e-12)
    assert variance.item() == pytest.approx(1 / precision, rel=1e-9)
    assert log_variance.item() == pytest.approx(math.log(1 / precision), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# the terms of L_vb
# ---------------------------------------------------------------------------------------------
@FAST
@given(mean1=st.floats(-2, 2), mean2=st.floats(-2, 2), log_var1=st.floats(-4, 1), log_var2=st.floats(-4, 1))
def test_normal_kl_equals_the_integral(mean1, mean2, log_var1, log_var2):
    std1, std2 = math.exp(0.5 * log_var1), math.exp(0.5 * log_var2)

    def log_density(x, mean, std):
        return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)

    def integrand(x):  # p log(p/q)
        log_p = log_density(x, mean1, std1)
        return math.exp(log_p) * (log_p - log_density(x, mean2, std2))

    numeric, _ = integrate.quad(integrand, mean1 - 9 * std1, mean1 + 9 * std1, epsabs=1e-12, epsrel=1e-10, limit=200)
    kl = normal_kl(np.array(mean1), np.array(log_var1), np.array(mean2), np.array(log_var2)).item()
    assert kl == pytest.approx(numeric, rel=1e-7, abs=1e-9)


def tanh_cdf(x):
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def bin_probability(x, mean, scale, cdf):
    """P(x) of the discretised Gaussian, bin by bin (open at the two ends)."""
    upper, lower = (x - mean + 1 / 255) / scale, (x - mean - 1 / 255) / scale
    if x < -0.999:
        return cdf(upper)
    if x > 0.999:
        return 1.0 - cdf(lower)
    return cdf(upper) - cdf(lower)


def test_tanh_cdf_is_close_to_the_exact_normal_cdf():
    grid = np.linspace(-12, 12, 240001)
    error = np.abs(approx_standard_normal_cdf(grid).numpy() - stats.norm.cdf(grid)).max()
    assert error < 2e-4  # the approximation DDPM uses; its worst case is 1.8e-4 near |x| = 2.2


def test_discretized_log_likelihood_matches_references():
    rng = np.random.default_rng(3)
    x = quantised_images(rng, (4, 2, 5, 5))
    x[0, 0, 0, :2], x[0, 0, 1, :2] = -1.0, 1.0
    means = x + rng.normal(0, 0.02, x.shape)
    log_scales = rng.uniform(np.log(0.003), np.log(0.05), x.shape)
    log_p = discretized_gaussian_log_likelihood(x, means, log_scales).numpy()
    # the same tanh approximation, element by element, with the clamp at 1e-12
    same = np.vectorize(lambda *a: math.log(max(bin_probability(*a, tanh_cdf), 1e-12)))(x, means, np.exp(log_scales))
    # a bin far out in a tail is a difference of two CDFs near 1: compare probabilities to a few
    # ulps of 1 (rounding differences of tanh are amplified by that cancellation), not their logs
    np.testing.assert_allclose(np.exp(log_p), np.exp(same), rtol=1e-12, atol=1e-15)
    # the exact normal CDF: each probability differs by at most twice the CDF's error
    grid = np.linspace(-12, 12, 240001)
    cdf_error = np.abs(approx_standard_normal_cdf(grid).numpy() - stats.norm.cdf(grid)).max()
    exact = np.vectorize(lambda *a: bin_probability(*a, stats.norm.cdf))(x, means, np.exp(log_scales))
    assert np.abs(np.exp(log_p) - exact).max() <= 2 * cdf_error
    assert np.abs(np.exp(log_p) - exact).max() > 0  # the approximation is really in use


def test_discretized_likelihood_sums_to_one_over_the_256_levels():
    levels = np.arange(256) / 255.0 * 2 - 1
    for mean, scale in [(0.1, 0.01), (-0.98, 0.02), (0.999, 0.005)]:
        log_p = discretized_gaussian_log_likelihood(levels, np.full(256, mean), np.full(256, np.log(scale))).numpy()
        # the bins' edges meet, so the sum telescopes to 1, except that bins below 1e-12 read 1e-12
        clamped = log_p == np.log(1e-12)
        assert clamped.sum() > 100
        assert abs(np.exp(log_p[~clamped]).sum() - 1.0) <= 1e-12 * clamped.sum() + 1e-13
    far = discretized_gaussian_log_likelihood(np.array([0.0]), np.array([0.9]), np.array([np.log(1e-3)])).item()
    assert far == pytest.approx(math.log(1e-12))  # the clamp


def test_vb_values_for_a_perfect_mean():
    """With ε̂ = ε the predicted mean is μ̃_t: L_vb is 0 for v = −1 (σ² = β̃_t), ½(−1 + log β/β̃ + β̃/β)/ln 2
    for v = 1 (σ² = β_t), and at t = 0 the decoder NLL of a Gaussian centred on x_0."""
    rng = np.random.default_rng(1)
    shape = (3, 1, 4, 4)
    x0, noise = quantised_images(rng, shape), rng.standard_normal(shape)
    t = np.array([0, 10, 900])
    x_t = DIFFUSION.q_sample(x0, t, noise)
    d = DIFFUSION
    for v, kl_nats in [(-1.0, np.zeros(2)),
                       (1.0, 0.5 * (-1 + np.log(d.betas[t[1:]] / d.posterior_variance[t[1:]])
                                    + d.posterior_variance[t[1:]] / d.betas[t[1:]]))]:
        output = np.concatenate([noise, np.full(shape, v)], axis=1)
        vb = d.vb_terms_bpd(output, x0, x_t, t).numpy()
        np.testing.assert_allclose(vb[1:], kl_nats / math.log(2), atol=1e-10)
        sigma = math.exp(0.5 * (d.log_betas[0] if v > 0 else d.posterior_log_variance_clipped[0]))
        nll = [-math.log(bin_probability(x, x, sigma, tanh_cdf)) for x in x0[0].ravel()]
        assert vb[0] == pytest.approx(np.mean(nll) / math.log(2), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
@FAST
@given(batch=st.integers(1, 3), channels=st.integers(1, 2), height=st.integers(1, 4), width=st.integers(1, 4),
       v_scale=st.sampled_from([0.5, 1.5]), first_is_zero=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_vb_gradient_in_v(batch, channels, height, width, v_scale, first_is_zero, seed):
    """The whole training loss, with a fake model whose output is [fixed ε̂, v]: dL/dv."""
    rng = np.random.default_rng(seed)
    shape = (batch, channels, height, width)
    x0, noise = quantised_images(rng, shape), rng.standard_normal(shape)
    eps_hat = noise + rng.normal(0, 0.5, shape)
    t = rng.integers(0, 1000, batch)
    if first_is_zero:
        t[0] = 0
    v = rng.uniform(-v_scale, v_scale, shape)

    def loss(v):
        return DIFFUSION.training_losses(lambda x, t, y: F.concat([Tensor(eps_hat), v], axis=1),
                                         Tensor(x0), t, noise=noise)["loss"]

    gradcheck(loss, [v])


def test_training_loss_gradients_split_between_eps_and_v():
    """ε̂ learns only from the MSE (L_vb sees it detached); v only from L_vb."""
    rng = np.random.default_rng(2)
    shape = (4, 2, 3, 5)
    x0, noise = quantised_images(rng, shape), rng.standard_normal(shape)
    t = np.array([0, 3, 400, 999])
    eps_hat = Tensor(noise + rng.normal(0, 0.3, shape), requires_grad=True)
    v = Tensor(rng.uniform(-1, 1, shape), requires_grad=True)
    terms = DIFFUSION.training_losses(lambda x, t, y: F.concat([eps_hat, v], axis=1), Tensor(x0), t, noise=noise)
    terms["loss"].backward()
    per_sample = 2 * 3 * 5
    np.testing.assert_allclose(eps_hat.grad, 2 * (eps_hat.data - noise) / per_sample / 4, rtol=1e-12)
    np.testing.assert_allclose(terms["mse"], ((eps_hat.data - noise) ** 2).reshape(4, -1).mean(axis=1), rtol=1e-12)
    # per-sample terms stay arrays on the data's device (NumPy here), detached, one per sample
    assert sorted(terms) == ["loss", "mse", "t", "vb"]
    for name in ("mse", "vb"):
        assert isinstance(terms[name], np.ndarray) and terms[name].shape == (4,) and terms[name].dtype == np.float64
    np.testing.assert_array_equal(terms["t"], t)
    assert terms["loss"].item() == pytest.approx(np.mean(terms["mse"] + terms["vb"]), rel=1e-12)
    x_t = DIFFUSION.q_sample(x0, t, noise)
    v_alone = Tensor(v.data, requires_grad=True)
    F.mean(DIFFUSION.vb_terms_bpd(F.concat([Tensor(eps_hat.data), v_alone], axis=1), x0, x_t, t)).backward()
    np.testing.assert_allclose(v.grad, v_alone.grad, rtol=1e-12)


@FAST
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
       seed=st.integers(0, 2**32 - 1))
def test_epsilon_mse_forward_and_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    predicted, target = rng.standard_normal((2,) + shape)
    loss = EpsilonMSE.apply(Tensor(predicted), Tensor(target)).numpy()
    np.testing.assert_allclose(loss, [np.mean((predicted[n] - target[n]) ** 2) for n in range(shape[0])], rtol=1e-12)
    gradcheck(lambda p, e: EpsilonMSE.apply(p, e), [predicted, target])


# ---------------------------------------------------------------------------------------------
# respacing
# ---------------------------------------------------------------------------------------------
def test_space_timesteps_250_is_round_i_999_over_249():
    assert space_timesteps(1000, 250) == [round(i * 999 / 249) for i in range(250)]
    assert space_timesteps(1000, "250") == space_timesteps(1000, [250]) == space_timesteps(1000, 250)
    assert space_timesteps(1000, 1000) == list(range(1000))


def test_space_timesteps_follows_iddpm_rule_by_hand():
    # two sections of 5: frac 4 → 0, 4; frac 2 → 5, 7, 9
    assert space_timesteps(10, [2, 3]) == [0, 4, 5, 7, 9]
    # the remainder goes to the first sections: sizes 4, 3, 3; one step keeps the section start
    assert space_timesteps(10, [1, 1, 1]) == [0, 4, 7]
    # sizes 6, 5: positions 0, 2.5, 5.0 round half to even (Python's round) → 0, 2, 5; then 6, 10
    assert space_timesteps(11, "3,2") == [0, 2, 5, 6, 10]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "ddim3") == [0, 4, 8]  # stride 4 is the first giving 3 steps
    with pytest.raises(ValueError, match="stride"):
        space_timesteps(10, "ddim7")
    with pytest.raises(ValueError, match="at most 5"):
        space_timesteps(10, [6, 1])
    with pytest.raises(ValueError, match="positive"):
        space_timesteps(10, [0])


@pytest.mark.parametrize("bad", ["ddimx", "250,", "", "ddim", "1.5", "ten", 250.0, [2.5], None, True])
def test_space_timesteps_rejects_malformed_section_counts_in_one_line(bad):
    with pytest.raises(ValueError) as caught:
        space_timesteps(1000, bad)
    message = str(caught.value)
    assert message == ("section_counts must be an int, a list, a comma string like '10,15' or 'ddimN'; "
                       f"got {bad!r}")
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_space_timesteps_accepts_spaces_and_numpy_integers():
    assert space_timesteps(10, " 2, 3 ") == space_timesteps(10, [np.int64(2), np.int32(3)]) == [0, 4, 5, 7, 9]
    assert space_timesteps(10, np.array([2, 3])) == [0, 4, 5, 7, 9]
    assert space_timesteps(10, np.int64(2)) == [0, 9]


@FAST
@given(data=st.data(), num_timesteps=st.integers(1, 300), sections=st.integers(1, 4))
def test_space_timesteps_properties(data, num_timesteps, sections):
    sections = min(sections, num_timesteps)
    sizes = [num_timesteps // sections + (1 if i < num_timesteps % sections else 0) for i in range(sections)]
    counts = [data.draw(st.integers(1, size)) for size in sizes]
    kept = space_timesteps(num_timesteps, counts)
    assert kept == space_timesteps(num_timesteps, ",".join(map(str, counts)))
    assert len(kept) == sum(counts) and kept == sorted(kept)
    start = 0
    for size, count in zip(sizes, counts):
        section = [s for s in kept if start <= s < start + size]
        assert len(section) == count and section[0] == start
        if count > 1:
            assert section[-1] == start + size - 1
        start += size


def test_respaced_diffusion_keeps_alpha_bar_and_maps_steps():
    kept = space_timesteps(1000, 250)
    spaced = DIFFUSION.respaced(kept)
    assert isinstance(spaced, SpacedDiffusion) and spaced.num_timesteps == 250
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    np.testing.assert_allclose(spaced.alphas_cumprod, DIFFUSION.alphas_cumprod[kept], rtol=1e-12)
    previous = np.append(1.0, DIFFUSION.alphas_cumprod[kept][:-1])
    np.testing.assert_allclose(spaced.betas, 1 - DIFFUSION.alphas_cumprod[kept] / previous, rtol=1e-12)
    np.testing.assert_allclose(spaced.posterior_variance[1:],
                               spaced.betas[1:] * (1 - previous[1:]) / (1 - DIFFUSION.alphas_cumprod[kept][1:]), rtol=1e-12)
    full = DIFFUSION.respaced(range(1000))
    np.testing.assert_allclose(full.betas, DIFFUSION.betas, rtol=1e-9)
    # learned range on the respaced chain: v = 1 gives log β'_i, v = −1 gives log β̃'_i
    x = np.zeros((2, 1, 2, 2))
    index = np.array([5, 100])
    for v, expected in [(1.0, np.log(spaced.betas[index])), (-1.0, spaced.posterior_log_variance_clipped[index])]:
        model = FakeModel(lambda x, t, y, v=v: np.concatenate([x, np.full_like(x, v)], axis=1))
        out = spaced.p_mean_variance(model, x, index)
        np.testing.assert_allclose(out["log_variance"].numpy()[:, 0, 0, 0], expected, rtol=1e-12)
        np.testing.assert_array_equal(model.calls[0]["t"], [kept[5], kept[100]])  # the original steps


def test_sampler_gives_the_model_the_original_steps():
    model = FakeModel(linear_model)
    DIFFUSION.p_sample_loop(model, (2, 1, 3, 3), steps=10, seed=0)
    seen = [int(call["t"][0]) for call in model.calls]
    assert seen == space_timesteps(1000, 10)[::-1]
    assert all((call["t"] == call["t"][0]).all() for call in model.calls)


# ---------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------
def test_sampling_is_deterministic_given_a_seed():
    model = FakeModel(linear_model, num_classes=3)
    model.train()
    shape, y = (3, 1, 4, 5), np.array([0, 1, 2])
    first = DIFFUSION.p_sample_loop(model, shape, y=y, steps=20, seed=7)
    assert model.training and not any(call["training"] for call in model.calls)  # sampled in eval mode
    np.testing.assert_array_equal(first, DIFFUSION.p_sample_loop(model, shape, y=y, steps=20, rng=np.random.default_rng(7)))
    assert not np.allclose(first, DIFFUSION.p_sample_loop(model, shape, y=y, steps=20, seed=8))
    stochastic = DIFFUSION.ddim_sample_loop(model, shape, y=y, steps=20, seed=7, eta=1.0)
    np.testing.assert_array_equal(stochastic, DIFFUSION.ddim_sample_loop(model, shape, y=y, steps=20, seed=7, eta=1.0))
    assert first.dtype == np.float64 and first.shape == shape
    final, trajectory = DIFFUSION.p_sample_loop(model, shape, y=y, steps=20, seed=7, return_intermediates=True)
    np.testing.assert_array_equal(final, first)
    assert len(trajectory["x"]) == 21 and len(trajectory["pred_x0"]) == 20
    assert trajectory["t"] == space_timesteps(1000, 20)[::-1]


def test_ddim_eta_zero_is_deterministic_given_the_noise():
    model = FakeModel(linear_model)
    noise = np.random.default_rng(0).standard_normal((2, 1, 3, 3))
    a = DIFFUSION.ddim_sample_loop(model, noise.shape, steps=25, seed=1, noise=noise)
    b = DIFFUSION.ddim_sample_loop(model, noise.shape, steps=25, seed=2, noise=noise)
    np.testing.assert_array_equal(a, b)


def gaussian_oracle(diffusion, mean, std):
    """The exact ε̂ = E[ε | x_t] for data x_0 ~ N(mean, std²) per pixel, and v giving the exact
    reverse variance β̃'_i + (μ̃'s x_0 coefficient)² Var[x_0 | x_t] on ``diffusion``'s steps."""
    index_of = {int(original): i for i, original in enumerate(diffusion.timestep_map)}
    base = GaussianDiffusion()

    def fn(x, t, y):
        alpha_bar = base.alphas_cumprod[t][:, None, None, None]
        total_variance = alpha_bar * std ** 2 + 1 - alpha_bar
        eps = np.sqrt(1 - alpha_bar) * (x - np.sqrt(alpha_bar) * mean) / total_variance
        i = np.array([index_of[int(s)] for s in t])
        x0_variance = std ** 2 * (1 - alpha_bar) / total_variance
        target = (diffusion.posterior_variance[i][:, None, None, None]
                  + diffusion.posterior_mean_coef1[i][:, None, None, None] ** 2 * x0_variance)
        low = diffusion.posterior_log_variance_clipped[i][:, None, None, None]
        high = diffusion.log_betas[i][:, None, None, None]
        v = 2 * (np.log(target) - low) / (high - low) - 1
        return np.concatenate([eps, np.broadcast_to(v, x.shape)], axis=1)

    return FakeModel(fn)


def test_ancestral_sampler_draws_gaussian_data_exactly():
    """With the exact ε̂ and variance, every reverse step is the true q(x_{t−1}|x_t): the samples are
    N(mean, std²) up to the missing noise of the last step (variance ~1e-4) and sampling error."""
    mean, std, samples = 0.3, 0.4, 20000
    spaced = DIFFUSION.respaced(space_timesteps(1000, 50))
    x = DIFFUSION.p_sample_loop(gaussian_oracle(spaced, mean, std), (samples, 1, 1, 1), steps=50, seed=0).ravel()
    assert abs(x.mean() - mean) < 4.5 * std / math.sqrt(samples)
    assert abs(x.var() - std ** 2) < 4.5 * std ** 2 * math.sqrt(2 / samples) + 2e-4


def test_ddim_is_the_linear_map_predicted_for_gaussian_data():
    """For Gaussian data DDIM (η = 0) is linear: x ← √ᾱ' μ + k (x − √ᾱ μ) with
    k = (√(ᾱ'ᾱ) s² + √((1 − ᾱ')(1 − ᾱ))) / (ᾱ s² + 1 − ᾱ); and it nearly preserves the marginals."""
    mean, std = 0.3, 0.4
    spaced = DIFFUSION.respaced(space_timesteps(1000, 50))
    noise = np.random.default_rng(0).standard_normal((4000, 1, 1, 1))
    x = DIFFUSION.ddim_sample_loop(gaussian_oracle(spaced, mean, std), noise.shape, steps=50, noise=noise)
    slope, offset = 1.0, 0.0  # x = slope · noise + offset
    for i in reversed(range(50)):
        alpha_bar, alpha_bar_prev = spaced.alphas_cumprod[i], spaced.alphas_cumprod_prev[i]
        k = (math.sqrt(alpha_bar_prev * alpha_bar) * std ** 2 + math.sqrt((1 - alpha_bar_prev) * (1 - alpha_bar))) \
            / (alpha_bar * std ** 2 + 1 - alpha_bar)
        slope, offset = k * slope, math.sqrt(alpha_bar_prev) * mean + k * (offset - math.sqrt(alpha_bar) * mean)
    np.testing.assert_allclose(x, slope * noise + offset, rtol=1e-10, atol=1e-12)
    # each step can only shrink the spread (Cauchy–Schwarz on the two coefficient vectors; with 50
    # steps the spread ends at 0.93 std); the centre stays
    assert offset == pytest.approx(mean, abs=1e-3) and 0.9 * std < slope < std


def dataset_oracle(images):
    """The exact ε̂ = E[ε | x_t] when the data are the finitely many ``images`` (equally likely):
    E[x_0 | x_t] is their average weighted by N(x_t; √ᾱ x_0, 1 − ᾱ); v = −1 (posterior variance)."""
    flat = images.reshape(len(images), -1)
    base = GaussianDiffusion()

    def fn(x, t, y):
        alpha_bar = base.alphas_cumprod[t][:, None]
        x_flat = x.reshape(len(x), -1)
        squared = ((x_flat[:, None, :] - np.sqrt(alpha_bar)[:, :, None] * flat[None]) ** 2).sum(-1)
        logits = -squared / (2 * (1 - alpha_bar))
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        x0 = weights @ flat
        eps = (x_flat - np.sqrt(alpha_bar) * x0) / np.sqrt(1 - alpha_bar)
        return np.concatenate([eps.reshape(x.shape), -np.ones(x.shape)], axis=1)

    return FakeModel(fn)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_turn_the_exact_denoiser_of_a_small_dataset_into_its_images(sampler):
    """Multi-modal data: with the exact denoiser of 12 random 5x5 images, both samplers (50 respaced
    steps) must end on one of those images (to 1e-6; with DDPM an ε̂ scaled by 0.97 or 1.03 misses by 1e-3),
    and visit more than one of them."""
    rng = np.random.default_rng(0)
    images = np.where(rng.random((12, 1, 5, 5)) < 0.3, 1.0, -1.0)
    model = dataset_oracle(images)
    if sampler == "ddpm":
        x = DIFFUSION.p_sample_loop(model, (40, 1, 5, 5), steps=50, seed=1)
    else:
        x = DIFFUSION.ddim_sample_loop(model, (40, 1, 5, 5), steps=50, seed=1)
    distance = np.abs(x[:, None] - images[None]).reshape(40, 12, -1).max(axis=-1)  # (samples, images)
    nearest = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-6
    assert len(set(nearest.tolist())) >= 6


@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_ddim_step_with_eta_has_the_closed_form_mean_and_variance(eta):
    """One DDIM step from a fixed x with the known ε̂ = 0.8 x + 0.05 of ``linear_model``: x_{t−1} =
    √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z with σ² = η² (1 − ᾱ')/(1 − ᾱ) (1 − ᾱ/ᾱ'), exactly for a
    given z, and in distribution (mean and variance of 40000 draws); η = 1 gives σ² = β̃_t."""
    chain = DIFFUSION.respaced(space_timesteps(1000, 10))
    i, samples, x_value = 5, 40000, 0.7
    alpha_bar, alpha_bar_prev = chain.alphas_cumprod[i], chain.alphas_cumprod_prev[i]
    variance = eta ** 2 * (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    eps = 0.8 * x_value + 0.05
    pred_x0 = (x_value - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    mean = math.sqrt(alpha_bar_prev) * pred_x0 + math.sqrt(1 - alpha_bar_prev - variance) * eps
    if eta == 1.0:
        assert variance == pytest.approx(chain.posterior_variance[i], rel=1e-12)
    assert ddim_sigma(alpha_bar, alpha_bar_prev, eta) ** 2 == pytest.approx(variance, rel=1e-12, abs=1e-300)

    x, t = np.full((samples, 1, 1, 1), x_value), np.full(samples, i)
    out = chain.p_mean_variance(FakeModel(linear_model), x, t)
    z = np.random.default_rng(8).standard_normal(x.shape)
    step = DDIMStep(eta)
    np.testing.assert_allclose(step(chain, x, t, out, lambda: z), mean + math.sqrt(variance) * z, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(9)
    drawn = step(chain, x, t, out, lambda: rng.standard_normal(x.shape)).ravel()
    assert abs(drawn.mean() - mean) <= 4.5 * math.sqrt(variance / samples) + 1e-12
    assert abs(drawn.var() - variance) <= 4.5 * variance * math.sqrt(2 / samples) + 1e-12


def test_sampler_choice_is_explicit():
    """generate names its sampler, and eta belongs to DDIM only; DDIMStep rejects a negative eta."""
    model = FakeModel(linear_model, num_classes=3)
    model.in_channels, model.input_size = 1, 2
    with pytest.raises(ValueError, match="eta=0.5 applies to the DDIM sampler only"):
        generate(DIFFUSION, model, [0, 1], sampler="ddpm", eta=0.5, steps=2)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of ddpm, ddim"):
        generate(DIFFUSION, model, [0, 1], sampler="euler", steps=2)
    with pytest.raises(ValueError, match="eta must be non-negative"):
        DDIMStep(-0.1)
    ddim = generate(DIFFUSION, model, [0, 1], sampler="ddim", eta=0.5, steps=4, seed=1)
    np.testing.assert_array_equal(ddim, DIFFUSION.ddim_sample_loop(model, (2, 1, 2, 2), y=[0, 1], steps=4, eta=0.5,
                                                                    rng=np.random.default_rng([1, 0])))


def test_ddim_inversion_regenerates_the_image():
    """Invert x_0 → x_T and sample back: the error is the O(1/K) of evaluating ε̂ at the step's input."""
    base = GaussianDiffusion()

    def smooth(x, t, y):
        alpha_bar = base.alphas_cumprod[t][:, None, None, None]
        eps = np.sqrt(1 - alpha_bar) * (x - np.sqrt(alpha_bar) * 0.3) / (alpha_bar * 0.16 + 1 - alpha_bar)
        return np.concatenate([eps + 0.05 * np.sin(3 * x), np.zeros_like(x)], axis=1)

    model = FakeModel(smooth)
    x0 = np.random.default_rng(0).uniform(-1, 1, (3, 1, 4, 4))
    errors = {}
    for steps in (50, None):
        x_T = DIFFUSION.ddim_reverse_sample_loop(model, x0, steps=steps)
        assert np.abs(x_T).max() > 0.5  # it really travelled to noise level
        again = DIFFUSION.ddim_sample_loop(model, x0.shape, steps=steps, noise=x_T)
        errors[steps] = np.abs(again - x0).max()
    assert errors[None] < 0.01 and errors[None] < errors[50] / 10


# ---------------------------------------------------------------------------------------------
# classifier-free guidance
# ---------------------------------------------------------------------------------------------
def labelled_model(x, t, y):
    """Output depends on the label (row 3 is "no class"), in both ε and v."""
    shift = np.asarray(y, dtype=np.float64)[:, None, None, None]
    return np.concatenate([0.7 * x + 0.1 * shift, 0.2 * np.sin(x + shift)], axis=1)


def test_guidance_formula_and_scale_one():
    model = FakeModel(labelled_model, num_classes=3)
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((4, 2, 3, 3)), rng.integers(0, 1000, 4), np.array([0, 1, 2, 1])
    conditional = labelled_model(x, t, y)
    unconditional = labelled_model(x, t, np.full(4, 3))
    for scale in (1.0, 0.0, 4.0):
        guided = DIFFUSION.guided_model_output(model, x, t, y, scale).numpy()
        assert model.calls[-1]["batch"] == 8
        np.testing.assert_array_equal(model.calls[-1]["y"], [0, 1, 2, 1, 3, 3, 3, 3])
        np.testing.assert_allclose(guided[:, :2], unconditional[:, :2] + scale * (conditional[:, :2] - unconditional[:, :2]),
                                   rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(guided[:, 2:], conditional[:, 2:])
    np.testing.assert_allclose(DIFFUSION.guided_model_output(model, x, t, y, 1.0).numpy(), conditional, rtol=1e-12, atol=1e-14)


def test_guided_sampling_equals_sampling_the_guided_model():
    y = np.array([2, 0, 1])
    model = FakeModel(labelled_model, num_classes=3)
    DIFFUSION.p_sample_loop(model, (3, 1, 2, 2), y=y, steps=10, seed=3, cfg_scale=1.0)
    assert all(call["batch"] == 3 for call in model.calls)  # scale 1: the null batch is not run

    def guided(x, t, labels, scale=2.5):
        c, u = labelled_model(x, t, labels), labelled_model(x, t, np.full(len(labels), 3))
        return np.concatenate([u[:, :1] + scale * (c[:, :1] - u[:, :1]), c[:, 1:]], axis=1)

    for sampler in (DIFFUSION.p_sample_loop, DIFFUSION.ddim_sample_loop):
        expected = sampler(FakeModel(guided), (3, 1, 2, 2), y=y, steps=10, seed=3)
        got = sampler(FakeModel(labelled_model, num_classes=3), (3, 1, 2, 2), y=y, steps=10, seed=3, cfg_scale=2.5)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_guidance_min_t_guides_only_the_steps_at_or_above_it():
    """guidance_min_t = 500: the steps at original t ≥ 500 run the doubled batch and equal the
    guided model's, those below one plain call of the conditional model (scale 1)."""
    y, cut = np.array([2, 0, 1]), 500

    def guided_above_cut(x, t, labels, scale=2.5):
        c, u = labelled_model(x, t, labels), labelled_model(x, t, np.full(len(labels), 3))
        guided = np.concatenate([u[:, :1] + scale * (c[:, :1] - u[:, :1]), c[:, 1:]], axis=1)
        return np.where((np.asarray(t) >= cut)[:, None, None, None], guided, c)

    chain = DIFFUSION.for_sampling(10)
    model = FakeModel(labelled_model, num_classes=3)
    got = sample_loop(DIFFUSION, model, (3, 1, 2, 2), AncestralStep(), y=y, steps=10, seed=3, cfg_scale=2.5,
                      guidance_min_t=cut)
    batches = {int(call["t"][0]): call["batch"] for call in model.calls}  # the model sees original steps
    assert batches == {t: (6 if t >= cut else 3) for t in chain.timestep_map.tolist()}
    expected = sample_loop(DIFFUSION, FakeModel(guided_above_cut), (3, 1, 2, 2), AncestralStep(), y=y, steps=10,
                           seed=3)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="guidance_min_t must be zero or positive"):
        generate(DIFFUSION, model, [0, 1], steps=2, guidance_min_t=-1)


def test_posterior_variance_step_adds_beta_tilde_noise():
    """AncestralStep("posterior"): x_{t−1} = μ + √β̃_t z exactly for a given z; it equals the learned
    step of a model whose v = −1 (learned variance = β̃ for t ≥ 1); DDIM and unknown names refuse."""
    chain = DIFFUSION.respaced(space_timesteps(1000, 10))
    x = np.random.default_rng(0).standard_normal((4, 1, 2, 2))
    z = np.random.default_rng(1).standard_normal(x.shape)

    def v_minus_one(x, t, y):
        return np.concatenate([0.8 * x + 0.05, -np.ones_like(x)], axis=1)

    for i in (9, 5, 1):
        t = np.full(4, i)
        out = chain.p_mean_variance(FakeModel(linear_model), x, t)
        np.testing.assert_allclose(AncestralStep("posterior")(chain, x, t, out, lambda: z),
                                   out["mean"].data + math.sqrt(chain.posterior_variance[i]) * z, rtol=1e-13)
        out_v0 = chain.p_mean_variance(FakeModel(v_minus_one), x, t)
        np.testing.assert_allclose(AncestralStep("posterior")(chain, x, t, out_v0, lambda: z),
                                   AncestralStep()(chain, x, t, out_v0, lambda: z), rtol=1e-12)
    last = chain.p_mean_variance(FakeModel(linear_model), x, np.zeros(4, dtype=np.int64))
    np.testing.assert_array_equal(AncestralStep("posterior")(chain, x, np.zeros(4, dtype=np.int64), last, lambda: z),
                                  last["mean"].data)  # no noise at the last step
    model = FakeModel(linear_model, num_classes=3)
    model.in_channels, model.input_size = 1, 2
    with pytest.raises(ValueError, match="unknown variance 'large'; choose one of learned, posterior"):
        AncestralStep("large")
    with pytest.raises(ValueError, match="applies to the DDPM sampler only"):
        generate(DIFFUSION, model, [0, 1], sampler="ddim", steps=2, variance="posterior")
    drawn = generate(DIFFUSION, model, [0, 1], steps=4, seed=2, variance="posterior")
    np.testing.assert_array_equal(drawn, sample_loop(DIFFUSION, model, (2, 1, 2, 2), AncestralStep("posterior"),
                                                     y=[0, 1], steps=4, rng=np.random.default_rng([2, 0])))


# ---------------------------------------------------------------------------------------------
# fixed variance, clipping and errors
# ---------------------------------------------------------------------------------------------
def test_training_losses_in_float32_keep_the_data_dtype():
    rng = np.random.default_rng(1)
    x0 = quantised_images(rng, (3, 1, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 5, 999])
    terms = DIFFUSION.training_losses(FakeModel(linear_model), Tensor(x0), t, noise=noise)
    assert terms["mse"].dtype == terms["vb"].dtype == np.float32 and terms["loss"].numpy().dtype == np.float32
    eps_hat = linear_model(DIFFUSION.q_sample(x0, t, noise), t, None)[:, :1]
    np.testing.assert_allclose(terms["mse"], ((eps_hat - noise) ** 2).mean(axis=(1, 2, 3)), rtol=2e-6)


def test_fixed_variance_and_plain_mse_loss():
    d = GaussianDiffusion(learn_sigma=False, loss="mse")
    rng = np.random.default_rng(0)
    x0, noise = rng.uniform(-1, 1, (3, 1, 2, 2)), rng.standard_normal((3, 1, 2, 2))
    t = np.array([0, 1, 999])
    eps_hat = Tensor(noise + 0.1, requires_grad=True)
    terms = d.training_losses(lambda x, t, y: eps_hat, Tensor(x0), t, noise=noise)
    assert "vb" not in terms and terms["loss"].item() == pytest.approx(0.01, rel=1e-12)
    out = d.p_mean_variance(FakeModel(lambda x, t, y: 0 * x), x0, t)
    np.testing.assert_allclose(out["variance"].numpy().ravel(), [d.posterior_variance[1], d.betas[1], d.betas[999]], rtol=1e-12)
    small = GaussianDiffusion(learn_sigma=False, fixed_variance="small").p_mean_variance(FakeModel(lambda x, t, y: 0 * x), x0, t)
    np.testing.assert_allclose(small["log_variance"].numpy().ravel(), d.posterior_log_variance_clipped[t], rtol=1e-12)


def test_clip_denoised_clips_the_predicted_image():
    x = np.full((1, 1, 2, 2), 3.0)
    out = DIFFUSION.p_mean_variance(FakeModel(linear_model), x, np.array([999]), clip_denoised=True)
    assert out["pred_x0"].numpy().max() == 1.0
    free = DIFFUSION.p_mean_variance(FakeModel(linear_model), x, np.array([999]))
    assert free["pred_x0"].numpy().max() > 1.0


def test_bad_inputs_give_clear_errors():
    x = np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match="learn_sigma"):
        DIFFUSION.training_losses(lambda x, t, y: x, Tensor(x), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        DIFFUSION.q_sample(x, np.array([0, 1000]), x)
    with pytest.raises(ValueError, match="one step per sample"):
        DIFFUSION.q_sample(x, np.array([0, 1, 2]), x)
    with pytest.raises(TypeError, match="integer"):
        DIFFUSION.q_sample(x, np.array([0.5, 1.0]), x)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        GaussianDiffusion(learn_sigma=False, loss="hybrid")
    with pytest.raises(ValueError, match="beta_schedule"):
        GaussianDiffusion(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="num_classes"):
        DIFFUSION.p_sample_loop(FakeModel(labelled_model), (2, 1, 2, 2), y=[0, 1], steps=2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="labels"):
        DIFFUSION.p_sample_loop(FakeModel(labelled_model, num_classes=3), (2, 1, 2, 2), steps=2, cfg_scale=2.0)


def test_truncated_snr_weights_are_the_x0_error_weight_capped():
    d = GaussianDiffusion(mse_weighting="truncated-snr", max_mse_weight=10.0)
    t = np.arange(1000)
    weights = d.mse_weights(t)
    snr = d.alphas_cumprod / (1 - d.alphas_cumprod)
    # by the definition, step by step: 1 while SNR >= 1, then 1/SNR, then the cap
    for step in (0, 50, 150, 250, 300, 450, 600, 999):
        expected = 1.0 if snr[step] >= 1 else min(1 / snr[step], 10.0)
        assert weights[step] == pytest.approx(expected, rel=1e-12), step
    assert np.all(np.diff(weights) >= 0) and weights[0] == 1 and weights[-1] == 10
    assert 200 < int(np.argmax(weights > 1)) < 300  # SNR crosses 1 near t = 250 for the linear schedule
    np.testing.assert_array_equal(DIFFUSION.mse_weights(t), np.ones(1000))


def test_min_snr_weights_are_gamma_over_snr_capped_at_one():
    d = GaussianDiffusion(mse_weighting="min-snr")
    weights = d.mse_weights(np.arange(1000))
    snr = d.alphas_cumprod / (1 - d.alphas_cumprod)
    for step in (0, 10, 50, 100, 150, 300, 999):  # min(SNR, 5)/SNR, step by step
        assert weights[step] == pytest.approx(min(snr[step], 5.0) / snr[step], rel=1e-12), step
    assert np.all(np.diff(weights) >= 0) and weights[0] < 1e-3 and weights[-1] == 1
    assert 0 < int(np.argmax(weights == 1)) < 250  # SNR falls below γ = 5 before SNR = 1 (t ≈ 250)


def test_weighted_training_loss_and_its_gradient():
    """loss = mean_n(λ_{t_n} MSE_n + vb_n); ε̂ gets λ_n times the uniform gradient, v the same one."""
    rng = np.random.default_rng(4)
    shape = (4, 1, 3, 3)
    x0, noise = quantised_images(rng, shape), rng.standard_normal(shape)
    t = np.array([0, 260, 450, 999])
    eps_data, v_data = noise + rng.normal(0, 0.3, shape), rng.uniform(-1, 1, shape)
    results = {}
    for name, diffusion in (("uniform", DIFFUSION), ("weighted", GaussianDiffusion(mse_weighting="truncated-snr",
                                                                                   max_mse_weight=7.0))):
        eps_hat, v = Tensor(eps_data, requires_grad=True), Tensor(v_data, requires_grad=True)
        terms = diffusion.training_losses(lambda x, t, y: F.concat([eps_hat, v], axis=1), Tensor(x0), t, noise=noise)
        terms["loss"].backward()
        results[name] = (terms, eps_hat.grad, v.grad)
    terms, eps_grad, v_grad = results["weighted"]
    snr = DIFFUSION.alphas_cumprod[t] / (1 - DIFFUSION.alphas_cumprod[t])
    lam = np.clip(1 / snr, 1, 7.0)
    assert lam[0] == 1 and lam[-1] == 7 and 1 < lam[1] < 7
    assert terms["loss"].item() == pytest.approx(np.mean(lam * terms["mse"] + terms["vb"]), rel=1e-12)
    np.testing.assert_allclose(terms["mse"], results["uniform"][0]["mse"], rtol=1e-12)  # logged unweighted
    np.testing.assert_allclose(eps_grad, lam[:, None, None, None] * results["uniform"][1], rtol=1e-12)
    np.testing.assert_allclose(v_grad, results["uniform"][2], rtol=1e-12)


def test_mse_weighting_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown mse_weighting 'snr'; choose one of uniform, truncated-snr, min-snr"):
        GaussianDiffusion(mse_weighting="snr")
    with pytest.raises(ValueError, match="max_mse_weight must be at least 1"):
        GaussianDiffusion(mse_weighting="truncated-snr", max_mse_weight=0.5)


def test_generate_in_workers_gives_the_images_of_one_process():
    """Batch b draws from default_rng([seed, b]) whoever computes it: 2 or 3 workers, one process and
    ``generate`` give the same bits; the report sees every image once, in the end all of them."""
    model = sdit_from_preset("tiny", seed=3)
    labels = np.arange(7) % 10
    options = dict(steps=2, seed=4, batch_size=3, cfg_scale=2.0, clip_denoised=True)
    expected = generate(DIFFUSION, model, labels, **options)
    for workers in (1, 2, 3):
        seen = []
        images = generate_in_workers(DIFFUSION, model, labels, workers=workers,
                                     report=lambda done, total, seconds: seen.append((done, total)), **options)
        np.testing.assert_array_equal(images, expected)
        assert seen[-1] == (7, 7) and len(seen) == 3 and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_failing_sampling_worker_is_reported_in_one_line():
    model = sdit_from_preset("tiny", seed=3)
    with pytest.raises(RuntimeError, match=r"a sampling worker failed: ValueError: unknown sampler 'nope'"):
        generate_in_workers(DIFFUSION, model, np.arange(4), workers=2, batch_size=2, steps=2, sampler="nope")
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        generate_in_workers(DIFFUSION, model, np.arange(4), workers=0)
