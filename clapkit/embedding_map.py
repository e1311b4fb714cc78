"""The notebook's embedding map: PCA and a small exact t-SNE in numpy, deterministic (no sklearn at run time)."""

from __future__ import annotations

import numpy as np

__all__ = ["pca", "tsne"]


def pca(x: np.ndarray, k: int = 2) -> np.ndarray:
    """Projection of the centred rows of ``x`` on their ``k`` principal axes (signs fixed: largest |loading| > 0)."""
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    vt = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
    return xc @ vt.T


def _affinities(x: np.ndarray, perplexity: float) -> np.ndarray:
    """Symmetric t-SNE input affinities: per point, a Gaussian whose width gives the wanted perplexity."""
    n = len(x)
    d = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d[i], i)
        for _ in range(64):  # bisection on the precision beta
            w = np.exp(-(di - di.min()) * beta)
            pi = w / w.sum()
            entropy = -np.sum(pi * np.log(np.maximum(pi, 1e-300)))
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = pi
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x: np.ndarray, perplexity: float = 20.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of a few hundred points: PCA start, early exaggeration, momentum.

    Deterministic: the start is the PCA projection (scaled), the seed only adds a tiny fixed jitter.
    """
    n = len(x)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = min(perplexity, (n - 1) / 3)
    p = _affinities(x.astype(np.float64), perplexity)
    y = pca(x.astype(np.float64), 2)
    y = y / (np.std(y[:, 0]) or 1.0) * 1e-2 + np.random.default_rng(seed).normal(0, 1e-6, (n, 2))
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    learning_rate = max(n / 12.0 / 4.0, 50.0)  # sklearn's "auto" rate: a fixed 200 oscillates on small sets
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        momentum = 0.5 if it < 100 else 0.8
        num = 1.0 / (1.0 + np.square(y[:, None, :] - y[None, :, :]).sum(-1))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4.0 * (np.diag(pq.sum(1)) - pq) @ y
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - learning_rate * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y
