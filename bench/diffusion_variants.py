"""Which DDPM recipe makes the HSI diffusion features informative: each variant's U-Net trained
centrally on the training pixels of a finished run's patch sets (stage 1 without the federation, so
that many recipes fit in one sitting), then the linear probe of ``diffusion_probe.py`` on its
middle-block features, scored on the validation pixels (test pixels are not read).

    .venv/bin/python bench/diffusion_variants.py --project DIR --scene houston2013 --epochs 30 \
        --variants eps x0 v pca16-eps pca16-x0 wide-eps

A variant is ``[pcaK-|binK-]TARGET[-wide]``: TARGET the prediction target of the L1 loss (``eps`` — as
stage 1 — the clean patch ``x0``, or ``v`` = √ᾱ·ε − √(1−ᾱ)·x0); ``pcaK`` a band projection in front of
the U-Net onto the first K principal components of the training pixels' spectra (scaled to unit
variance of the first component; what a federation can fit from per-client covariance sums),
``binK`` the bands averaged in K contiguous groups (no statistics at all);
``wide`` twice the base channels. Each row also gives the raw probes of the same inputs, and the
held-out denoising PSNR gain at t = 10 and 50 (how much of the signal the model learned).

``--layers middle,decoder2,decoder5`` probes decoder blocks as well (``decoderN``: the N-th block's
output; for the default U-Net blocks 2–5 are at the input's 8×8, so their centre reading is a pixel's
own features); ``--untrained`` probes each U-Net before training too, which separates what diffusion
training adds from what any random convolutional map of the patch gives a linear probe.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import save
from diffusion_probe import probe
from fedrs.datasets import NpzDataset
from fedrs.feddiff.ddpm import schedule_of, unet_input
from fedrs.feddiff.diffusion import LinearSchedule
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec


def parse(variant: str) -> tuple[tuple[str, int] | None, str, bool]:
    parts = variant.split("-")
    reduce = None
    if parts[0].startswith(("pca", "bin")):
        head = parts.pop(0)
        reduce = head[:3], int(head[3:])
    wide = parts[-1] == "wide"
    if wide:
        parts.pop()
    (target,) = parts
    if target not in ("eps", "x0", "v"):
        raise ValueError(f"variant {variant!r}: target {target!r}; expected eps, x0 or v")
    return reduce, target, wide


def band_projection(train_patches: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and [bands, k] projection onto the first k principal components of the training pixels'
    spectra (every pixel of every training window), scaled so the first component has unit std."""
    spectra = train_patches.transpose(0, 2, 3, 1).reshape(-1, train_patches.shape[1]).astype(np.float64)
    mean = spectra.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(spectra - mean, rowvar=False))
    order = np.argsort(values)[::-1][:k]
    return mean, vectors[:, order] / np.sqrt(values[order[0]])


def band_bins(bands: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same (mean, basis) form for K contiguous groups of bands, each averaged: no statistics."""
    basis = np.zeros((bands, k))
    for group, members in enumerate(np.array_split(np.arange(bands), k)):
        basis[members, group] = 1.0 / len(members)
    return np.zeros(bands), basis


def project(patches: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return np.einsum("nbhw,bk->nkhw", patches - mean[None, :, None, None], basis).astype(np.float32)


def target_of(kind: str, schedule: LinearSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
              ) -> torch.Tensor:
    a = schedule.sqrt_alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    b = schedule.sqrt_one_minus_alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    return {"eps": noise, "x0": x0, "v": a * noise - b * x0}[kind]


def x0_estimate(kind: str, schedule: LinearSchedule, xt: torch.Tensor, out: torch.Tensor, step: int) -> torch.Tensor:
    a, b = float(schedule.sqrt_alphas_cumprod[step]), float(schedule.sqrt_one_minus_alphas_cumprod[step])
    return {"eps": (xt - b * out) / a, "x0": out, "v": a * xt - b * out}[kind]


def train(unet: DiffusionUNet, x0: torch.Tensor, kind: str, epochs: int, seed: int) -> list[float]:
    schedule = schedule_of(unet.spec)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(unet.parameters(), lr=1e-3)
    losses = []
    unet.train()
    for _ in range(epochs):
        order = torch.randperm(len(x0), generator=generator)
        total = 0.0
        for start in range(0, len(x0), 64):
            batch = x0[order[start:start + 64]]
            t = torch.randint(0, schedule.steps, (len(batch),), generator=generator)
            noise = torch.randn(batch.shape, generator=generator)
            loss = F.l1_loss(unet(schedule.q_sample(batch, t, noise), t), target_of(kind, schedule, batch, noise, t))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(x0))
    return losses


@torch.no_grad()
def psnr_gain(unet: DiffusionUNet, x0: torch.Tensor, kind: str, step: int) -> float:
    """dB of the one-step x0 estimate over predicting no noise (x_t / √ᾱ), held-out patches."""
    schedule = schedule_of(unet.spec)
    unet.eval()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((len(x0),), step, dtype=torch.long)
    xt = schedule.q_sample(x0, t, noise)
    estimate = x0_estimate(kind, schedule, xt, unet(xt, t), step)
    mse, none = F.mse_loss(estimate, x0), F.mse_loss(xt / float(schedule.sqrt_alphas_cumprod[step]), x0)
    return float(10 * torch.log10(none / mse))


@torch.no_grad()
def layer_features(unet: DiffusionUNet, x0: torch.Tensor, step: int, seed: int, layers: list[str]
                   ) -> dict[str, np.ndarray]:
    """Each named layer's activations for x0 noised to ``step`` (one noise draw shared by every pixel, as
    stage 2 does): ``middle`` (the features FedDiff extracts) and ``decoderN``, the output of the N-th
    decoder block (the last ones at the input's full resolution, where each position is still a pixel)."""
    schedule = schedule_of(unet.spec)
    unet.eval()
    noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed)).expand_as(x0)
    t = torch.full((len(x0),), step, dtype=torch.long)
    xt = schedule.q_sample(x0, t, noise)
    captured: dict[str, torch.Tensor] = {}
    modules = {name: unet.middle[-1] if name == "middle" else unet.decoder[int(name[len("decoder"):])][-1]
               for name in layers}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name, module in modules.items()]
    try:  # one pass: through the decoder only where a decoder layer is asked for
        unet.middle_features(xt, t) if layers == ["middle"] else unet(xt, t)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: captured[name].numpy() for name in layers}


def centre(a: np.ndarray) -> np.ndarray:
    """The central 2×2 positions averaged: an even-sided map's centre pixel."""
    h = a.shape[-1] // 2
    return a[:, :, h - 1:h + 1, h - 1:h + 1].mean(axis=(2, 3))


def probes(unet: DiffusionUNet, x0: dict[str, torch.Tensor], labels: dict[str, np.ndarray], k: int,
           timesteps: list[int], layers: list[str], seed: int, base: dict) -> list[dict]:
    """One row per timestep, layer and reading (pooled, flattened, centre) of the layer's activations."""
    readings = {"pooled": lambda a: a.mean(axis=(2, 3)), "flattened": lambda a: a.reshape(len(a), -1),
                "centre": centre}
    rows = []
    for step in timesteps:
        feats = {n: layer_features(unet, x, step, seed, layers) for n, x in x0.items()}
        for layer in layers:
            for how, f in readings.items():
                if how == "centre" and layer == "middle":
                    continue
                inputs = {n: f(v[layer]) for n, v in feats.items()}
                oa = probe(inputs["train"], labels["train"], inputs["validation"], labels["validation"], k)
                where = "" if layer == "middle" else f"{layer} "
                rows.append({**base, "input": f"diffusion t={step}, {where}{how}", "val_oa": oa,
                             "dims": inputs["train"].shape[1]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--scene", default="houston2013")
    parser.add_argument("--modality", default="hsi")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--timesteps", default="5,50")
    parser.add_argument("--variants", nargs="+", default=["eps", "x0", "v", "pca16-eps", "pca16-x0"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="")
    parser.add_argument("--layers", default="middle",
                        help="comma-separated: middle, decoderN (N-th decoder block's output)")
    parser.add_argument("--untrained", action="store_true",
                        help="also probe each variant's U-Net before training (what training adds)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.project)
    sets = {name: NpzDataset(str(root / f"data/04_feature/{args.scene}/{name}_patches.npz")).load()
            for name in ("train", "validation")}
    raw = {name: np.asarray(s[args.modality], dtype=np.float32) for name, s in sets.items()}
    labels = {name: np.asarray(s["labels"]) for name, s in sets.items()}
    k = int(sets["train"]["num_classes"])
    timesteps = [int(t) for t in args.timesteps.split(",")]
    layers = args.layers.split(",")
    rows = []
    half = raw["train"].shape[-1] // 2
    baselines = {"raw centre pixel": {n: r[:, :, half, half] for n, r in raw.items()},
                 "raw, pooled over the window": {n: r.mean(axis=(2, 3)) for n, r in raw.items()}}
    for name, inputs in baselines.items():
        oa = probe(inputs["train"], labels["train"], inputs["validation"], labels["validation"], k)
        rows.append({"variant": name, "input": "raw", "val_oa": oa, "dims": inputs["train"].shape[1]})
        print(f"{name:30s} validation OA {oa:.3f}", flush=True)
    for variant in args.variants:
        reduce, kind, wide = parse(variant)
        started = time.perf_counter()
        data = dict(raw)
        if reduce:
            how_many = reduce[1]
            mean, basis = (band_projection(raw["train"], how_many) if reduce[0] == "pca"
                           else band_bins(raw["train"].shape[1], how_many))
            data = {n: project(r, mean, basis) for n, r in raw.items()}
        x0 = {n: unet_input(d, 8) for n, d in data.items()}
        torch.manual_seed(args.seed)
        unet = DiffusionUNet(UNetSpec(in_channels=int(x0["train"].shape[1]), base_channels=64 if wide else 32))
        if args.untrained:
            rows += probes(unet, x0, labels, k, timesteps, layers, args.seed, {"variant": f"{variant} untrained"})
        losses = train(unet, x0["train"], kind, args.epochs, args.seed)
        gains = {f"psnr_gain_t{s}": psnr_gain(unet, x0["validation"], kind, s) for s in (10, 50)}
        base = {"variant": variant, "loss_first": losses[0], "loss_last": losses[-1], **gains,
                "seconds": time.perf_counter() - started}
        if reduce:
            flat = {n: d.mean(axis=(2, 3)) for n, d in data.items()}
            oa = probe(flat["train"], labels["train"], flat["validation"], labels["validation"], k)
            name = "PCA" if reduce[0] == "pca" else "binned"
            rows.append({**base, "input": f"{name}-{reduce[1]} bands, pooled (raw)", "val_oa": oa, "dims": reduce[1]})
        rows += probes(unet, x0, labels, k, timesteps, layers, args.seed, base)
        print(f"{variant}: loss {losses[0]:.3f} → {losses[-1]:.3f}, PSNR gain t10 {gains['psnr_gain_t10']:.2f} dB "
              f"t50 {gains['psnr_gain_t50']:.2f} dB; " + ", ".join(
                  f"{r['input']} {r['val_oa']:.3f}" for r in rows if r["variant"] == variant)
              + f" ({base['seconds']:.0f} s)", flush=True)
    what = args.label or "one split"
    markdown = [f"DDPM recipes for the {args.modality} diffusion features on `{args.scene}` ({what}): "
                f"each U-Net trained centrally for {args.epochs} epochs on the training pixels (Adam 1e-3, batch 64, "
                "L1 on the target), linear probe on the validation pixels.", "",
                "| variant | input | values | validation OA | loss first → last | PSNR gain t=10 / 50 (dB) |",
                "|---|---|---|---|---|---|"]
    for r in rows:
        extra = (f"{r['loss_first']:.3f} → {r['loss_last']:.3f} | {r['psnr_gain_t10']:.2f} / {r['psnr_gain_t50']:.2f}"
                 if "loss_first" in r else "– | –")
        markdown.append(f"| {r['variant']} | {r['input']} | {r['dims']} | {r['val_oa']:.3f} | {extra} |")
    slug = re.sub(r"[^a-z0-9]+", "_", args.label.lower()).strip("_")
    save(f"diffusion_variants_{args.scene}{('_' + slug) if slug else ''}",
         {"scene": args.scene, "epochs": args.epochs, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
