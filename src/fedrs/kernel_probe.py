"""The reproducible mode's yardstick (``probe``) and the tool that finds where two machines part
(``OpTrace``): ``bench/bench_reproducible.py`` runs both, ``tests/test_reproducible.py`` checks the
probe's strict digest against the one committed, on whatever CPU kind the suite runs."""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fedrs.reproducible import describe


def probe(steps: int = 20, width: int = 32, trace: bool = False) -> dict[str, Any]:
    """The strict mode's yardstick: a seeded U-Net (C = ``width``, 144 bands, batch 64, ``steps``
    Adam steps) and fusion-CNN (5 × ``steps`` steps) training; the losses and a digest of the final
    weights. Equal digests on two machines mean bit-identical weights. With ``trace`` every aten
    operation's output digest is recorded in order (``OpTrace``), so two machines' traces name the
    first operation whose result differs."""
    from fedrs.feddiff.diffusion import LinearSchedule, diffusion_loss
    from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
    from fedrs.models.fusion_cnn import FusionCNN, FusionSpec

    tracer = OpTrace() if trace else None
    torch.manual_seed(0)
    out: dict[str, Any] = {"mode": describe(), "machine": machine()}
    unet = DiffusionUNet(UNetSpec(in_channels=144, base_channels=width))
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 144, 8, 8, generator=g) * 2 - 1
    schedule, losses = LinearSchedule(500), []
    t0 = time.perf_counter()
    with tracer or _null():
        for _ in range(steps):
            loss = diffusion_loss(unet, schedule, x0, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    out["unet_seconds"] = time.perf_counter() - t0
    out["unet_losses"] = losses
    cnn = FusionCNN(FusionSpec(bands=144, lidar_channels=1, num_classes=15))
    opt = torch.optim.Adam(cnn.parameters(), 1e-3)
    h, lidar = torch.randn(256, 144, 7, 7, generator=g), torch.randn(256, 1, 7, 7, generator=g)
    y = torch.randint(0, 15, (256,), generator=g)
    t0 = time.perf_counter()
    with tracer or _null():
        for i in range(steps * 5):
            s = slice((i * 32) % 256, (i * 32) % 256 + 32)
            loss = F.cross_entropy(cnn(hsi=h[s], lidar=lidar[s]), y[s])
            opt.zero_grad()
            loss.backward()
            opt.step()
    out["cnn_seconds"] = time.perf_counter() - t0
    out["cnn_loss"] = float(loss.detach())
    digest = hashlib.sha256()
    for model in (unet, cnn):
        for value in model.state_dict().values():
            digest.update(value.detach().numpy().tobytes())
    out["digest"] = digest.hexdigest()[:16]
    if tracer is not None:
        out["trace"] = tracer.rows
    return out


def _null() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def machine() -> dict[str, str]:
    """The CPU this process runs on: model, vendor and the instruction sets that decide kernels."""
    info = {"model": "", "vendor": "", "isa": ""}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not info["model"]:
            info["model"] = value.strip()
        elif key == "vendor_id" and not info["vendor"]:
            info["vendor"] = value.strip()
        elif key == "flags" and not info["isa"]:
            flags = set(value.split())
            info["isa"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    return info


class OpTrace:
    """Records every aten operation run inside it with a digest of its outputs, in order:
    ``rows`` is a list of (operation, digest). Two traces of the same seeded work on two machines
    agree up to the first operation whose kernel rounds differently there."""

    def __init__(self) -> None:
        rows: list[tuple[str, str]] = []
        self.rows = rows

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                if not str(func).startswith(("profiler.", "aten.empty", "aten.new_empty")):  # no numbers yet
                    rows.append((str(func), _digest(result)))
                return result

        self._mode = _Mode()

    def __enter__(self) -> OpTrace:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def _digest(value: object) -> str:
    h = hashlib.sha256()
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach()
            if t.is_complex():
                t = torch.view_as_real(t.resolve_conj())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()[:12]


def first_difference(a: list, b: list) -> int | None:
    """Index of the first traced operation whose name or output differs; None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if list(x) != list(y):
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
