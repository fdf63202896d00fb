"""Attack 5, image wire leakage: what the server sees of a picture.

Attacker's knowledge: the wire tensors the server receives for an image model
(after the client split, a feature map ``[C, H, W]`` in a secret channel order).
The attack needs nothing else: the first principal component over channels
(:func:`eeonnx.audit.metrics.wire_pc1`) is a picture the server can look at.
The score (:func:`eeonnx.audit.metrics.image_wire_leakage`) correlates it with
the input's luminance, against unrelated images.

Sample images: ``--images DIR`` (PNG/JPEG, resized), or :func:`sample_images`,
procedural pictures with real structure (objects, edges, gradients, texture),
drawn from a fixed seed.
"""
from __future__ import annotations

import os

import numpy as np

from eeonnx.audit.metrics import resize, wire_pc1


def attack(wire) -> np.ndarray:
    """The picture the server reconstructs from one wire sample ``[C, H, W]``."""
    return wire_pc1(wire)


def sample_images(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """n RGB pictures ``[3, H, W]`` in [0, 1] (square sizes; others are resized):
    a sky/ground split, a sun or ball, a house-like block with a roof and windows,
    a textured field, in a random orientation."""
    rng = np.random.default_rng(seed)
    target = size
    h = w = max(size)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    out = []
    for _ in range(n):
        horizon = rng.uniform(0.4, 0.7)
        sky = np.stack([0.3 + 0.3 * y, 0.5 + 0.3 * y, 0.9 - 0.2 * y])
        ground = np.stack([0.2 + 0.1 * np.sin(20 * x + 5 * y * rng.uniform(1, 3)), 0.5 - 0.2 * y, 0.15 + 0 * y])
        img = np.where(y < horizon, sky, ground)
        cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, horizon - 0.1), rng.uniform(0.06, 0.15)
        disk = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img = np.where(disk, np.array([1.0, 0.9, 0.3]).reshape(3, 1, 1), img)
        bx, bw = rng.uniform(0.05, 0.55), rng.uniform(0.2, 0.4)
        top = horizon - rng.uniform(0.1, 0.3)
        body = (x > bx) & (x < bx + bw) & (y > top) & (y < horizon + 0.1)
        roof = (y < top) & (y > top - 0.15) & (np.abs(x - bx - bw / 2) < (y - top + 0.15) / 0.15 * bw / 2)
        colour = rng.uniform(0.2, 0.9, 3).reshape(3, 1, 1)
        img = np.where(body, colour, img)
        img = np.where(roof, np.array([0.5, 0.1, 0.1]).reshape(3, 1, 1), img)
        win = body & (((x - bx) * 10 / bw) % 3 < 1) & (((y - top) * 12) % 3 < 1)
        img = np.where(win, 0.05, img)
        # random orientation, so unrelated pictures do not share a layout
        img = np.rot90(img, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
        img = img + 0.03 * rng.standard_normal(img.shape)
        img = np.clip(img, 0, 1)
        if target != (h, w):
            img = np.stack([resize(c, target) for c in img])
        out.append(img.astype(np.float32))
    return out


def load_images(folder: str, size: tuple[int, int], limit: int = 16) -> list[np.ndarray]:
    """PNG/JPEG files of ``folder`` (sorted) as RGB ``[3, H, W]`` in [0, 1], resized."""
    import matplotlib.image as mpimg

    files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg")))[:limit]
    out = []
    for f in files:
        a = np.asarray(mpimg.imread(os.path.join(folder, f)), dtype=np.float64)
        if a.max() > 1.5:
            a = a / 255.0
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        a = a[..., :3].transpose(2, 0, 1)
        out.append(np.stack([resize(c, size) for c in a]).astype(np.float32))
    return out


def write_png(path: str, images, wires) -> None:
    """Input | what the server sees (wire PC1), one row per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(4, 2 * n), squeeze=False)
    for i, (im, w) in enumerate(zip(images, wires)):
        axes[i, 0].imshow(np.clip(np.transpose(im[:3], (1, 2, 0)), 0, 1))
        pc = attack(w)
        # the sign of a principal component is arbitrary: show it the way that matches best
        lum = im.mean(0)
        r = resize(lum, pc.shape)
        if np.corrcoef(pc.ravel(), r.ravel())[0, 1] < 0:
            pc = -pc
        axes[i, 1].imshow(pc, cmap="gray")
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_title("input (client)")
    axes[0, 1].set_title("server: wire PC1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
