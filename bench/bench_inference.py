"""Full-scene inference (pixels/s) of every trained model: the classification map each algorithm's
evaluation draws, over every pixel of the scene. Reads the models the pipelines wrote
(data/06_models/<scene>/<algo>/model.pt; run `dvc repro` or the algorithm pipelines first).

Usage: .venv/bin/python bench/bench_inference.py [--env ENV] [--repeats 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import median_seconds, peak_rss_mb, save
from fedrs.evaluation import predict_scene


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (0 for FedDiff's slow maps)")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = Path(__file__).resolve().parents[1]
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=args.env) as session:
        catalog = session.load_context().catalog
        scene, normalisation = catalog.load("scene"), catalog.load("normalisation")
        patches = catalog.load("params:patches")
        scene_name = catalog.load("params:report")["scene_name"]
    models = sorted((root / "data" / "06_models" / str(scene_name)).glob("*/model.pt"))
    if not models:
        raise SystemExit(f"No trained models under data/06_models/{scene_name}; run dvc repro first")
    from fedrs.datasets import TorchArtifactDataset

    pixels = scene["hsi"].shape[1] * scene["hsi"].shape[2]
    rows = []
    for path in models:
        artifact = TorchArtifactDataset(str(path)).load()
        seconds = median_seconds(
            lambda artifact=artifact: predict_scene(
                artifact,
                scene,
                normalisation,
                int(patches["patch_size"]),
                int(patches.get("inference_batch_size", 4096)),
                {},
            ),
            args.repeats,
            warmup=args.warmup,
        )
        rows.append(
            {"algorithm": path.parent.name, "pixels": pixels, "seconds": seconds, "pixels_per_s": pixels / seconds}
        )
        print(f"{path.parent.name}: {pixels / seconds:,.0f} pixels/s", flush=True)
    markdown = [
        f"Every pixel of the {scene_name} scene ({scene['hsi'].shape[1]}×{scene['hsi'].shape[2]}, "
        f"{scene['hsi'].shape[0]} bands), batches of {patches.get('inference_batch_size', 4096)}, "
        f"median of {args.repeats} after {args.warmup} untimed; "
        "FedDiff includes the diffusion features of every pixel.",
        "",
        "| algorithm | pixels/s | seconds |",
        "|---|---|---|",
    ]
    markdown += [f"| {r['algorithm']} | {r['pixels_per_s']:,.0f} | {r['seconds']:.2f} |" for r in rows]
    save("inference", {"scene": str(scene_name), "rows": rows, "peak_rss_mb": peak_rss_mb()}, markdown)


if __name__ == "__main__":
    main()
