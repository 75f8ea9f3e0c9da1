"""What FedDiff's diffusion models know: a linear probe on their features against the same probe on
raw patches, per modality and timestep, trained on the training pixels and scored on the validation
pixels (test pixels are not read).

    .venv/bin/python bench/diffusion_probe.py --project . --scene houston2013 --label "seed 1"

It reads a finished FedDiff run's artefacts (``data/06_models/<scene>/feddiff/model.pt`` holds the
federated U-Nets) and the patch sets of the same run, computes each pixel's features centrally with
the run's seed and timesteps (what stage 2 computes on the clients), and fits one multinomial
logistic regression per input (standardised on training pixels, C = 1, the same for every input):

- ``diffusion t=…``: the U-Net's middle-block features at one timestep, averaged over their 4×4
  positions (2C values), and flattened (2C·16);
- ``raw``: the patch at the U-Net's input size, averaged over positions (bands values) and flattened
  (bands·size² values: everything the U-Net sees), and the centre pixel (bands values) — what a probe
  gets without any diffusion model.

A diffusion feature earns its place when its probe beats the raw probes of the same modality.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from common import RESULTS, save
from fedrs.datasets import NpzDataset, TorchArtifactDataset
from fedrs.feddiff.ddpm import diffusion_feature_bundle, unet_input
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.metrics import classification_report


def probe(train: np.ndarray, train_labels: np.ndarray, validation: np.ndarray, validation_labels: np.ndarray,
          num_classes: int) -> float:
    """Validation OA of a logistic regression fitted on standardised training rows."""
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=3000).fit((train - mean) / std, train_labels)
    return float(classification_report(validation_labels, model.predict((validation - mean) / std), num_classes)["oa"])


def inputs(unet: DiffusionUNet, patches: np.ndarray, timesteps: list[int], seed: int) -> dict[str, np.ndarray]:
    """Every probe input of one modality's patches: raw (pooled, centre) and per-timestep features."""
    half = patches.shape[-1] // 2
    resized = unet_input(patches, unet.spec.size).numpy()
    out = {"raw, pooled over the window": resized.mean(axis=(2, 3)), "raw, window flattened": resized.reshape(
        len(resized), -1), "raw, centre pixel": patches[:, :, half, half]}
    bundle = diffusion_feature_bundle(unet, patches, timesteps, seed)
    width = bundle.shape[1] // len(timesteps)
    for i, t in enumerate(timesteps):
        part = bundle[:, i * width:(i + 1) * width]
        out[f"diffusion t={t}, pooled"] = part.mean(axis=(2, 3))
        out[f"diffusion t={t}, flattened"] = part.reshape(len(part), -1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", default=".")
    parser.add_argument("--scene", default="houston2013")
    parser.add_argument("--label", default="", help="what this run is (seed, variant), kept in the rows")
    parser.add_argument("--timesteps", default="", help="comma-separated; default: the run's own")
    args = parser.parse_args()
    root = Path(args.project)
    artifact = TorchArtifactDataset(str(root / f"data/06_models/{args.scene}/feddiff/model.pt")).load()
    sets = {name: NpzDataset(str(root / f"data/04_feature/{args.scene}/{name}_patches.npz")).load()
            for name in ("train", "validation")}
    timesteps = [int(t) for t in args.timesteps.split(",")] if args.timesteps else list(artifact["spec"]["timesteps"])
    seed = int(artifact["spec"].get("feature_seed", 0))
    k = int(sets["train"]["num_classes"])
    rows = []
    for modality, entry in artifact["unets"].items():
        unet = DiffusionUNet(UNetSpec.from_dict(entry["spec"]))
        unet.load_state_dict(entry["state"])
        started = time.perf_counter()
        per_split = {name: inputs(unet, np.asarray(s[modality]), timesteps, seed) for name, s in sets.items()}
        for name in per_split["train"]:
            oa = probe(per_split["train"][name], sets["train"]["labels"], per_split["validation"][name],
                       sets["validation"]["labels"], k)
            rows.append({"label": args.label, "modality": modality, "input": name, "val_oa": oa,
                         "dims": int(per_split["train"][name].shape[1])})
            print(f"{modality:5s} {name:32s} validation OA {oa:.3f} ({rows[-1]['dims']} values)", flush=True)
        print(f"{modality}: {time.perf_counter() - started:.0f} s", flush=True)
    result_name = f"diffusion_probe_{args.scene}"
    out = RESULTS / f"{result_name}.json"
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in previous if r.get("label") != args.label] + rows
    labels = list(dict.fromkeys(r["label"] for r in rows))
    markdown = [f"Linear probe (logistic regression, C = 1) on `{args.scene}`: validation OA per input, "
                "trained on the training pixels; columns are runs.", "",
                "| modality | input | values | " + " | ".join(labels or ["run"]) + " |",
                "|---|---|---|" + "---|" * max(len(labels), 1)]
    for modality, source, dims in dict.fromkeys((r["modality"], r["input"], r["dims"]) for r in rows):
        cells = [next((f"{r['val_oa']:.3f}" for r in rows if (r["label"], r["modality"], r["input"]) ==
                       (label, modality, source)), "–") for label in labels]
        markdown.append(f"| {modality} | {source} | {dims} | " + " | ".join(cells) + " |")
    save(result_name, {"scene": args.scene, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
