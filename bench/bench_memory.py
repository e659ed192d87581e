"""Memory over a long audit: does the resident set stay flat (streaming, no accumulation)?

Writes a synthetic manifest of ``--images`` small PNGs (two labels x two groups, two box regions
per image), audits it with Grad-CAM and region removal, samples the process's resident set size
(VmRSS) after every committed batch, and reports the growth between the first 10% of the run
(after warm-up) and the end, plus the least-squares slope over the second half in MB per 1,000
images. Writes a JSON record to ``bench/results/memory-<engine>-<n>.json``.

Examples::

    .venv/bin/python bench/bench_memory.py --images 10000               # local engine, tiny model
    .venv/bin/python bench/bench_memory.py --images 2000 --model mobilenet_v2
    .venv/bin/python bench/bench_memory.py --images 2000 --engine ray   # driver RSS with Ray workers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent


def rss_mb(pid: int | None = None, field: str = "VmRSS") -> float:
    """Resident set size (or another ``field`` of /proc/PID/status, e.g. VmHWM) in MiB of this process
    or of ``pid`` (Linux /proc; for this process falls back to ru_maxrss)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        if pid is not None:
            raise
    if pid is not None:
        raise ProcessLookupError(f"no {field} for process {pid} (has it exited?)")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024




def write_manifest(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic images (a coloured 'tool' box and a 'hair' box) and their manifest.csv."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    tool = (size // 16, size // 2, size * 3 // 8, size * 7 // 8)
    hair = (size // 3, size // 16, size * 2 // 3, size // 3)
    lines = ["path,label,gender,region:tool,region:hair"]
    for i in range(n):
        label, gender = ("c0", "c1")[i % 2], ("female", "male")[(i // 2) % 2]
        arr = rng.integers(100, 156, size=(size, size, 3), dtype=np.uint8)
        arr[tool[1]:tool[3], tool[0]:tool[2]] = (40, 40, 220) if label == "c0" else (40, 220, 40)
        arr[hair[1]:hair[3], hair[0]:hair[2]] = (200, 60, 60) if gender == "female" else (50, 50, 50)
        name = f"img/{i:06d}.png"
        Image.fromarray(arr).save(root / name)
        lines.append(f'{name},{label},{gender},"{",".join(map(str, tool))}","{",".join(map(str, hair))}"')
    csv = root / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def slope_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) against images done, per 1,000 images."""
    if len(points) < 2:
        return 0.0
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0] * 1000)


def save_record(record: dict, out: Path, samples: list[tuple[int, float, float]]) -> None:
    """Add the RSS samples ``(done, MiB, seconds)`` to ``record`` and write it as JSON to ``out``."""
    record["samples"] = [{"done": d, "rss_mb": round(r, 2), "t_s": round(t, 3)} for d, r, t in samples]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


def floor_throughput(adapter, batch_size: int, repeats: int = 5) -> float:
    """Best images/second of a plain forward+backward of ``batch_size`` random inputs (the floor
    for prediction + a gradient method), at the audit's batch size and the measured backward one."""
    return floor_rates(adapter, batch_size, repeats)[0]


def floor_rates(adapter, batch_size: int, repeats: int = 5) -> tuple[float, float]:
    """:func:`floor_throughput` in images per wall second and per CPU second of this process (the
    steadier figure on a machine shared with other jobs)."""
    s = adapter.input_size
    best, best_cpu = 0.0, 0.0
    for bs in sorted({batch_size, adapter.batch_size("backward")}):
        x = torch.randn(bs, 3, s, s, device=adapter.device)
        for i in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            p = x.clone().requires_grad_(True)
            adapter.logits(p)[:, 0].sum().backward()
            if i:  # the first is a warm-up
                best = max(best, bs / (time.perf_counter() - t0))
                best_cpu = max(best_cpu, bs / max(time.process_time() - c0, 1e-9))
    return best, best_cpu


def cpu_model() -> str:
    """The CPU's model name, as the batch-size cache records it (results differ between machines)."""
    from biasscope.models.cache import cpu_model as model_name

    return model_name()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--model", default="tiny", help="tiny (bench_explainers.TinyNet) or a load_model name")
    p.add_argument("--methods", default="gradcam")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--size", type=int, default=64, help="side of the synthetic images")
    p.add_argument("--workdir", default=None, help="where images and the run go (default: a temp dir, removed)")
    p.add_argument("--no-removal", action="store_true", help="skip region removal (prediction + methods only)")
    p.add_argument("--floor", action="store_true",
                   help="also time a plain batched forward+backward in this process: audit throughput vs the floor")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT.parent / "src"))
    from bench_explainers import build_adapter

    from biasscope.audit import AuditConfig, load_manifest, run_audit
    from biasscope.engines import get_engine
    from biasscope.models import batching

    measuring: list[tuple[float, float]] = []  # (wall, CPU) seconds of each batch-size measurement
    real_measure = batching.measure_batch_size

    def timed_measure(*a, **k) -> int:
        t, c = time.perf_counter(), time.process_time()
        try:
            return real_measure(*a, **k)
        finally:
            measuring.append((time.perf_counter() - t, time.process_time() - c))

    batching.measure_batch_size = timed_measure  # the adapter imports it at each call

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bs-mem-"))
    try:
        t0 = time.perf_counter()
        csv = write_manifest(tmp / "data", args.images, args.size)
        write_s = time.perf_counter() - t0
        man = load_manifest(csv, groups=["gender"])
        adapter = build_adapter(args.model, "cpu", "auto")
        labels = {"c0": [adapter.class_names[0]], "c1": [adapter.class_names[1]]}
        cfg = AuditConfig(groups=["gender"], methods=[m for m in args.methods.split(",") if m], concepts=labels,
                          top_k=2)
        if args.no_removal:
            cfg.removal = None
        engine = get_engine(args.engine, workers=args.workers) if args.engine == "ray" else get_engine("local")
        samples: list[tuple[int, float, float]] = []
        start, cpu0 = time.perf_counter(), time.process_time()
        rss0 = rss_mb()

        def progress(pr) -> None:
            if pr.stage == "running":
                samples.append((pr.done_all, rss_mb(), time.perf_counter() - start))

        try:
            run_audit(man, [adapter], tmp / "run", cfg, batch_size=args.batch_size, progress=progress,
                      finalize=False, engine=engine)
        finally:
            engine.close()
        total_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
        floor, floor_cpu = floor_rates(adapter, args.batch_size) if args.floor else (None, None)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    n = args.images
    warm = [s for s in samples if s[0] >= 0.1 * n]
    after_warm = warm[0][1] if warm else samples[0][1]
    second_half = [(d, r) for d, r, _ in samples if d >= n / 2]
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "images": n, "model": args.model, "methods": cfg.methods, "batch_size": args.batch_size,
        "engine": args.engine, "image_size": args.size, "torch": torch.__version__, "cpu": cpu_model(),
        "batch_size_cache": os.environ.get("BIASSCOPE_CACHE_DIR", "default"),
        "loadavg_end": list(os.getloadavg()), "write_images_s": write_s, "audit_s": total_s,
        "images_per_s": n / total_s, "removal": cfg.removal is not None,
        "floor_forward_backward_images_per_s": floor,
        "fraction_of_floor": (n / total_s) / floor if floor else None,
        "measure_batch_size": {"calls": len(measuring), "wall_s": sum(w for w, _ in measuring),
                               "cpu_s": sum(c for _, c in measuring)},
        "fraction_of_floor_without_measuring": (n / (total_s - sum(w for w, _ in measuring))) / floor
        if floor else None,
        "audit_cpu_s": cpu_s, "images_per_cpu_s": n / cpu_s, "floor_images_per_cpu_s": floor_cpu,
        "fraction_of_floor_cpu": (n / cpu_s) / floor_cpu if floor_cpu else None,
        "rss_mb": {"before_run": rss0, "after_10pct": after_warm, "peak": max(r for _, r, _ in samples),
                   "end": samples[-1][1]},
        "growth_after_warmup_mb": samples[-1][1] - after_warm,
        "slope_second_half_mb_per_1000": slope_per_1000(second_half),
    }
    out = Path(args.out) if args.out else ROOT / "results" / f"memory-{args.engine}-{args.model}-{n}.json"
    save_record(record, out, samples)
    r = record["rss_mb"]
    print(f"{n} images in {total_s:.1f}s ({record['images_per_s']:.1f}/s); RSS MiB: before {r['before_run']:.1f}, "
          f"after 10% {r['after_10pct']:.1f}, peak {r['peak']:.1f}, end {r['end']:.1f}; growth after warm-up "
          f"{record['growth_after_warmup_mb']:+.1f} MiB; slope (2nd half) "
          f"{record['slope_second_half_mb_per_1000']:+.2f} MiB/1000 images")
    if floor:
        print(f"audit throughput {record['images_per_s']:.1f} img/s = {record['fraction_of_floor']:.0%} of the plain "
              f"forward+backward floor ({floor:.1f} img/s); per CPU second {record['images_per_cpu_s']:.1f} img = "
              f"{record['fraction_of_floor_cpu']:.0%} of the floor's {floor_cpu:.1f}")
    m = record["measure_batch_size"]
    print(f"measuring batch sizes: {m['calls']} call(s), {m['wall_s']:.1f} s of the audit's {total_s:.1f} s")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
