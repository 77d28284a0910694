"""Losses of dlcpu.nn.

Design: a loss is a plain function of the logits and the labels that returns (loss, dlogits),
the gradient the model's backward starts from; it computes in float64 so that the mean over a
batch does not lose the small terms, and hands back a float32 gradient.
"""
import numpy as np


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dlogits).
    logits: real (N, classes); labels: integer (N,) class indices in [0, classes)."""
    fn = "softmax_cross_entropy"
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
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1.0
    return float(loss), (grad / n).astype(np.float32)
