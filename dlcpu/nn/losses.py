"""Losses of dlcpu.nn.

Design: a loss is a plain function of the logits and the labels that returns (loss, dlogits),
the gradient the model's backward starts from; it computes in float64 so that the mean over a
batch does not lose the small terms, and hands back a float32 gradient.

Besides the softmax, the cross-entropy takes the alternatives of "Exploring Alternatives to
Softmax Function" (Banerjee et al., DeLTA 2021), chosen by a kind string (`parse_loss_kind`):

    softmax           p_i = e^{z_i} / sum_j e^{z_j}
    taylor:n          p_i = f_n(z_i) / sum_j f_n(z_j), f_n(z) = sum_{k<=n} z^k/k!, n even in 2..10
    sm-softmax:m      soft-margin softmax: the target logit enters as z_y - m (numerator and sum)
    sm-taylor:n:m     both: f_n with the target logit z_y - m

The loss is the batch mean of -log p_y.  For the Taylor kinds the gradient is either the exact
one ("exact": f_n' = f_{n-1}, the paper's "finite" series) or the softmax-style p - onehot
("softmax": f_n treated as exp, the paper's "infinite" series), p with the margin applied.
Taylor softmax is not shift-invariant, so its logits are used as they are (no max subtracted);
f_n of an even order is positive everywhere (its minimum is z^n/n! at a root of f_{n-1}), so p
is always defined.
"""
import numpy as np

from ..approx.kinds import TAYLOR_ORDERS, LossKind, parse_loss_kind, taylor_terms  # noqa: F401  (re-exported)

#: the values of `gradient`
GRADIENTS = ("exact", "softmax")


def check_gradient(gradient, fn="softmax_cross_entropy"):
    """`gradient` is 'exact' or 'softmax' (ValueError naming both otherwise)."""
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"{fn}: gradient must be 'exact' (the derivative of the loss) or 'softmax' (p - onehot, "
                         f"the Taylor series treated as exp), got {gradient!r}")
    return gradient


def softmax_cross_entropy(logits, labels, kind="softmax", gradient="exact"):
    """Mean cross-entropy -log p_y of integer labels under p = the `kind` of softmax of the
    logits (see the module docstring and parse_loss_kind); returns (loss, dlogits float32).
    logits: real (N, classes); labels: integer (N,) class indices in [0, classes).
    gradient: 'exact' (the loss's derivative) or 'softmax' (p - onehot, the paper's "infinite"
    Taylor series); for the exp kinds the two are the same.  NaN or infinite logits give a NaN or
    infinite loss (what a training loop checks for), never an error; an empty batch gives a NaN
    loss and an empty gradient."""
    fn = "softmax_cross_entropy"
    try:
        spec = parse_loss_kind(kind)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: {exc}") from None
    check_gradient(gradient, fn)
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.dtype.kind not in "fiu":
        raise TypeError(f"{fn}: logits must be a real-valued array, got dtype {logits.dtype} with shape {logits.shape}")
    if labels.dtype.kind not in "iu" and not (labels.size == 0 and labels.dtype.kind == "f"):  # [] is float64
        raise TypeError(f"{fn}: labels must be an integer array of class indices, got dtype {labels.dtype} "
                        f"with shape {labels.shape}")
    logits = logits.astype(np.float64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"{fn}: logits must be (N, classes) and labels (N,), got {logits.shape} and {labels.shape}")
    if logits.shape[1] < 1:
        raise ValueError(f"{fn}: logits must have at least one class, got shape {logits.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"{fn}: labels must lie in [0, {logits.shape[1]}) for logits of shape {logits.shape}, "
                         f"got labels from {labels.min()} to {labels.max()}")
    n = logits.shape[0]
    if n == 0:  # the mean of nothing
        return float("nan"), np.zeros(logits.shape, np.float32)
    rows = np.arange(n)
    labels = labels.astype(np.intp)
    z = logits
    if spec.margin:
        z = z.copy()
        z[rows, labels] -= spec.margin
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # NaN/inf logits -> a NaN/inf loss
        if not spec.taylor:
            shifted = z - z.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss = -logp[rows, labels].mean()
            grad = np.exp(logp)
            grad[rows, labels] -= 1.0
        else:
            f, f_prev = taylor_terms(z, spec.order)
            total = f.sum(axis=1, keepdims=True)
            f_y = f[rows, labels]
            loss = (np.log(total[:, 0]) - np.log(f_y)).mean()
            if gradient == "softmax":
                grad = f / total
                grad[rows, labels] -= 1.0
            else:
                grad = f_prev / total
                grad[rows, labels] -= f_prev[rows, labels] / f_y
    return float(loss), (grad / n).astype(np.float32)


def predict_classes(logits, kind="softmax"):
    """The class of highest probability under the softmax kind `kind` for each row of the logits
    (N, classes).  Exp kinds: the logits' argmax.  Taylor kinds: the argmax of f_n(z), which
    differs from the logits' argmax whenever a very negative logit climbs back up f_n's far
    branch.  A margin only shapes training and does not enter."""
    fn = "predict_classes"
    try:
        spec = parse_loss_kind(kind)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: {exc}") from None
    logits = np.asarray(logits)
    if logits.dtype.kind not in "fiu":
        raise TypeError(f"{fn}: logits must be a real-valued array, got dtype {logits.dtype} with shape {logits.shape}")
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"{fn}: logits must be (N, classes) with at least one class, got shape {logits.shape}")
    if not spec.taylor:
        return logits.argmax(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        return taylor_terms(logits, spec.order)[0].argmax(axis=1)
