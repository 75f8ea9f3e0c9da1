"""Federated partitions of the training pixels: who holds which pixels and which modalities.

Layouts:
- ``modality_split`` (FedDiff): the training pixels are cut into G spatially contiguous sites
  (strips along the longer image axis, equal pixel counts); in each site one client holds the HSI
  and another the LiDAR of the same pixels — 2G clients, client 2g = HSI of site g, 2g+1 = LiDAR.
- ``horizontal`` (FedCMI and the baselines): N clients share the training pixels by ``iid``,
  per-class ``dirichlet`` (α) label skew, ``spatial`` blocks or ``sites`` — FedDiff's G = N sites
  themselves, so that a baseline can be compared with FedDiff on the same pixels per organisation; a
  ``multimodal_ratio`` of them hold both modalities, the rest are split half HSI-only, half
  LiDAR-only (assignment seeded).

Every function takes an explicit seed; the same seed gives the same assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from fedrs.errors import InputError

MODALITIES = ("hsi", "lidar")
LAYOUTS = ("modality_split", "horizontal")
SCHEMES = ("iid", "dirichlet", "spatial", "sites")


@dataclass(frozen=True)
class ClientSpec:
    client_id: int
    indices: np.ndarray  # rows of the training patch set
    modalities: tuple[str, ...]
    site: int | None = None


def _strips(coord: np.ndarray, parts: int) -> np.ndarray:
    """Assign each pixel to one of ``parts`` contiguous strips holding equal pixel counts."""
    order = np.argsort(coord, kind="stable")
    strip = np.empty(coord.size, dtype=np.int64)
    for part, chunk in enumerate(np.array_split(order, parts)):
        strip[chunk] = part
    return strip


def site_pixels(rows: np.ndarray, cols: np.ndarray, grid_shape: tuple[int, int], num_sites: int
                ) -> list[np.ndarray]:
    """FedDiff's sites, each its training pixels' indices: equal-count strips along the longer image
    axis (compact blocks there)."""
    coord = cols if grid_shape[1] >= grid_shape[0] else rows
    site = _strips(coord.astype(np.float64) + 1e-6 * rows, num_sites)
    return [np.flatnonzero(site == g) for g in range(num_sites)]


def modality_split(rows: np.ndarray, cols: np.ndarray, grid_shape: tuple[int, int], num_sites: int,
                   min_samples: int = 1, split_modalities: bool = True) -> list[ClientSpec]:
    """G sites; ``split_modalities: False`` gives each site to one client holding both modalities
    (client g = site g): FedDiff's organisations without the split, to measure what the split costs."""
    if num_sites < 1:
        raise InputError(f"partition.num_sites is {num_sites}; expected at least 1")
    if num_sites > rows.size:
        raise InputError(
            f"partition.num_sites is {num_sites} but there are only {rows.size} training pixels; "
            "expected at most one site per pixel"
        )
    clients = []
    for g, idx in enumerate(site_pixels(rows, cols, grid_shape, num_sites)):
        if idx.size < min_samples:
            raise InputError(
                f"site {g} of {num_sites} holds {idx.size} training pixels; expected at least "
                f"{min_samples} (partition.min_samples_per_client) — use fewer sites"
            )
        if split_modalities:
            clients.append(ClientSpec(2 * g, idx, ("hsi",), g))
            clients.append(ClientSpec(2 * g + 1, idx, ("lidar",), g))
        else:
            clients.append(ClientSpec(g, idx, MODALITIES, g))
    return clients


def _dirichlet_split(labels: np.ndarray, num_clients: int, alpha: float, min_samples: int,
                     rng: np.random.Generator, max_tries: int = 200) -> list[np.ndarray]:
    if alpha <= 0:
        raise InputError(f"partition.alpha is {alpha}; expected a positive concentration")
    for _ in range(max_tries):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for klass in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == klass))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * idx.size).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shares[client].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(p.size for p in parts) >= min_samples:
            return parts
    raise InputError(
        f"a Dirichlet(α={alpha}) split of {labels.size} pixels over {num_clients} clients left a "
        f"client with fewer than {min_samples} pixels in {max_tries} draws; raise partition.alpha, "
        "lower partition.num_clients or partition.min_samples_per_client"
    )


def _spatial_split(
    rows: np.ndarray, cols: np.ndarray, grid_shape: tuple[int, int], num_clients: int
) -> list[np.ndarray]:
    """Equal-count blocks: a grid of strips × sub-strips shaped like the scene."""
    aspect = grid_shape[1] / max(grid_shape[0], 1)
    best = min(
        (abs(math.log((num_clients // r) / r / aspect)), r) for r in range(1, num_clients + 1) if num_clients % r == 0
    )[1]
    n_row_bands, n_col_bands = best, num_clients // best
    band = _strips(rows.astype(np.float64) + 1e-6 * cols, n_row_bands)
    parts = []
    for b in range(n_row_bands):
        in_band = np.flatnonzero(band == b)
        sub = _strips(cols[in_band].astype(np.float64) + 1e-6 * rows[in_band], n_col_bands)
        parts.extend(np.sort(in_band[sub == s]) for s in range(n_col_bands))
    return parts


def modality_mix(num_clients: int, multimodal_ratio: float, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Modalities per client: ``round(ratio·N)`` multimodal, the rest half HSI-, half LiDAR-only."""
    if not 0.0 <= multimodal_ratio <= 1.0:
        raise InputError(f"partition.multimodal_ratio is {multimodal_ratio}; expected a value in [0, 1]")
    n_multi = int(round(multimodal_ratio * num_clients))
    n_uni = num_clients - n_multi
    n_hsi = (n_uni + 1) // 2 if rng.random() < 0.5 else n_uni // 2  # an odd remainder goes either way
    kinds = [MODALITIES] * n_multi + [("hsi",)] * n_hsi + [("lidar",)] * (n_uni - n_hsi)
    return [kinds[i] for i in rng.permutation(num_clients)]


def horizontal(
    rows: np.ndarray,
    cols: np.ndarray,
    labels: np.ndarray,
    grid_shape: tuple[int, int],
    *,
    num_clients: int,
    scheme: str = "dirichlet",
    alpha: float = 1.0,
    multimodal_ratio: float = 1.0,
    min_samples: int = 1,
    seed: int = 0,
) -> list[ClientSpec]:
    if scheme not in SCHEMES:
        raise InputError(f"partition.scheme is {scheme!r}; expected one of {SCHEMES}")
    if num_clients < 1:
        raise InputError(f"partition.num_clients is {num_clients}; expected at least 1")
    if num_clients * max(min_samples, 1) > labels.size:
        raise InputError(
            f"partition.num_clients is {num_clients} with at least {max(min_samples, 1)} pixels each, "
            f"but there are only {labels.size} training pixels"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = [np.sort(p) for p in np.array_split(rng.permutation(labels.size), num_clients)]
    elif scheme == "dirichlet":
        parts = _dirichlet_split(labels, num_clients, alpha, max(min_samples, 1), rng)
    elif scheme == "sites":
        parts = site_pixels(rows, cols, grid_shape, num_clients)
    else:
        parts = _spatial_split(rows, cols, grid_shape, num_clients)
    for client, part in enumerate(parts):
        if part.size < max(min_samples, 1):
            raise InputError(
                f"client {client} would hold {part.size} training pixels under the {scheme} scheme; "
                f"expected at least {max(min_samples, 1)}"
            )
    kinds = modality_mix(num_clients, multimodal_ratio, rng)
    return [ClientSpec(i, part, kinds[i]) for i, part in enumerate(parts)]


def make_partition(patch_set: dict[str, Any], grid_shape: tuple[int, int], params: dict[str, Any]) -> list[ClientSpec]:
    """Dispatch on ``params['layout']`` over a training patch set's coordinates and labels."""
    layout = params.get("layout")
    if layout not in LAYOUTS:
        raise InputError(f"partition.layout is {layout!r}; expected one of {LAYOUTS}")
    rows, cols, labels = patch_set["rows"], patch_set["cols"], patch_set["labels"]
    min_samples = int(params.get("min_samples_per_client", 1))
    if layout == "modality_split":
        split = params.get("split_modalities", True)
        if not isinstance(split, bool):
            raise InputError(f"partition.split_modalities is {split!r}; expected true or false")
        return modality_split(rows, cols, grid_shape, int(params.get("num_sites", 2)), min_samples, split)
    return horizontal(
        rows,
        cols,
        labels,
        grid_shape,
        num_clients=int(params.get("num_clients", 8)),
        scheme=params.get("scheme", "dirichlet"),
        alpha=float(params.get("alpha", 1.0)),
        multimodal_ratio=float(params.get("multimodal_ratio", 1.0)),
        min_samples=min_samples,
        seed=int(params.get("seed", 0)),
    )


VALIDATION_PREFIX = "validation_"
PIXEL_KEYS = ("labels", "rows", "cols", "indices")


def assign_validation(clients: list[ClientSpec], train_set: dict[str, Any], validation_set: dict[str, Any]
                      ) -> list[np.ndarray]:
    """Per client, the rows of the validation patch set it holds: each validation pixel belongs to the
    organisation holding the nearest training pixel of its class (of any class where none holds
    its class) — the one whose survey it was carved from, as each organisation would carve its own.

    Only clients that can score the whole model hold validation pixels: those holding every
    modality of the partition, or a site (both of its clients hold the site's pixels, each its own
    modality; FedDiff scores them with the exchange). With no such client, none holds any."""
    groups: dict[Any, list[int]] = {}
    for position, client in enumerate(clients):
        if client.site is not None:
            groups.setdefault(("site", client.site), []).append(position)
    if not groups:
        held = {m for c in clients for m in c.modalities}
        groups = {("client", i): [i] for i, c in enumerate(clients) if set(c.modalities) >= held}
    owned = [np.zeros(0, dtype=np.int64) for _ in clients]
    n_val = len(validation_set["labels"])
    if not groups or not n_val:
        return owned
    keys = sorted(groups, key=str)
    owner_rows = [clients[groups[k][0]].indices for k in keys]
    train_group = np.concatenate([np.full(r.size, g) for g, r in enumerate(owner_rows)])
    train_rows = np.concatenate(owner_rows)
    points = np.stack([train_set["rows"][train_rows], train_set["cols"][train_rows]], 1).astype(np.float64)
    train_labels = np.asarray(train_set["labels"])[train_rows]
    val_points = np.stack([validation_set["rows"], validation_set["cols"]], 1).astype(np.float64)
    val_labels = np.asarray(validation_set["labels"])
    owner = np.empty(n_val, dtype=np.int64)
    for klass in np.unique(val_labels):
        wanted = np.flatnonzero(val_labels == klass)
        pool = np.flatnonzero(train_labels == klass)
        pool = pool if pool.size else np.arange(train_labels.size)
        tree = cKDTree(points[pool])
        distance, _ = tree.query(val_points[wanted], k=1)
        # equidistant training pixels are common on a pixel grid: the first of them in training order
        # decides, whatever order the tree returns them in
        tied = tree.query_ball_point(val_points[wanted], distance + 1e-9)
        owner[wanted] = train_group[pool[[min(t) for t in tied]]]
    for g, key in enumerate(keys):
        mine = np.flatnonzero(owner == g)
        for position in groups[key]:
            owned[position] = mine
    return owned


def client_bundle(patch_set: dict[str, Any], client: ClientSpec, validation_set: dict[str, Any] | None = None,
                  validation_rows: np.ndarray | None = None) -> dict[str, Any]:
    """What one client may hold: its pixels' patches of its own modalities, labels and coordinates,
    and (``validation_rows``) those of its own validation pixels under ``validation_*`` keys."""
    bundle: dict[str, Any] = {
        "labels": patch_set["labels"][client.indices],
        "rows": patch_set["rows"][client.indices],
        "cols": patch_set["cols"][client.indices],
        "indices": client.indices.astype(np.int64),
        "client_id": client.client_id,
        "modalities": list(client.modalities),
        "site": client.site,
        "num_classes": int(patch_set["num_classes"]),
        "class_names": list(patch_set["class_names"]),
        "patch_size": int(patch_set["patch_size"]),
    }
    for modality in client.modalities:
        bundle[modality] = patch_set[modality][client.indices]
    if validation_set is not None and validation_rows is not None:
        rows = np.asarray(validation_rows, dtype=np.int64)
        bundle.update({f"{VALIDATION_PREFIX}{k}": np.asarray(validation_set[k])[rows]
                       for k in ("labels", "rows", "cols")})
        bundle[f"{VALIDATION_PREFIX}indices"] = rows
        for modality in client.modalities:
            bundle[f"{VALIDATION_PREFIX}{modality}"] = validation_set[modality][rows]
    return bundle


def validation_count(bundle: dict[str, Any]) -> int:
    return len(bundle.get(f"{VALIDATION_PREFIX}labels", ()))


def validation_view(bundle: dict[str, Any]) -> dict[str, Any]:
    """A client's validation pixels in the shape of its training bundle (what its handlers take):
    every ``validation_*`` entry under its plain name, beside what is not per pixel."""
    if not validation_count(bundle):
        raise ValueError(f"client {int(bundle['client_id'])} holds no validation pixels; its partition was made "
                         "without them (re-run the partition) or it cannot score the whole model")

    def per_pixel(key: str) -> bool:
        return key in PIXEL_KEYS or key in MODALITIES or key.endswith("_features")

    own = {k[len(VALIDATION_PREFIX):]: v for k, v in bundle.items() if k.startswith(VALIDATION_PREFIX)}
    return {**{k: v for k, v in bundle.items() if not k.startswith(VALIDATION_PREFIX) and not per_pixel(k)}, **own}


def partition_manifest(
    clients: list[ClientSpec], labels: np.ndarray, num_classes: int, params: dict[str, Any],
    validation: list[np.ndarray] | None = None, validation_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Who holds what (public within the federation): per client its modalities, site and class
    counts — of its validation pixels too, where it holds some."""
    entries = []
    for position, c in enumerate(clients):
        entry = {
            "client_id": c.client_id,
            "partition": f"client_{c.client_id:03d}",
            "modalities": list(c.modalities),
            "site": c.site,
            "num_samples": int(c.indices.size),
            "class_counts": np.bincount(labels[c.indices], minlength=num_classes).tolist(),
        }
        if validation is not None and validation_labels is not None:
            rows = validation[position]
            entry["validation_samples"] = int(rows.size)
            entry["validation_class_counts"] = np.bincount(validation_labels[rows], minlength=num_classes).tolist()
        entries.append(entry)
    return {"layout": params.get("layout"), "params": dict(params), "num_clients": len(clients),
            "num_classes": num_classes, "clients": entries}
