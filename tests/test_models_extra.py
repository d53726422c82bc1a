"""The residual CNN, the character transformer and random-crop augmentation."""

from __future__ import annotations

import pytest
import torch

from nsf_lab.experiment.augment import random_crop
from nsf_lab.experiment.charlm import CharTransformer
from nsf_lab.experiment.resnet import resnet


def test_resnet_shapes_and_residual_stages():
    torch.manual_seed(0)
    model = resnet((1, 28, 28), 10, widths=(8, 16, 32), blocks=2)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert len(model.stages) == 6  # 3 widths x 2 blocks
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 1 + 6 * 2 + 2  # stem, two per block, two strided shortcuts
    half = resnet((1, 28, 28), 10, widths=(8, 16, 32), stem_stride=2)
    assert half.stem(torch.randn(2, 1, 28, 28)).shape == (2, 8, 14, 14)
    assert half(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError):
        resnet((1, 28, 28), 10, blocks=0)


def test_charlm_shapes_and_context_limit():
    torch.manual_seed(0)
    model = CharTransformer(vocab=30, d_model=32, n_layers=2, n_heads=4, context=16)
    assert model(torch.randint(0, 30, (3, 16))).shape == (3, 16, 30)
    assert model(torch.randint(0, 30, (3, 5))).shape == (3, 5, 30)
    with pytest.raises(ValueError, match="context"):
        model(torch.randint(0, 30, (1, 17)))
    with pytest.raises(ValueError, match="multiple"):
        CharTransformer(vocab=30, d_model=30, n_heads=4)


def test_charlm_is_causal():
    torch.manual_seed(0)
    model = CharTransformer(vocab=20, d_model=32, n_layers=2, n_heads=2, context=12).double().eval()
    idx = torch.randint(0, 20, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 20
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])  # earlier positions do not see token 7
    assert not torch.allclose(a[:, 7:], b[:, 7:])  # later ones do


def test_random_crop_is_seeded_and_only_shifts_content():
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 3:9, 3:9] = torch.rand(16, 1, 6, 6) + 1  # content with a background border of 3 >= pad
    out1 = random_crop(x, 2, generator=torch.Generator().manual_seed(7))
    out2 = random_crop(x, 2, generator=torch.Generator().manual_seed(7))
    out3 = random_crop(x, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    shifts = set()
    for src, dst in zip(x, out1):  # each output is its input rolled by one (dy, dx) with |dy|, |dx| <= 2
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(src, (dy, dx), dims=(1, 2)), dst)]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 3  # per-sample offsets, not one per batch
    assert torch.equal(random_crop(x, 0, generator=torch.Generator()), x)


def test_random_crop_flip_is_off_by_default_and_mirrors_when_on():
    x = torch.rand(64, 1, 6, 6)
    assert torch.equal(random_crop(x, 0, generator=torch.Generator().manual_seed(0)), x)
    out = random_crop(x, 0, generator=torch.Generator().manual_seed(0), flip=True)
    mirrored = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    assert all(m or torch.equal(o, s) for m, o, s in zip(mirrored, out, x))
    assert 10 < sum(mirrored) < 54
    with pytest.raises(ValueError):
        random_crop(x[0], 2, generator=torch.Generator())


def test_a_few_steps_reduce_the_loss_on_tiny_data():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (32,))
    images = torch.randn(10, 1, 28, 28)[labels] + 0.3 * torch.randn(32, 1, 28, 28)  # one noisy template per class
    cnn = resnet((1, 28, 28), 10, widths=(8, 16, 16))
    text = torch.randint(0, 16, (8, 33))
    lm = CharTransformer(vocab=16, d_model=32, n_layers=2, n_heads=2, context=32)
    cases = [(cnn, lambda: torch.nn.functional.cross_entropy(cnn(random_crop(images, 2, generator=gen)), labels)),
             (lm, lambda: torch.nn.functional.cross_entropy(lm(text[:, :-1]).reshape(-1, 16), text[:, 1:].reshape(-1)))]
    for model, loss_fn in cases:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(25):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], type(model).__name__
