import numpy as np
import pytest

from fedrs.errors import InputError
from fedrs.partition import (
    ClientSpec,
    assign_validation,
    client_bundle,
    horizontal,
    make_partition,
    modality_mix,
    modality_split,
    partition_manifest,
    validation_count,
    validation_view,
)


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


def test_modality_split_unsplit_gives_each_site_one_client_with_both(pixels):
    rows, cols, _ = pixels
    split = modality_split(rows, cols, (40, 120), num_sites=3)
    whole = modality_split(rows, cols, (40, 120), num_sites=3, split_modalities=False)
    assert [(c.client_id, c.modalities, c.site) for c in whole] == [(g, ("hsi", "lidar"), g) for g in range(3)]
    for g, client in enumerate(whole):
        np.testing.assert_array_equal(client.indices, split[2 * g].indices)
    with pytest.raises(InputError, match="split_modalities is 'no'; expected true or false"):
        make_partition({"rows": rows, "cols": cols, "labels": rows % 3}, (40, 120),
                       {"layout": "modality_split", "split_modalities": "no"})


def test_modality_split_errors(pixels):
    rows, cols, _ = pixels
    with pytest.raises(InputError, match="only 300 training pixels"):
        modality_split(rows, cols, (40, 120), num_sites=301)
    with pytest.raises(InputError, match="site 0 of 4 holds 75 training pixels; expected at least 100"):
        modality_split(rows, cols, (40, 120), num_sites=4, min_samples=100)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "spatial", "sites"])
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


@pytest.mark.parametrize("grid", [(40, 120), (120, 40)])
def test_sites_scheme_gives_the_baselines_feddiffs_own_organisations(rng, grid):
    # the like-for-like comparison with FedDiff: the same training pixels per organisation and the same
    # validation pixels, each site one client holding both modalities instead of two holding one each
    rows, cols = rng.integers(0, grid[0], 300), rng.integers(0, grid[1], 300)
    labels = rng.integers(0, 5, 300)
    train = _patch_set(rows, cols, labels, rng)
    validation = _patch_set(rng.integers(0, grid[0], 60), rng.integers(0, grid[1], 60), rng.integers(0, 5, 60), rng)
    sites = make_partition(train, grid, {"layout": "modality_split", "num_sites": 3})
    flat = make_partition(train, grid, {"layout": "horizontal", "scheme": "sites", "num_clients": 3,
                                        "multimodal_ratio": 1.0, "seed": 9})
    assert [c.modalities for c in flat] == [("hsi", "lidar")] * 3
    for g, client in enumerate(flat):
        np.testing.assert_array_equal(client.indices, sites[2 * g].indices)
    owned_sites = assign_validation(sites, train, validation)
    owned_flat = assign_validation(flat, train, validation)
    for g, owned in enumerate(owned_flat):
        np.testing.assert_array_equal(owned, owned_sites[2 * g])
        np.testing.assert_array_equal(owned, owned_sites[2 * g + 1])
    assert sum(o.size for o in owned_flat) == 60


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


def _patch_set(rows, cols, labels, rng):
    n = len(labels)
    return {"rows": np.asarray(rows), "cols": np.asarray(cols), "labels": np.asarray(labels), "num_classes": 3,
            "class_names": list("abc"), "patch_size": 3, "hsi": rng.random((n, 4, 3, 3)),
            "lidar": rng.random((n, 1, 3, 3))}


def test_a_validation_pixel_belongs_to_the_site_nearest_in_its_class(rng):
    # two sites side by side; a class-1 strip of validation pixels lies beside site 0's class-1 pixels
    # but nearer to site 1's class-0 pixels: it goes to site 0 (its class's survey), not the nearest site
    train = _patch_set([5, 5, 5, 5], [0, 1, 10, 11], [1, 1, 0, 0], rng)
    validation = _patch_set([5, 5, 5], [3, 8, 12], [1, 1, 0], rng)
    clients = make_partition(train, (10, 20), {"layout": "modality_split", "num_sites": 2})
    owned = assign_validation(clients, train, validation)
    assert [list(o) for o in owned] == [[0, 1], [0, 1], [2], [2]]  # both holders of a site: the same pixels
    bundles = [client_bundle(train, c, validation, o) for c, o in zip(clients, owned, strict=True)]
    view = validation_view(bundles[1])
    assert view["modalities"] == ["lidar"] and "hsi" not in view and validation_count(bundles[1]) == 2
    np.testing.assert_array_equal(view["lidar"], validation["lidar"][[0, 1]])
    np.testing.assert_array_equal(view["labels"], [1, 1])
    assert view["client_id"] == 1 and view["site"] == 0 and view["num_classes"] == 3
    manifest = partition_manifest(clients, train["labels"], 3, {}, owned, validation["labels"])
    assert [c["validation_samples"] for c in manifest["clients"]] == [2, 2, 1, 1]
    assert manifest["clients"][2]["validation_class_counts"] == [1, 0, 0]


def test_only_clients_holding_every_modality_hold_validation_pixels(pixels, rng):
    rows, cols, labels = pixels
    train = _patch_set(rows, cols, labels % 3, rng)
    validation = _patch_set(rng.integers(0, 40, 50), rng.integers(0, 120, 50), rng.integers(0, 3, 50), rng)
    clients = horizontal(rows, cols, labels % 3, (40, 120), num_clients=6, scheme="dirichlet", multimodal_ratio=0.5,
                         seed=3)
    owned = assign_validation(clients, train, validation)
    multimodal = [len(c.modalities) == 2 for c in clients]
    assert sum(multimodal) == 3
    assert all(o.size == 0 for o, m in zip(owned, multimodal, strict=True) if not m)
    assert sorted(np.concatenate(owned).tolist()) == list(range(50))  # each validation pixel exactly once
    for client, o in zip(clients, owned, strict=True):  # every pixel's class is one its owner holds, if any does
        held = set(train["labels"][client.indices].tolist())
        assert all(validation["labels"][i] in held for i in o)
    none = [ClientSpec(i, c.indices, ("hsi",) if i % 2 else ("lidar",)) for i, c in enumerate(clients)]
    assert all(o.size == 0 for o in assign_validation(none, train, validation))
    # a federation of one modality: every client scores a model of that modality
    hsi = [ClientSpec(i, c.indices, ("hsi",)) for i, c in enumerate(clients)]
    assert sum(o.size for o in assign_validation(hsi, train, validation)) == 50
    with pytest.raises(ValueError, match="holds no validation pixels"):
        validation_view(client_bundle(train, none[0], validation, np.zeros(0, dtype=np.int64)))
