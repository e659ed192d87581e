"""Cold start: how much longer is a new process's first explanation than a warm process's?

For each method, two fresh subprocesses explain the same photo (skimage ``astronaut``) twice through the
Python API, as the CLI does (faithfulness on, ``precision='fp32'``, ``backend='auto'``):

1. ``cold``: an empty cache directory (``BIASSCOPE_CACHE_DIR``): the first explanation measures the
   batch sizes it needs, as every process did before the persistent cache;
2. ``warm_cache``: the same cache directory, now holding what run 1 measured: a new process, but
   nothing to measure.

In each, the second and third explanations are the warm process's figure (``warm_process``, the best
of runs 1 and 2). Wall seconds and the process's CPU seconds are both recorded: on a machine shared with
other jobs the CPU-time ratios are the steadier figure. Reported per method: seconds and ratio to the
warm process, and the batch sizes each run used (the same in both runs: the cache keeps the
measurement's quality). Writes a JSON record to ``bench/results/cold-start-<model>.json``.

Examples::

    .venv/bin/python bench/bench_cold_start.py                       # mobilenet_v2 if its weights are here
    .venv/bin/python bench/bench_cold_start.py --model resnet18 --methods gradcam,ig,occlusion
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path[:0] = [{bench!r}, {src!r}]
from bench_explainers import build_adapter
from skimage import data
from PIL import Image
import biasscope
from biasscope import explain
adapter = build_adapter({model!r}, "cpu", "fp32")
img = Image.fromarray(data.astronaut())
load_s = time.perf_counter() - t0
times, cpu = [], []
for _ in range(3):
    t, c = time.perf_counter(), time.process_time()
    explain(adapter, img, [{method!r}])
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(json.dumps({{"load_s": load_s, "explain_s": times, "cpu_s": cpu, "batch_sizes": adapter.batch_sizes,
                  "biasscope": biasscope.__file__}}))
"""


def default_model() -> str:
    """mobilenet_v2 with its real weights where torch hub's cache has them, else a random resnet18."""
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return "mobilenet_v2" if any(hub.glob("mobilenet_v2-*.pth")) else "resnet18"




def child(model: str, method: str, cache_dir: str) -> dict:
    """One fresh process: load, then three explanations of the same photo; their seconds."""
    code = CHILD.format(bench=str(ROOT), src=str(ROOT.parent / "src"), model=model, method=method)
    env = {**os.environ, "BIASSCOPE_CACHE_DIR": cache_dir}
    env.pop("BIASSCOPE_BATCH_SIZE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"child for {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The CPU's model name, as the batch-size cache records it (results differ between machines)."""
    from biasscope.models.cache import cpu_model as model_name

    return model_name()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: mobilenet_v2 if its weights are installed, else resnet18")
    p.add_argument("--methods", default="gradcam,ig,occlusion")
    p.add_argument("--label", default="", help="added to the output file name (e.g. 'before')")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    model = args.model or default_model()
    rows = {}
    for method in [m for m in args.methods.split(",") if m]:
        with tempfile.TemporaryDirectory(prefix="bs-cold-") as cache:
            cold = child(model, method, cache)
            warm = child(model, method, cache)
        warm_process = min(cold["explain_s"][1:] + warm["explain_s"][1:])
        warm_cpu = min(cold["cpu_s"][1:] + warm["cpu_s"][1:])
        rows[method] = {
            "cold_first_s": cold["explain_s"][0],
            "warm_cache_first_s": warm["explain_s"][0],
            "warm_process_s": warm_process,
            "cold_ratio": cold["explain_s"][0] / warm_process,
            "warm_cache_ratio": warm["explain_s"][0] / warm_process,
            "cpu_s": {"cold_first": cold["cpu_s"][0], "warm_cache_first": warm["cpu_s"][0], "warm_process": warm_cpu},
            "cpu_ratio": {"cold": cold["cpu_s"][0] / warm_cpu, "warm_cache": warm["cpu_s"][0] / warm_cpu},
            "batch_sizes": {"cold": cold["batch_sizes"], "warm_cache": warm["batch_sizes"]},
            "load_s": {"cold": cold["load_s"], "warm_cache": warm["load_s"]},
            "runs": {"cold": cold["explain_s"], "warm_cache": warm["explain_s"]},
            "cpu_runs": {"cold": cold["cpu_s"], "warm_cache": warm["cpu_s"]},
        }
        r, c = rows[method], rows[method]["cpu_ratio"]
        print(f"{method:>10}: first explanation cold {r['cold_first_s']:.2f}s ({r['cold_ratio']:.2f}x; CPU "
              f"{c['cold']:.2f}x), warm cache {r['warm_cache_first_s']:.2f}s ({r['warm_cache_ratio']:.2f}x; CPU "
              f"{c['warm_cache']:.2f}x), warm process {warm_process:.2f}s (CPU {warm_cpu:.2f}s); batch sizes "
              f"{r['batch_sizes']['warm_cache']}", flush=True)
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench_cold_start.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": model, "cpu": cpu_model(), "cpus": os.cpu_count(), "loadavg_end": list(os.getloadavg()),
        "methods": rows,
    }
    suffix = f"-{args.label}" if args.label else ""
    out = Path(args.out) if args.out else ROOT / "results" / f"cold-start-{model}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out} ({time.strftime('%H:%M:%S')})")
    return record


if __name__ == "__main__":
    main()
