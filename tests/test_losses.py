"""dlcpu.nn's cross-entropy losses: softmax, Taylor softmax, soft-margin softmax and SM-Taylor
softmax (papers.md section 2), their exact and softmax-style gradients, the kind parser, and the
float64 twins in dlcpu._reference."""
import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
from conftest import HAVE_TORCH

from dlcpu import _reference as ref
from dlcpu import nn
from dlcpu.nn.losses import taylor_terms

ORDERS = (2, 4, 6, 8, 10)
KINDS = ["softmax", *(f"taylor:{n}" for n in ORDERS), "sm-softmax:0.5", "sm-taylor:2:0.3", "sm-taylor:4:0.6",
         "sm-taylor:10:1.5"]


def central_differences(f, z, h=1e-6):
    """d f / d z of a scalar function of a float64 array, element by element."""
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (f(zp) - f(zm)) / (2 * h)
    return fd


def _batch(seed=0, n=5, classes=7, scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, classes)) * scale, rng.integers(0, classes, n)


def _margined(z, labels, margin):
    z = np.array(z, dtype=np.float64)
    z[np.arange(len(labels)), labels] -= margin
    return z


def _probs(kind, z, labels):
    """p of every class, with the target logit shifted by the kind's margin, from the twins."""
    k = nn.parse_loss_kind(kind)
    zm = _margined(z, labels, k.margin)
    return ref.softmax(zm) if k.order is None else ref.taylor_softmax(zm, k.order)


# ------------------------------------------------------------------------ papers.md section 2.3
@pytest.mark.parametrize(("probs", "expected"), [
    (lambda z: ref.taylor_softmax(z, 2), [0.3126, 0.4954, 0.1921]),
    (lambda z: ref.taylor_softmax(z, 4), [0.2846, 0.5639, 0.1514]),
    (ref.softmax, [0.2748, 0.5817, 0.1435]),
])
def test_paper_vectors(probs, expected):
    p = probs(np.array([[1.55, 2.30, 0.90]]))
    np.testing.assert_allclose(p[0], expected, atol=6e-5)
    assert math.isclose(p.sum(), 1.0)


@pytest.mark.parametrize(("n", "minimum", "at"), [(2, 0.5, -1.0), (4, 0.270395, -1.5961), (6, 0.149325, -2.1806),
                                                  (8, 0.083272, -2.7590), (10, 0.046699, -3.3335)])
def test_minima_of_the_taylor_polynomials(n, minimum, at):
    z = np.linspace(-5.0, 0.0, 500_001)
    f, f_prev = taylor_terms(z, n)
    i = int(np.argmin(f))
    assert abs(f[i] - minimum) < 1e-6 and abs(z[i] - at) < 1e-4
    assert abs(f_prev[i]) < 1e-4   # a stationary point of f_n is a root of f_n' = f_{n-1}
    np.testing.assert_allclose(ref.taylor_exp(z[::1000], n), f[::1000], rtol=1e-13)


@pytest.mark.parametrize("n", ORDERS)
def test_even_orders_are_positive_and_odd_ones_are_not(n):
    z = np.random.default_rng(n).uniform(-50, 50, 200_000)
    f, _ = taylor_terms(z, n)
    assert f.min() > 0.046  # the n = 10 minimum, the smallest of all
    assert taylor_terms(np.array([-50.0]), n - 1)[0][0] < 0   # odd: f_{n-1}(z) -> -inf as z -> -inf
    assert taylor_terms(np.array([-3.0]), 3)[0][0] == -2.0


def test_taylor_softmax_is_not_shift_invariant():
    z, y = _batch()
    assert nn.softmax_cross_entropy(z + 3.0, y)[0] == pytest.approx(nn.softmax_cross_entropy(z, y)[0], rel=1e-12)
    assert abs(nn.softmax_cross_entropy(z + 3.0, y, "taylor:4")[0] - nn.softmax_cross_entropy(z, y, "taylor:4")[0]) > 1e-3


# ------------------------------------------------------------------------ loss values and gradients
@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_mean_negative_log_likelihood(kind):
    z, y = _batch(1)
    loss, grad = nn.softmax_cross_entropy(z, y, kind)
    p = _probs(kind, z, y)
    assert loss == pytest.approx(-np.log(p[np.arange(len(y)), y]).mean(), rel=1e-12)
    assert grad.dtype == np.float32 and grad.shape == z.shape


@pytest.mark.parametrize("kind", KINDS)
def test_exact_gradient_matches_central_differences(kind):
    z, y = _batch(2)
    _, grad = nn.softmax_cross_entropy(z, y, kind, gradient="exact")
    fd = central_differences(lambda v: nn.softmax_cross_entropy(v, y, kind)[0], z)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_softmax_style_gradient_is_p_minus_onehot(kind):
    z, y = _batch(3)
    _, grad = nn.softmax_cross_entropy(z, y, kind, gradient="softmax")
    expected = (_probs(kind, z, y) - np.eye(z.shape[1])[y]) / len(y)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)
    if nn.parse_loss_kind(kind).order is None:   # exp: both gradients are the same
        np.testing.assert_array_equal(grad, nn.softmax_cross_entropy(z, y, kind, gradient="exact")[1])


@pytest.mark.parametrize("kind", [k for k in KINDS if "taylor" in k])
@pytest.mark.parametrize("gradient", ["exact", "softmax"])
def test_loss_gradient_is_the_reference_vjp(kind, gradient):
    """dL/dp_y = -1/(N p_y), pushed through taylor_softmax_backward at the margin-shifted logits."""
    z, y = _batch(4)
    k = nn.parse_loss_kind(kind)
    zm = _margined(z, y, k.margin)
    p = ref.taylor_softmax(zm, k.order)
    dp = np.zeros_like(z)
    dp[np.arange(len(y)), y] = -1.0 / (len(y) * p[np.arange(len(y)), y])
    expected = ref.taylor_softmax_backward(dp, zm, k.order, gradient)
    _, grad = nn.softmax_cross_entropy(z, y, kind, gradient=gradient)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", ORDERS)
def test_sm_taylor_with_zero_margin_is_taylor(n):
    z, y = _batch(5)
    for gradient in ("exact", "softmax"):
        a = nn.softmax_cross_entropy(z, y, f"taylor:{n}", gradient)
        b = nn.softmax_cross_entropy(z, y, f"sm-taylor:{n}:0", gradient)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    c = nn.softmax_cross_entropy(z, y, "sm-softmax:0")
    d = nn.softmax_cross_entropy(z, y)
    assert c[0] == d[0]


def test_margin_raises_the_loss():
    z, y = _batch(6)
    assert nn.softmax_cross_entropy(z, y, "sm-taylor:4:0.5")[0] > nn.softmax_cross_entropy(z, y, "taylor:4")[0]
    assert nn.softmax_cross_entropy(z, y, "sm-softmax:0.5")[0] > nn.softmax_cross_entropy(z, y)[0]


@pytest.mark.skipif(not HAVE_TORCH, reason="needs PyTorch")
@pytest.mark.parametrize("kind", ["softmax", "sm-softmax:0.7"])
def test_softmax_kinds_match_pytorch(kind):
    import torch

    z, y = _batch(7, n=9, classes=10, scale=4.0)
    loss, grad = nn.softmax_cross_entropy(z.astype(np.float32), y, kind)
    m = nn.parse_loss_kind(kind).margin
    t = torch.tensor(z.astype(np.float32), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros_like(t)
    shift[torch.arange(len(y)), torch.tensor(y)] = m
    expected = torch.nn.functional.cross_entropy(t - shift, torch.tensor(y))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------ the reference twins
@pytest.mark.parametrize("n", ORDERS)
@pytest.mark.parametrize("gradient", ["exact", "softmax"])
def test_reference_vjp(n, gradient):
    rng = np.random.default_rng(n)
    z = rng.standard_normal((3, 6)) * 2
    w = rng.standard_normal((3, 6))
    dz = ref.taylor_softmax_backward(w, z, n, gradient)
    if gradient == "exact":  # the true derivative of sum(w * p)
        fd = central_differences(lambda v: (w * ref.taylor_softmax(v, n)).sum(), z)
        np.testing.assert_allclose(dz, fd, rtol=1e-6, atol=1e-9)
    else:  # the softmax Jacobian (diag(p) - p p^T) at p = the Taylor probabilities
        p = ref.taylor_softmax(z, n)
        expected = np.stack([(np.diag(pi) - np.outer(pi, pi)) @ wi for pi, wi in zip(p, w)])
        np.testing.assert_allclose(dz, expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="gradient must be"):
        ref.taylor_softmax_backward(w, z, n, "bogus")


# ------------------------------------------------------------------------ the kind parser
@pytest.mark.parametrize(("text", "name", "order", "margin", "canonical"), [
    ("softmax", "softmax", None, 0.0, "softmax"),
    ("taylor:4", "taylor", 4, 0.0, "taylor:4"),
    (" Taylor:10 ", "taylor", 10, 0.0, "taylor:10"),
    ("sm-softmax:0.4", "sm-softmax", None, 0.4, "sm-softmax:0.4"),
    ("sm-taylor:4:0.6", "sm-taylor", 4, 0.6, "sm-taylor:4:0.6"),
    ("sm-taylor:2:1", "sm-taylor", 2, 1.0, "sm-taylor:2:1"),
    ("sm-taylor:2:-0", "sm-taylor", 2, 0.0, "sm-taylor:2:0"),
    ("sm-softmax:0.123456789", "sm-softmax", None, 0.123456789, "sm-softmax:0.123456789"),
])
def test_parse_loss_kind(text, name, order, margin, canonical):
    k = nn.parse_loss_kind(text)
    assert (k.name, k.order, k.margin) == (name, order, margin)
    assert str(k) == canonical and nn.parse_loss_kind(str(k)) == k
    assert nn.parse_loss_kind(k) is k
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.order = 6


@pytest.mark.parametrize(("kind", "message"), [
    ("taylor:3", "order must be even, got 3: a Taylor polynomial of odd order has a real root"),
    ("sm-taylor:5:0.1", "order must be even, got 5"),
    ("taylor:12", "order must be an even integer from 2 to 10, got 12"),
    ("taylor:0", "order must be an even integer from 2 to 10, got 0"),
    ("taylor:x", "order must be an even integer from 2 to 10, got 'x'"),
    ("taylor:-2", "order must be an even integer from 2 to 10, got '-2'"),
    ("taylor:", "malformed loss kind 'taylor:': expected taylor:<n>"),
    ("taylor", "malformed loss kind 'taylor': expected taylor:<n>"),
    ("sm-taylor:4", "malformed loss kind 'sm-taylor:4': expected sm-taylor:<n>:<m>"),
    ("softmax:2", "malformed loss kind 'softmax:2': expected softmax"),
    ("sm-softmax:-0.1", "margin must be a finite number >= 0, got -0.1"),
    ("sm-softmax:nan", "margin must be a finite number >= 0, got nan"),
    ("sm-taylor:4:inf", "margin must be a finite number >= 0, got inf"),
    ("sm-taylor:4:big", "margin must be a finite number >= 0, got 'big'"),
    ("foo", "unknown loss kind 'foo': expected softmax, taylor:<n>, sm-softmax:<m> or sm-taylor:<n>:<m>"),
    ("", "unknown loss kind ''"),
])
def test_bad_loss_kinds(kind, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        nn.parse_loss_kind(kind)
    with pytest.raises(ValueError, match="^softmax_cross_entropy: .*" + re.escape(message)):
        nn.softmax_cross_entropy(np.zeros((2, 3)), [0, 1], kind)


def test_bad_kind_type_and_gradient():
    with pytest.raises(TypeError, match="loss kind must be a string"):
        nn.parse_loss_kind(4)
    with pytest.raises(ValueError, match="gradient must be 'exact' .* or 'softmax' .*, got 'finite'"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), [0, 1], "taylor:2", gradient="finite")


# ------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = nn.softmax_cross_entropy(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), kind)
    assert math.isnan(loss) and grad.shape == (0, 4) and grad.dtype == np.float32


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38])
@pytest.mark.parametrize("gradient", ["exact", "softmax"])
def test_non_finite_logits_give_a_non_finite_loss(kind, bad, gradient):
    z, y = _batch(8)
    z = z.astype(np.float32)
    z[1, 2] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = nn.softmax_cross_entropy(z, y, kind, gradient)
    if bad == 3e38:   # a large finite logit: finite unless z^n/n! overflows float64 (n = 10)
        n = nn.parse_loss_kind(kind).order
        assert math.isfinite(loss) == (n is None or n * math.log(3e38) - math.lgamma(n + 1) < math.log(1.7e308))
    else:
        assert not math.isfinite(loss)
    assert grad.shape == z.shape and grad.dtype == np.float32


def test_predict_classes_follows_the_kind():
    # class 2's logit is far out on f_4's rising branch: f_4(-6) = 31 > f_4(3) = 16.375
    z = np.array([[3.0, -1.5, -6.0], [0.5, 2.0, -1.0]])
    np.testing.assert_array_equal(nn.predict_classes(z), [0, 1])
    np.testing.assert_array_equal(nn.predict_classes(z, "taylor:4"), [2, 1])
    np.testing.assert_array_equal(nn.predict_classes(z, "sm-taylor:4:0.6"), [2, 1])
    np.testing.assert_array_equal(nn.predict_classes(z, "sm-softmax:0.5"), [0, 1])
    with pytest.raises(ValueError, match="logits must be"):
        nn.predict_classes(np.zeros(3))
    with pytest.raises(ValueError, match="odd"):
        nn.predict_classes(z, "taylor:3")


def test_predict_classes_refuses_bad_logits():
    with pytest.raises(TypeError, match="predict_classes: logits must be a real-valued array"):
        nn.predict_classes(np.array([["a", "b"]]), "taylor:4")
    with pytest.raises(ValueError, match="predict_classes: logits must be .* at least one class"):
        nn.predict_classes(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="predict_classes: .*order must be even"):
        nn.predict_classes(np.zeros((2, 3)), "taylor:3")
