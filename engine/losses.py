"""Losses and scores on logits: softmax cross-entropy (the training loss) and accuracy."""

import numpy as np


def _check_labels(logits, labels):
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {list(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},) to match the logits, got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}], got {labels.min()}..{labels.max()}")
    return logits, labels


def softmax(logits):
    """Row-wise softmax of (N, classes) logits, shifted by the row maximum so exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Returns (loss as a Python float, dlogits with the dtype of logits). Computed with
    log-sum-exp, so very large or very small logits give finite values.
    """
    logits, labels = _check_labels(logits, labels)
    batch = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sums)
    rows = np.arange(batch)
    loss = -float(np.mean(log_probs[rows, labels], dtype=np.float64))
    dlogits = exps / sums
    dlogits[rows, labels] -= 1
    dlogits /= batch
    return loss, dlogits.astype(logits.dtype, copy=False)


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the label."""
    logits, labels = _check_labels(logits, labels)
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if labels.size else 0.0
