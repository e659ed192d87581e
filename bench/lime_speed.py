"""Side-by-side: biasscope LIME vs the ``lime`` package, 1000 samples, real MobileNetV2 at 224x224.

Both explain skimage's chelsea for its top class on the SAME superpixels (ours, slic ~50) with the
same classifier (``ModelAdapter.probabilities``, fp32); lime gets batch_size=64. Runs alternate
(ours, lime, ours, lime, ...) so machine load affects both alike. Also reports ours with bf16
autocast (``precision="bf16"``) and the agreement of the two explanations.

    .venv/bin/python bench/lime_speed.py [repeats]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

from biasscope import load_model
from biasscope.explainers import get_explainer
from biasscope.explainers._superpixels import to_uint8


def main(repeats: int = 2, num_samples: int = 1000) -> None:
    from lime import lime_image

    img = Image.fromarray(data.chelsea())
    adapter = load_model("mobilenet_v2")
    fast = load_model("mobilenet_v2", precision="bf16")
    x = adapter.preprocess(img)
    target = int(adapter.probabilities(x).argmax())
    t = torch.tensor([target])
    print(f"model {adapter.name} {adapter.input_size}px, target {adapter.class_names[target]}, "
          f"threads {torch.get_num_threads()}, batch fp32 {adapter.batch_size()} bf16 {fast.batch_size()}")
    seg = None
    ours_w = theirs_w = None
    image = to_uint8(adapter, x)[0]

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        xb = adapter.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0)
        return adapter.probabilities(xb).numpy()

    for r in range(repeats):
        t0 = time.perf_counter()
        attr = get_explainer("lime")(adapter, num_samples=num_samples, seed=r).run(x, t)
        t_ours = time.perf_counter() - t0
        seg, ours_w = attr.segments[0], attr.weights[0]

        t0 = time.perf_counter()
        exp = lime_image.LimeImageExplainer(random_state=r).explain_instance(
            image, classifier_fn, labels=(target,), top_labels=None, hide_color=None,
            num_samples=num_samples, batch_size=64, segmentation_fn=lambda _im, s=seg: s,
        )
        t_lime = time.perf_counter() - t0
        theirs_w = np.zeros(len(ours_w))
        for f, v in exp.local_exp[target]:
            theirs_w[f] = v

        t0 = time.perf_counter()
        get_explainer("lime")(fast, num_samples=num_samples, seed=r).run(fast.preprocess(img), t)
        t_fast = time.perf_counter() - t0
        top = len(set(np.argsort(-ours_w)[:5]) & set(np.argsort(-theirs_w)[:5]))
        corr = np.corrcoef(ours_w, theirs_w)[0, 1]
        print(f"run {r}: ours fp32 {t_ours:.1f} s | lime package {t_lime:.1f} s | ratio {t_lime / t_ours:.2f}x | "
              f"ours bf16 {t_fast:.1f} s | superpixels {len(ours_w)} | top-5 overlap {top}/5, pearson {corr:.3f}",
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
