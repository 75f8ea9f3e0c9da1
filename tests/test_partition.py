import numpy as np
import pytest

from fedrs.errors import InputError
from fedrs.partition import client_bundle, horizontal, make_partition, modality_mix, modality_split, partition_manifest


@pytest.fixture
def pixels(rng):
    """300 training pixels of 5 classes on a wide 40×120 grid."""
    rows = rng.integers(0, 40, 300)
    cols = rng.integers(0, 120, 300)
    labels = rng.integers(0, 5, 300)
    return rows, cols, labels


def covers_once(clients, n):
    counts = np.zeros(n, int)
    for c in clients:
        counts[c.indices] += 1
    return (counts == 1).all()


def test_modality_split_sites_are_contiguous_pairs(pixels):
    rows, cols, _ = pixels
    clients = modality_split(rows, cols, (40, 120), num_sites=3)
    assert [c.modalities for c in clients] == [("hsi",), ("lidar",)] * 3
    assert [c.site for c in clients] == [0, 0, 1, 1, 2, 2]
    hsi_holders = clients[0::2]
    assert covers_once(hsi_holders, 300)
    for a, b in zip(clients[0::2], clients[1::2], strict=False):
        np.testing.assert_array_equal(a.indices, b.indices)  # the two holders share pixel ids
    # strips along the longer axis (columns): each site lies wholly left of the next
    spans = [(cols[c.indices].min(), cols[c.indices].max()) for c in hsi_holders]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))
    assert max(len(c.indices) for c in hsi_holders) - min(len(c.indices) for c in hsi_holders) <= 1


def test_modality_split_errors(pixels):
    rows, cols, _ = pixels
    with pytest.raises(InputError, match="only 300 training pixels"):
        modality_split(rows, cols, (40, 120), num_sites=301)
    with pytest.raises(InputError, match="site 0 of 4 holds 75 training pixels; expected at least 100"):
        modality_split(rows, cols, (40, 120), num_sites=4, min_samples=100)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "spatial"])
def test_horizontal_schemes_cover_every_pixel_once(pixels, scheme):
    rows, cols, labels = pixels
    clients = horizontal(rows, cols, labels, (40, 120), num_clients=6, scheme=scheme, seed=1)
    assert len(clients) == 6 and covers_once(clients, 300)
    again = horizontal(rows, cols, labels, (40, 120), num_clients=6, scheme=scheme, seed=1)
    assert all(
        np.array_equal(a.indices, b.indices) and a.modalities == b.modalities
        for a, b in zip(clients, again, strict=False)
    )


def test_dirichlet_alpha_controls_label_skew(pixels):
    rows, cols, labels = pixels

    def mean_entropy(alpha):
        clients = horizontal(rows, cols, labels, (40, 120), num_clients=5, alpha=alpha, seed=3)
        ent = []
        for c in clients:
            p = np.bincount(labels[c.indices], minlength=5) / len(c.indices)
            ent.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return np.mean(ent)

    assert mean_entropy(0.1) < mean_entropy(100.0) - 0.5


def test_spatial_blocks_are_compact(pixels):
    rows, cols, labels = pixels
    clients = horizontal(rows, cols, labels, (40, 120), num_clients=4, scheme="spatial")
    # a wide scene gets 1 row band × 4 column bands: column ranges do not interleave
    spans = sorted((cols[c.indices].min(), cols[c.indices].max()) for c in clients)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(3))


def test_modality_mix(rng):
    kinds = modality_mix(8, 0.5, rng)
    assert kinds.count(("hsi", "lidar")) == 4 and kinds.count(("hsi",)) == 2 and kinds.count(("lidar",)) == 2
    assert modality_mix(4, 1.0, rng) == [("hsi", "lidar")] * 4
    odd = modality_mix(5, 0.0, rng)
    assert sorted([odd.count(("hsi",)), odd.count(("lidar",))]) == [2, 3]
    with pytest.raises(InputError, match=r"multimodal_ratio is 1.5; expected a value in \[0, 1\]"):
        modality_mix(4, 1.5, rng)


def test_impossible_requests(pixels):
    rows, cols, labels = pixels
    with pytest.raises(InputError, match="num_clients is 301 .* only 300 training pixels"):
        horizontal(rows, cols, labels, (40, 120), num_clients=301, scheme="iid")
    with pytest.raises(InputError, match="left a client with fewer than 55 pixels"):
        horizontal(rows, cols, labels, (40, 120), num_clients=5, alpha=0.05, min_samples=55, seed=0)
    with pytest.raises(InputError, match="expected one of"):
        horizontal(rows, cols, labels, (40, 120), num_clients=3, scheme="kmeans")
    with pytest.raises(InputError, match="partition.layout is 'vertical'"):
        make_partition({"rows": rows, "cols": cols, "labels": labels}, (40, 120), {"layout": "vertical"})


def test_client_bundle_holds_only_its_modalities(pixels, rng):
    rows, cols, labels = pixels
    patch_set = {
        "rows": rows,
        "cols": cols,
        "labels": labels,
        "num_classes": 5,
        "class_names": list("abcde"),
        "patch_size": 3,
        "hsi": rng.random((300, 4, 3, 3)),
        "lidar": rng.random((300, 1, 3, 3)),
    }
    clients = make_partition(patch_set, (40, 120), {"layout": "modality_split", "num_sites": 2})
    hsi_bundle, lidar_bundle = client_bundle(patch_set, clients[0]), client_bundle(patch_set, clients[1])
    assert "hsi" in hsi_bundle and "lidar" not in hsi_bundle
    assert "lidar" in lidar_bundle and "hsi" not in lidar_bundle
    np.testing.assert_array_equal(hsi_bundle["hsi"], patch_set["hsi"][clients[0].indices])
    manifest = partition_manifest(clients, labels, 5, {"layout": "modality_split"})
    assert [c["partition"] for c in manifest["clients"]] == ["client_000", "client_001", "client_002", "client_003"]
    assert sum(sum(c["class_counts"]) for c in manifest["clients"][0::2]) == 300
