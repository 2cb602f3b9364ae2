"""Evaluation metrics: Fréchet distance, streaming statistics, Inception Score, pooling and
cross-entropy gradients, and the shipped LeNet classifiers.

The Fréchet distance is checked against the textbook computation with scipy.linalg.sqrtm; pooling
and cross-entropy against naive loops (forward) and central differences (backward, float64).
Tests that need the real data sets skip when they are not in the cache
(``python -m minisdit.data fetch mnist`` / ``fashion-mnist``).
"""
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from hypothesis import assume, given, strategies as st

import minisdit.metrics
from minisdit import Tensor, backend
from minisdit.metrics import (FeatureStatistics, LeNet, cross_entropy, fid_from_features, frechet_distance,
                              inception_score, lenet_features, lenet_outputs, lenet_probabilities, load_lenet,
                              reference_statistics)
from minisdit.metrics.layers import avg_pool2d, max_pool2d
from minisdit.autograd.gradcheck import gradcheck

seeds = st.integers(0, 2**32 - 1)


def random_covariance(rng, dim, rank=None):
    factor = rng.standard_normal((dim, rank or dim + 2))
    return factor @ factor.T / factor.shape[1]


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    assert np.abs(np.imag(covmean)).max() < 1e-6
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------
@given(dim=st.integers(1, 12), seed=seeds)
def test_frechet_distance_matches_scipy_sqrtm(dim, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    sigma1, sigma2 = random_covariance(rng, dim), random_covariance(rng, dim)
    expected = scipy_frechet(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    assert minisdit.metrics.frechet_distance is frechet_distance


def test_frechet_distance_one_dimension_is_closed_form():
    # 1-D Gaussians: d² = (m1 − m2)² + (s1 − s2)² with s the standard deviations
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, abs=1e-12)


@given(dim=st.integers(2, 10), seed=seeds)
def test_frechet_distance_is_symmetric_and_zero_on_itself_even_when_singular(dim, seed):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(dim)
    singular = random_covariance(rng, dim, rank=1)  # rank 1: the square root must not break
    other = random_covariance(rng, dim)
    assert abs(frechet_distance(mu, singular, mu, singular)) < 1e-9 * (1 + np.trace(singular))
    forward = frechet_distance(mu, singular, mu + 1, other)
    assert forward == pytest.approx(frechet_distance(mu + 1, other, mu, singular), rel=1e-9, abs=1e-9)
    assert forward > 0


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="mu1 must be"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------------------------
# streaming feature statistics
# --------------------------------------------------------------------------------------------
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), dim=st.integers(1, 6), seed=seeds)
def test_streaming_statistics_equal_numpy_on_the_whole_set(sizes, dim, seed):
    assume(sum(sizes) >= 2)
    rng = np.random.default_rng(seed)
    # a large common offset: a raw sum of outer products would lose most digits of the covariance
    features = 1e4 + rng.standard_normal((sum(sizes), dim))
    statistics = FeatureStatistics()
    for part in np.split(features, np.cumsum(sizes)[:-1]):
        statistics.update(part)
    assert statistics.count == len(features)
    np.testing.assert_allclose(statistics.mean, features.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(statistics.covariance, np.cov(features, rowvar=False).reshape(dim, dim),
                               rtol=1e-8, atol=1e-10)


def test_statistics_restored_from_moments_keep_updating():
    rng = np.random.default_rng(0)
    first, second = rng.standard_normal((30, 4)), rng.standard_normal((20, 4)) + 2
    saved = FeatureStatistics.from_features(first)
    restored = FeatureStatistics.from_moments(saved.mean, saved.covariance, saved.count).update(second)
    both = np.concatenate([first, second])
    np.testing.assert_allclose(restored.mean, both.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(restored.covariance, np.cov(both, rowvar=False), rtol=1e-10)


def test_statistics_on_the_device(device, to_device):
    features = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    on_device = FeatureStatistics.from_features(to_device(features))
    np.testing.assert_allclose(on_device.covariance, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-10)


def test_statistics_errors():
    with pytest.raises(ValueError, match="shape \\(n, d\\)"):
        FeatureStatistics().update(np.zeros(3))
    with pytest.raises(ValueError, match="expected 3"):
        FeatureStatistics(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStatistics.from_features(np.zeros((1, 2))).covariance


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    features = np.random.default_rng(2).standard_normal((500, 8))
    assert abs(fid_from_features(features, features)) < 1e-9
    shifted = fid_from_features(features, features + 0.5)
    assert shifted == pytest.approx(8 * 0.25, rel=1e-9)  # same covariance: only ||Δμ||² remains


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------
def test_inception_score_limits_and_hand_example():
    identical = np.tile([0.2, 0.3, 0.5], (6, 1))
    assert inception_score(identical)[0] == pytest.approx(1.0, abs=1e-12)
    confident_balanced = np.eye(4)[np.arange(8) % 4]
    assert inception_score(confident_balanced)[0] == pytest.approx(4.0, rel=1e-12)
    # two samples: p1 = (1, 0), p2 = (0.5, 0.5), p(y) = (0.75, 0.25)
    # KL1 = log(1/0.75); KL2 = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25)
    kl = [np.log(4 / 3), 0.5 * np.log(2 / 3) + 0.5 * np.log(2)]
    assert inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]))[0] == pytest.approx(np.exp(np.mean(kl)), rel=1e-12)


def test_inception_score_splits():
    probabilities = np.concatenate([np.eye(2)[np.arange(4) % 2], np.tile([0.5, 0.5], (4, 1))])
    mean, std = inception_score(probabilities, splits=2)
    assert (mean, std) == (pytest.approx(1.5), pytest.approx(0.5))  # parts score 2 and 1
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.ones((3, 2)))
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.full((2, 2), 0.5), splits=3)


# --------------------------------------------------------------------------------------------
# pooling and cross-entropy: forward against loops, backward against central differences
# --------------------------------------------------------------------------------------------
def naive_pool(x, kernel, stride, padding, mode, count_include_pad=True):
    n, c, h, w = x.shape
    out_h = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    y = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            rows = [r for r in range(i * stride[0] - padding[0], i * stride[0] - padding[0] + kernel[0]) if 0 <= r < h]
            cols = [q for q in range(j * stride[1] - padding[1], j * stride[1] - padding[1] + kernel[1]) if 0 <= q < w]
            window = x[:, :, rows][:, :, :, cols]
            if mode == "max":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                divisor = kernel[0] * kernel[1] if count_include_pad else len(rows) * len(cols)
                y[:, :, i, j] = window.sum(axis=(2, 3)) / divisor
    return y


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    assume(shape[2] + 2 * padding[0] >= kernel[0] and shape[3] + 2 * padding[1] >= kernel[1])
    return shape, kernel, stride, padding


def distinct_values(rng, shape):
    """Entries at least 0.1 apart, so that no window has a tied maximum."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.2 + rng.uniform(-0.05, 0.05, size) - size * 0.1).reshape(shape)


@given(case=pool_cases(), seed=seeds)
def test_max_pool_forward_and_gradient(device, case, seed):
    shape, kernel, stride, padding = case
    x = distinct_values(np.random.default_rng(seed), shape)
    fn = lambda t: max_pool2d(t, kernel, stride, padding)  # noqa: E731
    out = fn(Tensor(backend.to_device(x, device)))
    np.testing.assert_array_equal(out.numpy(), naive_pool(x, kernel, stride, padding, "max"))
    gradcheck(fn, [backend.to_device(x, device)])


@given(case=pool_cases(), count_include_pad=st.booleans(), seed=seeds)
def test_avg_pool_forward_and_gradient(device, case, count_include_pad, seed):
    shape, kernel, stride, padding = case
    x = np.random.default_rng(seed).standard_normal(shape)
    fn = lambda t: avg_pool2d(t, kernel, stride, padding, count_include_pad=count_include_pad)  # noqa: E731
    out = fn(Tensor(backend.to_device(x, device)))
    np.testing.assert_allclose(out.numpy(), naive_pool(x, kernel, stride, padding, "avg", count_include_pad),
                               rtol=1e-12, atol=1e-12)
    gradcheck(fn, [backend.to_device(x, device)])


def test_pooling_errors():
    with pytest.raises(ValueError, match="at most half"):
        max_pool2d(Tensor(np.zeros((1, 1, 4, 4))), 2, padding=2)
    with pytest.raises(ValueError, match="\\(N, C, H, W\\)"):
        avg_pool2d(Tensor(np.zeros((4, 4))), 2)


@given(n=st.integers(1, 6), classes=st.integers(1, 5), seed=seeds)
def test_cross_entropy_forward_and_gradient(device, n, classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, classes)) * 3
    labels = rng.integers(0, classes, n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = -(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))[np.arange(n), labels].mean()
    out = cross_entropy(Tensor(backend.to_device(logits, device)), labels)
    assert out.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    gradcheck(lambda z: cross_entropy(z, labels), [backend.to_device(logits, device)])


def test_cross_entropy_survives_huge_logits():
    logits = Tensor(np.array([[1000.0, 0.0], [0.0, -1000.0]]), requires_grad=True)
    loss = cross_entropy(logits, np.array([1, 0]))
    loss.backward()
    assert loss.item() == pytest.approx(500.0)  # (1000 + 0) / 2
    assert np.all(np.isfinite(logits.grad))


# --------------------------------------------------------------------------------------------
# LeNet
# --------------------------------------------------------------------------------------------
def test_lenet_shapes_and_input_checks():
    model = LeNet()
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    assert lenet_features(images, model).shape == (3, 128)
    probabilities = lenet_probabilities(images, model)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    # samples in [−1, 1] are made uint8 first (docs/DESIGN.md §5), so they give the same features
    as_samples = images.astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(lenet_features(as_samples, model), lenet_features(images, model))
    with pytest.raises(ValueError, match="\\(N, 1, 28, 28\\)"):
        lenet_features(np.zeros((2, 3, 28, 28), np.uint8), model)


def test_lenet_outputs_on_the_device_equal_the_cpu(device):
    images = np.random.default_rng(5).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    on_cpu = lenet_outputs(images, LeNet(rng=2))
    on_device = lenet_outputs(images, LeNet(rng=2).to(device=device))
    for expected, actual in zip(on_cpu, on_device):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_conv_weight_gradient_with_a_constant_input():
    """functional.conv2d skips dL/dx when x needs no gradient (LeNet's images); dL/dW must not change."""
    from minisdit import functional as F

    rng = np.random.default_rng(6)
    x, weight, bias = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    projection = rng.standard_normal((2, 4, 7, 6))
    grads = []
    for input_needs_grad in (False, True):
        inputs = [Tensor(x, requires_grad=input_needs_grad), Tensor(weight, requires_grad=True), Tensor(bias, requires_grad=True)]
        (F.conv2d(*inputs, padding=1) * Tensor(projection)).sum().backward()
        assert (inputs[0].grad is None) == (not input_needs_grad)
        grads.append((inputs[1].grad, inputs[2].grad))
    for constant, variable in zip(*grads):
        np.testing.assert_array_equal(constant, variable)


def test_lenet_trains_through_pooling():
    """AdamW steps on one fixed batch memorise its labels: the whole backward path is wired."""
    from minisdit.metrics.lenet import images_to_input
    from minisdit.autograd.optim import AdamW

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 16)
    model = LeNet(rng=1)
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = cross_entropy(model(Tensor(images_to_input(images))), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


MINIMUM_ACCURACY = {"mnist": 0.99, "fashion-mnist": 0.90}


def _dataset_or_skip(name, split):
    from minisdit.data import DatasetNotFoundError, load_dataset

    try:
        return load_dataset(name, split)
    except DatasetNotFoundError:
        pytest.skip(f"{name} is not in the data cache; run: python -m minisdit.data fetch {name}")


@pytest.fixture(scope="module", params=["mnist", "fashion-mnist"])
def real_test_split(request):
    """The shipped LeNet's outputs on the whole real test split, computed once per data set."""
    dataset = request.param
    images, labels = _dataset_or_skip(dataset, "test")
    model = load_lenet(dataset)
    features, probabilities = lenet_outputs(images, model)
    return SimpleNamespace(dataset=dataset, model=model, images=images, labels=labels,
                           features=features, probabilities=probabilities)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_shipped_lenet_metadata(dataset):
    model = load_lenet(dataset)
    assert model.metadata["dataset"] == dataset
    assert model.metadata["test_accuracy"] >= MINIMUM_ACCURACY[dataset]
    statistics = reference_statistics(dataset)
    assert statistics.count == model.metadata["test_count"] == 10000
    assert statistics.mean.shape == (model.feature_dim,)


def test_shipped_lenet_reproduces_its_accuracy_and_statistics(real_test_split):
    run = real_test_split
    accuracy = float((run.probabilities.argmax(axis=1) == run.labels).mean())
    print(f"LeNet {run.dataset} test accuracy {accuracy:.4f}")
    assert accuracy == pytest.approx(run.model.metadata["test_accuracy"], abs=2e-4)  # float summation order only
    assert accuracy >= MINIMUM_ACCURACY[run.dataset]
    shipped = reference_statistics(run.dataset)
    recomputed = FeatureStatistics.from_features(run.features)
    np.testing.assert_allclose(recomputed.mean, shipped.mean, rtol=1e-4, atol=1e-5)
    assert frechet_distance(recomputed.mean, recomputed.covariance, shipped.mean, shipped.covariance) < 1e-3
    # the single-output helpers agree with the one-pass one (another batch size too)
    head = run.images[:7]
    np.testing.assert_allclose(lenet_probabilities(head, run.model, batch_size=3), run.probabilities[:7], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lenet_features(head, run.model, batch_size=3), run.features[:7], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_fid_lenet_orders_real_blurred_and_noise(dataset):
    images, _ = _dataset_or_skip(dataset, "train")
    model = load_lenet(dataset)
    reference = reference_statistics(dataset)
    subset = images[np.random.default_rng(0).choice(len(images), 2000, replace=False)]
    blurred = np.clip(np.rint(scipy.ndimage.gaussian_filter(subset.astype(np.float64), sigma=(0, 0, 1.2, 1.2))), 0, 255).astype(np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, subset.shape, dtype=np.uint8)

    def fid(batch):
        statistics = FeatureStatistics.from_features(lenet_features(batch, model))
        return statistics.frechet_distance(reference)

    real, blur, random = fid(subset), fid(blurred), fid(noise)
    print(f"FID_LeNet {dataset} (2000 train images vs the test split): real {real:.3f}, blurred {blur:.3f}, noise {random:.1f}")
    assert real < blur < random, (real, blur, random)


def test_classifier_inception_score_of_real_images_and_of_one_class(real_test_split):
    run, dataset = real_test_split, real_test_split.dataset
    score, _ = inception_score(run.probabilities)
    mean, std = inception_score(run.probabilities, splits=10)
    one_class, _ = inception_score(run.probabilities[run.labels == 3])
    print(f"classifier IS {dataset} test split: {score:.3f} (10 splits {mean:.3f} ± {std:.3f}); class 3 alone {one_class:.3f}")
    assert one_class < 0.25 * score  # a set of one class scores far lower than the whole split
    if dataset == "mnist":  # Fashion-MNIST's classes are less separable (dress / coat / shirt), its p(y|x) softer
        assert score >= 9.0
        assert mean >= 9.0 and std < 0.2
        assert one_class < 1.2  # ≈ 1: every p(y|x) is close to the same one-hot vector
