"""Losses and scores on logits: softmax cross-entropy (the training loss) and accuracy."""

import numpy as np


def check_labels(labels, batch, classes):
    """labels as an integer array of shape (batch,) with values in [0, classes); ValueError if not."""
    labels = np.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels must be ({batch},) to match the logits, got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes - 1}], got {labels.min()}..{labels.max()}")
    return labels


def _check_labels(logits, labels):
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {list(logits.shape)}")
    return logits, check_labels(labels, logits.shape[0], logits.shape[1])


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
    loss_sum, dlogits = softmax_cross_entropy_sum(logits, labels, batch)
    return loss_sum / batch, dlogits


def softmax_cross_entropy_sum(logits, labels, batch):
    """For some rows of a batch of `batch` rows: the summed cross-entropy of these rows (a
    Python float, float64) and their part of the mean loss's gradient (divided by `batch`).
    Rows are independent, so the parts of a batch give exactly the whole batch's gradient."""
    rows = np.arange(logits.shape[0])
    shifted = logits - logits.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sums)
    loss_sum = -float(np.sum(log_probs[rows, labels], dtype=np.float64))
    dlogits = exps / sums
    dlogits[rows, labels] -= 1
    dlogits /= batch
    return loss_sum, dlogits.astype(logits.dtype, copy=False)


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the label."""
    logits, labels = _check_labels(logits, labels)
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if labels.size else 0.0
