import numpy as np
import torch

from fedrs.cache import cached_array, content_digest


def test_digest_follows_every_part():
    state = {"w": torch.ones(3), "b": torch.zeros(2)}
    base = content_digest(state, np.arange(4), [5, 50], 42)
    assert base == content_digest({"b": torch.zeros(2), "w": torch.ones(3)}, np.arange(4), [5, 50], 42)
    assert base != content_digest({**state, "w": torch.tensor([1.0, 1.0, 1.0001])}, np.arange(4), [5, 50], 42)
    assert base != content_digest(state, np.arange(4).astype(np.int32), [5, 50], 42)  # dtype counts
    assert base != content_digest(state, np.arange(4), [5, 51], 42)
    assert base != content_digest(state, np.arange(4), [5, 50], 43)


def test_cached_array_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.full((2, 3), 7.0, np.float32)

    first, hit1 = cached_array(tmp_path, "k", compute)
    second, hit2 = cached_array(tmp_path, "k", compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert [f.name for f in tmp_path.iterdir()] == ["k.npy"]  # no temporary left behind
    _, hit3 = cached_array(None, "k", compute)
    assert not hit3 and len(calls) == 2
