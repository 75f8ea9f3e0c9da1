"""Federated partitions of the training pixels: who holds which pixels and which modalities.

Layouts:
- ``modality_split`` (FedDiff): the training pixels are cut into G spatially contiguous sites
  (strips along the longer image axis, equal pixel counts); in each site one client holds the HSI
  and another the LiDAR of the same pixels — 2G clients, client 2g = HSI of site g, 2g+1 = LiDAR.
- ``horizontal`` (FedCMI and the baselines): N clients share the training pixels by ``iid``,
  per-class ``dirichlet`` (α) label skew or ``spatial`` blocks; a ``multimodal_ratio`` of them hold
  both modalities, the rest are split half HSI-only, half LiDAR-only (assignment seeded).

Every function takes an explicit seed; the same seed gives the same assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrs.errors import InputError

MODALITIES = ("hsi", "lidar")
LAYOUTS = ("modality_split", "horizontal")
SCHEMES = ("iid", "dirichlet", "spatial")


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


def modality_split(rows: np.ndarray, cols: np.ndarray, grid_shape: tuple[int, int], num_sites: int,
                   min_samples: int = 1) -> list[ClientSpec]:
    if num_sites < 1:
        raise InputError(f"partition.num_sites is {num_sites}; expected at least 1")
    if num_sites > rows.size:
        raise InputError(
            f"partition.num_sites is {num_sites} but there are only {rows.size} training pixels; "
            "expected at most one site per pixel"
        )
    # along the longer axis: strips then stay compact blocks
    coord = cols if grid_shape[1] >= grid_shape[0] else rows
    site = _strips(coord.astype(np.float64) + 1e-6 * rows, num_sites)
    clients = []
    for g in range(num_sites):
        idx = np.flatnonzero(site == g)
        if idx.size < min_samples:
            raise InputError(
                f"site {g} of {num_sites} holds {idx.size} training pixels; expected at least "
                f"{min_samples} (partition.min_samples_per_client) — use fewer sites"
            )
        clients.append(ClientSpec(2 * g, idx, ("hsi",), g))
        clients.append(ClientSpec(2 * g + 1, idx, ("lidar",), g))
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
        return modality_split(rows, cols, grid_shape, int(params.get("num_sites", 2)), min_samples)
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


def client_bundle(patch_set: dict[str, Any], client: ClientSpec) -> dict[str, Any]:
    """What one client may hold: its pixels' patches of its own modalities, labels and coordinates."""
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
    return bundle


def partition_manifest(
    clients: list[ClientSpec], labels: np.ndarray, num_classes: int, params: dict[str, Any]
) -> dict[str, Any]:
    return {
        "layout": params.get("layout"),
        "params": dict(params),
        "num_clients": len(clients),
        "num_classes": num_classes,
        "clients": [
            {
                "client_id": c.client_id,
                "partition": f"client_{c.client_id:03d}",
                "modalities": list(c.modalities),
                "site": c.site,
                "num_samples": int(c.indices.size),
                "class_counts": np.bincount(labels[c.indices], minlength=num_classes).tolist(),
            }
            for c in clients
        ],
    }
