"""Fixtures for the web tests: a hand-weighted colour model whose answers follow on paper,
apps built around it (and around the real MobileNetV2), image bytes and a live waitress server."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flask import Flask
from PIL import Image
from torch import nn

from biasscope.models.adapter import ModelAdapter
from biasscope.web import create_app

#: logits = GAIN * mean colour per channel (pixels in [0, 1])
GAIN = 10.0
SIZE = 16  # model input size: 16x16 images go through preprocessing unchanged


class ColourNet(nn.Module):
    """``features`` = ReLU(identity 1x1 conv) -> global average -> ``GAIN * I`` linear head.

    For pixels in [0, 1] the model is linear: ``logit_c = GAIN * mean(x_c)``. Hence for class ``c``
    Grad-CAM's channel weights are ``GAIN / (h w)`` on channel ``c`` and 0 elsewhere, so the CAM is
    ``GAIN / (h w) * x_c``; Integrated Gradients from a black baseline gives the same map.
    ``delay`` (seconds) slows each forward pass so that jobs can be watched and cancelled.
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, 1, bias=False)
        fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            fc.weight.copy_(GAIN * torch.eye(3))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc
        self.delay = delay
        #: forward passes so far (tests count work instead of timing it)
        self.calls = 0
        self._calls_lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._calls_lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.fc(self.pool(self.features(x)).flatten(1))


def colour_adapter(delay: float = 0.0, *, hooks: bool = True, name: str = "colour") -> ModelAdapter:
    model = ColourNet(delay)
    adapter = ModelAdapter(
        name=name,
        model=model,
        class_names=["red", "green", "blue"],
        input_size=SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        target_layer=model.features if hooks else None,
        target_layer_name="features" if hooks else None,
        supports_hooks=hooks,
        source="hand-weighted test model",
        note="" if hooks else "no layer hooks on this model",
    )
    adapter.set_batch_sizes(forward=8, backward=8)
    return adapter


def png(img: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def two_colour(left: tuple[int, int, int], right: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    """A ``size x size`` image: left half one colour, right half another."""
    a = np.zeros((size, size, 3), np.uint8)
    a[:, : size // 2] = left
    a[:, size // 2 :] = right
    return a


def expected_cam(img: np.ndarray, cls: int) -> np.ndarray:
    """The hand-derived Grad-CAM (and IG) map of :class:`ColourNet` for class ``cls``."""
    return GAIN / (img.shape[0] * img.shape[1]) * img[..., cls].astype(np.float64) / 255.0


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.fixture
def make_app():
    """Factory: a test app around the colour model (and extras); state is closed afterwards."""
    apps: list[Flask] = []

    def factory(**config) -> Flask:
        extra = {"colour": colour_adapter, "colour_nohooks": lambda: colour_adapter(hooks=False, name="nohooks")}
        extra.update(config.pop("EXTRA_MODELS", {}))
        base = {"TESTING": True, "DEFAULT_MODEL": "colour", "FALLBACK_MODELS": (), "EXTRA_MODELS": extra,
                "JOB_WORKERS": 2}
        app = create_app(base | config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["biasscope"].close()


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def mobilenet() -> ModelAdapter:
    from tests.fixtures import mobilenet_v2_adapter

    return mobilenet_v2_adapter()


@contextlib.contextmanager
def serving(server) -> Iterator[None]:
    """Run a waitress ``server`` in a thread for the block, then stop it cleanly."""
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        yield
    finally:
        # close every socket inside the server's own loop thread: closing them from here raced with the
        # loop's select() (EBADF in the server thread, seen once in a few runs on a loaded machine)
        def close_all() -> None:
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        server.task_dispatcher.shutdown(timeout=10)  # let request threads finish first
        server.trigger.pull_trigger(close_all)
        t.join(timeout=30)
        assert not t.is_alive(), "the test server did not stop"


@contextlib.contextmanager
def live_server(app: Flask, threads: int = 8) -> Iterator[str]:
    """Serve ``app`` with waitress (as ``biasscope serve`` does) on a free loopback port."""
    from biasscope.cli.serve import make_server

    server = make_server(app, "127.0.0.1", 0, threads=threads)
    with serving(server):
        yield f"http://127.0.0.1:{server.effective_port}"


#: Debian's chromium (never `playwright install`, which downloads a browser); `make browser` installs it
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


@contextlib.contextmanager
def browser_page(app: Flask, *, viewport: dict | None = None, timeout_ms: int = 60_000) -> Iterator[tuple]:
    """``(base_url, page, problems)``: a headless Chromium page (Playwright) on a live server of ``app``.
    ``problems`` collects console errors, page errors and requests that leave the server (the app must
    work offline). Skips the test when Debian's chromium is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    with live_server(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: r.url.startswith(base) or r.url.startswith("data:")
                    or problems.append(f"off-site request: {r.url}"))
            page.set_default_timeout(timeout_ms)
            yield base, page, problems
        finally:
            browser.close()


def wait_job(client, job_id: str, timeout: float = 60.0, until=None) -> dict:
    """Poll a job until it is finished (or ``until(job)`` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        if (until(job) if until else job["status"] in ("done", "error", "cancelled")):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not finish in {timeout}s: {job}")
        time.sleep(0.05)
