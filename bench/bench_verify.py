"""Speed of face verification audits: metrics at BFW scale, dlib embedding, occlusion explanations.

1. ``compute_verify_metrics`` on synthetic scores shaped like BFW (4 ethnicities x 2 genders, 100
   identities each, ``--impostors`` same-subgroup impostor pairs and 10 genuine pairs per identity),
   with the identity bootstrap (``--n-boot``), as one wall time;
2. dlib: face detection + chip per photo, and ``dlib-face`` embedding per chip (batch of 32), on the
   photos the packages ship (skimage astronaut, matplotlib Grace Hopper);
3. one occlusion explanation of a pair (default patch: a sixth of the chip).

Writes ``bench/results/verify-<impostors>.json``. Example::

    .venv/bin/python bench/bench_verify.py --impostors 20000 --n-boot 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_scores(impostors: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for eth in ("asian", "black", "indian", "white"):
        for gen in ("female", "male"):
            ids = np.array([f"{eth}-{gen}-{i}" for i in range(100)])
            a = rng.integers(0, 100, impostors)
            b = (a + rng.integers(1, 100, impostors)) % 100
            imp = pd.DataFrame({"kind": "impostor", "identity_a": ids[a], "identity_b": ids[b],
                                "score": rng.normal(rng.uniform(0.1, 0.3), 0.1, impostors)})
            g = np.repeat(ids, 10)
            gen_df = pd.DataFrame({"kind": "genuine", "identity_a": g, "identity_b": g,
                                   "score": rng.normal(0.7, 0.1, g.size)})
            df = pd.concat([imp, gen_df], ignore_index=True)
            df["subgroup"] = f"{eth} & {gen}"
            df["ethnicity_a"] = df["ethnicity_b"] = eth
            df["gender_a"] = df["gender_b"] = gen
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "pair_id", np.arange(len(out)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impostors", type=int, default=20_000, help="same-subgroup impostor pairs per subgroup")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5, help="timed dlib embeddings")
    ap.add_argument("--no-dlib", action="store_true", help="only the metrics")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from biasscope.verify import VerifyOptions, compute_verify_metrics

    rec: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor()
                 or platform.machine(), "impostors_per_subgroup": args.impostors, "n_boot": args.n_boot}
    scores = synthetic_scores(args.impostors)
    t = time.perf_counter()
    m = compute_verify_metrics(scores, ["ethnicity", "gender"], VerifyOptions(far=1e-3, n_boot=args.n_boot))
    rec["metrics"] = {"pairs": len(scores), "seconds": time.perf_counter() - t, "tests": m["n_tests"]}
    if not args.no_dlib:
        import matplotlib.cbook as cb
        from PIL import Image, ImageOps
        from skimage import data

        from biasscope.faces import detect_faces
        from biasscope.verify import DlibFaceModel, explain_pair

        model = DlibFaceModel()
        with Image.open(cb.get_sample_data("grace_hopper.jpg", asfileobj=False)) as g:
            photos = [Image.fromarray(data.astronaut()), g.convert("RGB")]
        detect_faces(photos[0])  # loads the landmark model once, outside the timings
        det = []
        chips = []
        for p in photos:
            t = time.perf_counter()
            chips.append(model.chip(p))
            det.append(time.perf_counter() - t)
        batch = [np.asarray(c.image) for c in chips] * 16
        emb = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model.embed(batch)
            emb.append((time.perf_counter() - t) / len(batch))
        t = time.perf_counter()
        explain_pair(model, chips[0], model.chip(ImageOps.mirror(photos[0])))
        rec["dlib"] = {"detect_and_chip_s": statistics.median(det), "embed_per_chip_s": statistics.median(emb),
                       "occlusion_pair_s": time.perf_counter() - t}
    out = args.out or Path(__file__).parent / "results" / f"verify-{args.impostors}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return rec


if __name__ == "__main__":
    main()
