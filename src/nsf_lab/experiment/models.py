"""Model builders of every experiment (bench tasks, spectral instruments, demo); all fast on one CPU core."""
from __future__ import annotations

import math

import torch.nn as nn

from .charlm import CharTransformer
from .resnet import resnet


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(in_shape, n_classes, hidden=(256, 256), act: str = "relu") -> nn.Module:
    """Flatten, then Linear + activation per hidden width, then a linear read-out of ``n_classes`` outputs."""
    layers, d = [nn.Flatten()], int(math.prod(in_shape))
    for h in hidden:
        layers += [nn.Linear(d, h), ACTIVATIONS[act]()]
        d = h
    layers.append(nn.Linear(d, n_classes))
    return nn.Sequential(*layers)


def cnn1d(in_shape, n_classes, width=32) -> nn.Module:
    """1-D CNN for MNIST-1D (input (C, L))."""
    c, length = in_shape
    out_len = (length + 3) // 4
    return nn.Sequential(
        nn.Conv1d(c, width, 5, padding=2), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * out_len, n_classes))


def cnn2d(in_shape, n_classes, widths=(16, 32), hidden=128) -> nn.Module:
    """Small strided CNN for 28x28 / 32x32 images."""
    c, h, w = in_shape
    a, b = widths
    oh, ow = (h + 3) // 4, (w + 3) // 4
    return nn.Sequential(
        nn.Conv2d(c, a, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(b * oh * ow, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


class CharGRU(nn.Module):
    """Character-level language model: embedding -> GRU -> linear; returns logits (B, T, V)."""

    def __init__(self, vocab: int, emb: int = 64, hidden: int = 128, layers: int = 1):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


MODELS = {"mlp": mlp, "cnn1d": cnn1d, "cnn2d": cnn2d, "resnet": resnet}
TEXT_MODELS = {"chargru": CharGRU, "charlm": CharTransformer}  # built from the vocabulary size


def build(kind: str, in_shape, n_classes, **kw) -> nn.Module:
    """Model ``kind`` (a key of :data:`MODELS` or :data:`TEXT_MODELS`) for inputs of ``in_shape`` (ignored for
    text, where ``n_classes`` is the vocabulary size)."""
    if kind in TEXT_MODELS:
        return TEXT_MODELS[kind](n_classes, **kw)
    return MODELS[kind](tuple(in_shape), n_classes, **kw)
