"""Memory of the web server over many requests: does its resident set stay flat?

Starts the real server the way users do (``biasscope serve`` in a subprocess, on loopback), then
sends ``--requests`` HTTP requests from ``--concurrency`` client threads through the JSON API the
page itself uses, in a fixed mix of scenarios (of every five: two page, two api, one bad input):

* page: upload a photo (multipart), fetch its preview, predict, submit a Grad-CAM job and poll it
  every 0.4 s like the page does, fetch the heatmap PNG (and on every other one an overlay PNG at
  a chosen opacity, which is rendered afresh);
* api: predict on an uploaded file, explain inline with Grad-CAM (POST /api/explain), download the
  job's result.json (with heatmaps);
* bad input: a truncated PNG, a text file, an empty file or an unknown image id, each of which must
  get a 4xx;
* slow (every ``--lime-every``-th scenario): a LIME job with few samples, polled to completion.

The photos rotate through skimage.data (chelsea, astronaut, coffee, camera, rocket; PNG and JPEG).
Every HTTP request counts as one; the server's VmRSS (/proc/PID/status) is sampled every
``--sample-every`` requests. Reports the RSS after warm-up (the first 10% of the requests), at the
end, the growth between them and the least-squares slope over the second half in MB per 1,000
requests, and the count of each status code. Fails (exit status 1) on any 5xx, any other status
than the one expected, a job that does not finish as done, a traceback in the server's log, an
unclean shutdown, or a slope above ``--max-slope-mb``. Writes a JSON record to
``bench/results/web-memory-<n>.json``.

Examples::

    .venv/bin/python bench/bench_web_memory.py                      # 1,000 requests, mobilenet_v2
    .venv/bin/python bench/bench_web_memory.py --requests 200 --concurrency 2 --lime-every 0
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
TERMINAL = frozenset({"done", "error", "cancelled"})
POLL_S = 0.4  # the page polls a job every 400 ms
PHOTOS = (("chelsea", "PNG"), ("astronaut", "JPEG"), ("coffee", "PNG"), ("camera", "JPEG"), ("rocket", "JPEG"))

sys.path.insert(0, str(ROOT))
from bench_memory import rss_mb, save_record, slope_per_1000  # noqa: E402


class OutOfRequestsError(Exception):
    """Every request of the run has been sent (or the run was stopped)."""


# ------------------------------------------------------------------------------------- inputs
def photos() -> list[tuple[str, bytes, str]]:
    """Real photos from skimage.data as upload files: (filename, bytes, content type)."""
    import skimage.data
    from PIL import Image

    out = []
    for name, fmt in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, format=fmt)
        ext = "png" if fmt == "PNG" else "jpg"
        out.append((f"{name}.{ext}", buf.getvalue(), f"image/{'png' if fmt == 'PNG' else 'jpeg'}"))
    return out


def bad_files(good_png: bytes) -> list[tuple[str, bytes, str]]:
    """Uploads the server must refuse with a 4xx: a truncated PNG, a text file and an empty file."""
    return [
        ("truncated.png", good_png[: len(good_png) // 2], "image/png"),
        ("notes.png", b"these are my notes, not an image\n" * 20, "image/png"),
        ("empty.jpg", b"", "image/jpeg"),
    ]


def multipart(fields: dict[str, str], file: tuple[str, bytes, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file in the field 'image'."""
    boundary = "----biasscope" + secrets.token_hex(12)
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    name, data, ctype = file
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------- server
class Server:
    """``biasscope serve`` in a subprocess (its own process group), stopped with SIGINT like Ctrl+C."""

    def __init__(self, args: argparse.Namespace) -> None:
        exe = Path(sys.executable).with_name("biasscope")
        self.cmd = [str(exe) if exe.exists() else "biasscope", "serve", "--host", args.host,
                    "--port", str(args.port), "--model", args.model, "--workers", str(args.workers),
                    "--threads", str(args.threads), "--preload" if args.preload else "--no-preload"]
        self.logdir = Path(tempfile.mkdtemp(prefix="bs-webmem-"))
        self.out_path, self.err_path = self.logdir / "stdout.txt", self.logdir / "stderr.txt"
        self.proc: subprocess.Popen | None = None
        self.host = args.host
        self.port: int | None = None
        self.exit_code: int | None = None
        self.clean_shutdown: bool | None = None

    def start(self, timeout_s: float) -> float:
        """Start the server, wait until it answers /api/health; returns the seconds it took."""
        t0 = time.perf_counter()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # own session: a Ctrl+C in the terminal reaches only this script, which then stops the server
            # once; SIGINT back to its default so the server's Python turns it into KeyboardInterrupt even
            # when this script was started in the background with SIGINT ignored
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                                         start_new_session=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while self.port is None:
            m = re.search(r"serving on http://[^:/]+:(\d+)/", self.out_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"the server did not start within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", "/api/health")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/api/health answered {resp.status}: {body[:300]!r}")
        finally:
            conn.close()
        return time.perf_counter() - t0

    def get_json(self, path: str) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def rss(self, field: str = "VmRSS") -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid, field)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT (what Ctrl+C sends), then SIGTERM, then SIGKILL; records whether it stopped cleanly."""
        if self.proc is None or self.exit_code is not None:
            return
        if self.proc.poll() is not None:  # it died on its own during the run
            self.exit_code, self.clean_shutdown = self.proc.returncode, False
            return
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
            try:
                self.exit_code = self.proc.wait(timeout=wait_s)
                self.clean_shutdown = sig == signal.SIGINT and self.exit_code == 0
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, chars: int = 3000) -> str:
        text = ""
        for p in (self.out_path, self.err_path):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")
        return text[-chars:]

    def tracebacks(self) -> int:
        with contextlib.suppress(OSError):
            return self.err_path.read_text(errors="replace").count("Traceback (most recent call last)")
        return 0

    def cleanup(self) -> None:
        shutil.rmtree(self.logdir, ignore_errors=True)


# ------------------------------------------------------------------------------------- the run
class Run:
    """Request tickets, status counts and RSS samples shared by the client threads."""

    def __init__(self, server: Server, n: int, sample_every: int) -> None:
        self.server, self.n, self.sample_every = server, n, sample_every
        self.lock = threading.Lock()
        self.issued = self.done = self.scenarios = self.unexpected_count = 0
        self.stop = threading.Event()
        self.status = Counter()
        self.by_kind: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.unexpected: list[dict] = []
        self.job_failures: list[dict] = []
        self.jobs = Counter()
        self.client_errors: list[str] = []
        self.start = time.perf_counter()
        self.samples: list[tuple[int, float, float]] = [(0, server.rss(), 0.0)]

    def next_scenario(self) -> int:
        with self.lock:
            if self.stop.is_set() or self.issued >= self.n:
                raise OutOfRequestsError
            self.scenarios += 1
            return self.scenarios - 1

    def take(self) -> None:
        with self.lock:
            if self.stop.is_set() or self.issued >= self.n:
                raise OutOfRequestsError
            self.issued += 1

    def record(self, kind: str, status: int, ok: bool, seconds: float, detail: str) -> None:
        with self.lock:
            self.done += 1
            self.status[str(status)] += 1
            self.by_kind[kind][str(status)] += 1
            self.latency[kind].append(seconds)
            if not ok:
                self.unexpected_count += 1
                if len(self.unexpected) < 50:
                    self.unexpected.append({"kind": kind, "status": status, "detail": detail[:300]})
            if self.done % self.sample_every == 0 or self.done == self.n:
                try:
                    self.samples.append((self.done, self.server.rss(), time.perf_counter() - self.start))
                except OSError as exc:  # the server is gone: stop the run, it has failed
                    self.client_errors.append(f"no RSS for the server: {type(exc).__name__}: {exc}")
                    self.stop.set()


class Client:
    """One browser-like client: a keep-alive connection and the scenarios of the mix."""

    def __init__(self, run: Run, host: str, port: int, files: list, bad: list, lime_every: int, lime_samples: int,
                 faithfulness: bool, timeout_s: float, job_timeout_s: float) -> None:
        self.run, self.host, self.port, self.timeout_s = run, host, port, timeout_s
        self.files, self.bad, self.lime_every, self.lime_samples = files, bad, lime_every, lime_samples
        self.faithfulness, self.job_timeout_s = faithfulness, job_timeout_s
        self.conn: http.client.HTTPConnection | None = None

    # -------------------------------------------------------------- transport
    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # a keep-alive connection the server closed meanwhile: one fresh try
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, kind: str, method: str, path: str, *, expect: str, json_body: Any = None,
             form: tuple[bytes, str] | None = None) -> tuple[int, Any]:
        """One counted request; ``expect`` is '2xx' or '4xx'. Returns (status, parsed JSON or raw bytes)."""
        self.run.take()
        headers: dict[str, str] = {}
        body = None
        if json_body is not None:
            body, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        elif form is not None:
            body, headers["Content-Type"] = form
        t0 = time.perf_counter()
        try:
            status, data = self._send(method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            with self.run.lock:
                self.run.client_errors.append(f"{kind} {method} {path}: {type(exc).__name__}: {exc}")
            self.run.record(kind, 0, False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
            raise
        ok = (200 <= status < 300) if expect == "2xx" else (400 <= status < 500)
        parsed: Any = data
        if data[:1] in (b"{", b"["):
            with contextlib.suppress(ValueError):
                parsed = json.loads(data)
        detail = "" if ok else f"{method} {path}: {data[:300].decode(errors='replace')}"
        self.run.record(kind, status, ok, time.perf_counter() - t0, detail)
        return status, parsed

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -------------------------------------------------------------- scenarios
    def loop(self) -> None:
        try:
            while True:
                s = self.run.next_scenario()
                try:
                    self.scenario(s)
                except (OSError, http.client.HTTPException):
                    continue  # counted as a failed request; go on with the next scenario
        except OutOfRequestsError:
            pass
        except Exception as exc:  # a bug in the client must not pass for a server failure, nor hang the run
            with self.run.lock:
                self.run.client_errors.append(f"client crashed: {type(exc).__name__}: {exc}")
            self.run.stop.set()
        finally:
            self.close()

    def scenario(self, s: int) -> None:
        photo = self.files[s % len(self.files)]
        if self.lime_every and s % self.lime_every == self.lime_every - 1:
            self.slow_job(photo)
        elif s % 5 == 1:
            self.bad_input(s // 5)
        elif s % 5 in (0, 3):
            self.page(photo, overlay=s % 5 == 0)
        else:
            self.api(photo)

    def upload(self, photo) -> str | None:
        status, rec = self.call("upload", "POST", "/api/images", expect="2xx", form=multipart({}, photo))
        return rec["id"] if status == 201 and isinstance(rec, dict) else None

    def page(self, photo, overlay: bool) -> None:
        image_id = self.upload(photo)
        if image_id is None:
            return
        self.call("preview", "GET", f"/api/images/{image_id}.png", expect="2xx")
        self.call("predict", "POST", "/api/predict", expect="2xx", json_body={"image_id": image_id, "top": 5})
        job = self.job({"image_id": image_id, "methods": ["gradcam"], "faithfulness": self.faithfulness})
        if job is not None:
            base = f"/api/jobs/{job['id']}/methods/gradcam"
            self.call("heatmap", "GET", f"{base}/heatmap.png", expect="2xx")
            if overlay:
                self.call("overlay", "GET", f"{base}/overlay.png?download=1&alpha=0.6", expect="2xx")

    def api(self, photo) -> None:
        status, pred = self.call("predict_upload", "POST", "/api/predict", expect="2xx",
                                 form=multipart({"top": "3"}, photo))
        if status != 200 or not isinstance(pred, dict):
            return
        status, job = self.call("explain", "POST", "/api/explain", expect="2xx",
                                json_body={"image_id": pred["image"]["id"], "methods": "gradcam",
                                           "faithfulness": self.faithfulness})
        if status == 200 and isinstance(job, dict):
            self.check_job(job, "explain")
            self.call("result_json", "GET", f"/api/jobs/{job['id']}/result.json", expect="2xx")

    def bad_input(self, i: int) -> None:
        kinds = len(self.bad) + 1
        if i % kinds < len(self.bad):
            bad = self.bad[i % kinds]
            self.call("bad_upload", "POST", "/api/images", expect="4xx", form=multipart({}, bad))
        else:
            self.call("bad_image_id", "POST", "/api/predict", expect="4xx",
                      json_body={"image_id": secrets.token_hex(12)})

    def slow_job(self, photo) -> None:
        image_id = self.upload(photo)
        if image_id is None:
            return
        job = self.job({"image_id": image_id, "methods": ["lime"], "faithfulness": self.faithfulness,
                        "params": {"lime": {"num_samples": self.lime_samples}}})
        if job is not None:
            self.call("heatmap", "GET", f"/api/jobs/{job['id']}/methods/lime/heatmap.png", expect="2xx")

    def job(self, body: dict) -> dict | None:
        """Submit a job and poll it like the page; the finished job, or None if it failed."""
        status, job = self.call("job_submit", "POST", "/api/jobs", expect="2xx", json_body=body)
        if status != 202 or not isinstance(job, dict):
            return None
        with self.run.lock:
            self.run.jobs["submitted"] += 1
        deadline = time.perf_counter() + self.job_timeout_s
        while job.get("status") not in TERMINAL:
            if time.perf_counter() > deadline:
                with self.run.lock:
                    self.run.job_failures.append({"id": job["id"], "status": "timeout", "error": None})
                return None
            time.sleep(POLL_S)
            status, polled = self.call("job_poll", "GET", f"/api/jobs/{job['id']}", expect="2xx")
            if status != 200 or not isinstance(polled, dict):
                return None
            job = polled
        return job if self.check_job(job, "job") else None

    def check_job(self, job: dict, kind: str) -> bool:
        ok = job.get("status") == "done" and all(m.get("status") == "done" for m in job["methods"].values())
        with self.run.lock:
            self.run.jobs[f"{kind}_{'done' if ok else 'failed'}"] += 1
            if not ok and len(self.run.job_failures) < 50:
                errors = {n: m.get("error") for n, m in job["methods"].items()}
                self.run.job_failures.append({"id": job["id"], "status": job.get("status"), "error": job.get("error"),
                                              "methods": errors})
        return ok


# ------------------------------------------------------------------------------------- report
def latency_summary(latency: dict[str, list[float]]) -> dict:
    out = {}
    for kind, xs in sorted(latency.items()):
        xs = sorted(xs)
        out[kind] = {"n": len(xs), "median_s": round(statistics.median(xs), 4),
                     "p95_s": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 4), "max_s": round(xs[-1], 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000, help="HTTP requests in all (every poll counts)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads")
    p.add_argument("--sample-every", type=int, default=None, help="RSS sample every K requests (default n/100)")
    p.add_argument("--model", default="mobilenet_v2", help="the server's --model")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                   help="the server's --preload/--no-preload")
    p.add_argument("--workers", type=int, default=2, help="the server's --workers (background jobs at once)")
    p.add_argument("--threads", type=int, default=8, help="the server's --threads")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: the server picks a free port (read from its banner)")
    p.add_argument("--lime-every", type=int, default=20, help="every Nth scenario is a LIME job (0: none)")
    p.add_argument("--lime-samples", type=int, default=50)
    p.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for faithfulness metrics with each explanation (the page's default)")
    p.add_argument("--max-slope-mb", type=float, default=5.0, help="fail above this slope (MB per 1,000 requests)")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    n = args.requests
    if n < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be at least 1")
    sample_every = args.sample_every or max(1, n // 100)

    files = photos()
    bad = bad_files(files[0][1])
    server = Server(args)
    old_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if old_term is not None:  # a `kill` of this script still stops the server (via the finally below)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threads: list[threading.Thread] = []
    run: Run | None = None
    loadavg_start = list(os.getloadavg())
    try:
        startup_s = server.start(args.startup_timeout)
        models = server.get_json("/api/models")
        health = server.get_json("/api/health")
        rss_ready = server.rss()
        run = Run(server, n, sample_every)
        for i in range(args.concurrency):
            c = Client(run, args.host, server.port, files, bad, args.lime_every, args.lime_samples,
                       args.faithfulness, args.request_timeout, args.request_timeout)
            t = threading.Thread(target=c.loop, name=f"client-{i}", daemon=True)
            threads.append(t)
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
        total_s = time.perf_counter() - run.start
        hwm = None
        with contextlib.suppress(OSError):
            hwm = server.rss("VmHWM")
        tracebacks = server.tracebacks()
    finally:
        if run is not None:
            run.stop.set()
        for t in threads:
            t.join(5)
        server.stop()
        log_tail = server.log_tail()
        server.cleanup()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

    samples = run.samples
    warm = [s for s in samples if s[0] >= 0.1 * n]
    after_warm = warm[0][1] if warm else samples[-1][1]
    second_half = [(d, r) for d, r, _ in samples if d >= n / 2]
    slope = slope_per_1000(second_half)
    server_errors = sum(v for k, v in run.status.items() if k.startswith("5"))
    unexpected = run.unexpected_count
    failures = []
    if server_errors:
        failures.append(f"{server_errors} responses with a 5xx status")
    if unexpected:
        failures.append(f"{unexpected} responses with another status than expected")
    if run.client_errors:
        failures.append(f"{len(run.client_errors)} client errors (connection or client bug)")
    failed_jobs = sum(v for k, v in run.jobs.items() if k.endswith("_failed")) + sum(
        1 for j in run.job_failures if j["status"] == "timeout")
    if failed_jobs:
        failures.append(f"{failed_jobs} jobs did not finish as done")
    if tracebacks:
        failures.append(f"{tracebacks} tracebacks in the server's log")
    if run.done != n:
        failures.append(f"{run.done} requests done instead of {n}")
    if not server.clean_shutdown:
        failures.append(f"the server did not stop cleanly on SIGINT (exit code {server.exit_code})")
    if slope > args.max_slope_mb:
        failures.append(f"RSS slope {slope:+.2f} MB/1000 requests is above {args.max_slope_mb}")

    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench_web_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "server_command": " ".join(server.cmd[1:]),
        "requests": n, "concurrency": args.concurrency, "sample_every": sample_every,
        "model": models.get("default"), "configured_model": args.model, "biasscope": health.get("version"),
        "preload": args.preload, "server_workers": args.workers, "server_threads": args.threads,
        "faithfulness": args.faithfulness, "lime_every": args.lime_every, "lime_samples": args.lime_samples,
        "photos": [f[0] for f in files], "bad_inputs": [b[0] for b in bad] + ["unknown image_id"],
        "cpu_count": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg()),
        "startup_s": startup_s, "run_s": total_s, "requests_per_s": run.done / total_s,
        "scenarios": run.scenarios,
        "rss_mb": {"ready": rss_ready, "after_10pct": after_warm, "peak_sampled": max(r for _, r, _ in samples),
                   "end": samples[-1][1], "hwm": hwm},
        "growth_after_warmup_mb": samples[-1][1] - after_warm,
        "slope_second_half_mb_per_1000": slope,
        "max_slope_mb": args.max_slope_mb,
        "status_counts": dict(sorted(run.status.items())),
        "status_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(run.by_kind.items())},
        "requests_done": run.done,
        "server_errors_5xx": server_errors,
        "unexpected_status_count": unexpected,
        "unexpected_status": run.unexpected,
        "jobs": dict(sorted(run.jobs.items())),
        "job_failures": run.job_failures,
        "client_errors": run.client_errors[:50],
        "latency": latency_summary(run.latency),
        "server_tracebacks": tracebacks,
        "server_exit_code": server.exit_code,
        "clean_shutdown": server.clean_shutdown,
        "failures": failures,
        "passed": not failures,
        "server_log_tail": log_tail if failures else "",
    }
    out = Path(args.out) if args.out else ROOT / "results" / f"web-memory-{n}.json"
    save_record(record, out, samples)
    r = record["rss_mb"]
    print(f"{run.done} requests ({run.scenarios} scenarios, {args.concurrency} clients) in {total_s:.1f}s "
          f"({record['requests_per_s']:.1f}/s) against {record['model']} (startup {startup_s:.1f}s)")
    print(f"server RSS MiB: ready {r['ready']:.1f}, after 10% {r['after_10pct']:.1f}, peak {r['peak_sampled']:.1f}, "
          f"end {r['end']:.1f} (high-water mark {r['hwm'] or float('nan'):.1f}); growth after warm-up "
          f"{record['growth_after_warmup_mb']:+.1f} MiB; slope (2nd half) {slope:+.2f} MiB/1000 requests "
          f"(limit {args.max_slope_mb})")
    print("status codes: " + ", ".join(f"{k}: {v}" for k, v in record["status_counts"].items())
          + f"; jobs: {record['jobs']}; server stopped cleanly: {server.clean_shutdown}")
    print("PASS" if record["passed"] else "FAIL: " + "; ".join(failures))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
