"""``biasscope serve``: the web app on a production WSGI server (waitress)."""

from __future__ import annotations

import secrets
import sys

import click

from ._common import FiniteFloat, handle_errors

__all__ = ["extra_models", "limit_malloc_arenas", "make_server", "release_free_heap", "serve_cmd"]

M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX, n)``; ``n=0``: leave it).

    glibc gives each request thread its own arena, and image buffers freed by one thread are kept
    by that arena. Uncapped, with 8 request threads, the server's resident memory grew 330 MB over
    its first 1,000 requests and was still rising at 6.7 MB per 1,000 after 3,000 (about 3.4 GB);
    capped at 2 it settled near 2.2 GB: +8.8 MB after warm-up over 2,000 requests, slope +0.1 MB per
    1,000 (``bench/bench_web_memory.py``). Returns whether it applied (False off glibc).
    """
    if n <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, int(n)))
    except (OSError, AttributeError):
        return False


def release_free_heap() -> bool:
    """Give memory that glibc's malloc holds but no object uses back to the system (``malloc_trim(0)``).

    Warm-up times forward and backward passes at batch sizes up to 64; their activations (about
    1.2 GB for MobileNetV2 at 224 px) are freed by PyTorch but stay in the process's heap, so a server
    that has not answered a request yet showed 2.4 GB resident instead of 1.2 GB. Returns whether
    memory was released (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def extra_models(spec: str, *, device: str = "cpu", precision: str = "fp32", classes: str | None = None,
                 prompts: tuple[str, ...] = (), pretrained: str | None = None) -> dict:
    """``{spec: factory}`` for a default model that is not a torchvision zoo name (``timm:``, ``hf:``,
    ``clip:`` with its classes, or a model file), so the app lists and loads it; ``{}`` for zoo names."""
    from ..models import SUPPORTED_MODELS
    from ..models.external import is_external_spec

    if spec.split(":")[0].lower() in SUPPORTED_MODELS and not is_external_spec(spec):
        return {}

    def factory():
        from ..models import load_model

        return load_model(spec, device=device, precision=precision, classes=classes, prompts=list(prompts) or None,
                          pretrained=pretrained)

    return {spec: factory}


def make_server(app, host: str, port: int, threads: int = 8):
    """A waitress server for ``app`` (not yet running); ``port=0`` picks a free port.

    waitress buffers a request's whole body before the app sees it (up to 1 GiB by default), so its
    ``max_request_body_size`` is the app's own limit (``MAX_CONTENT_LENGTH``): a larger body is
    answered 413 by waitress from its headers, never read.
    """
    from waitress.server import create_server

    limit = app.config.get("MAX_CONTENT_LENGTH")
    extra = {"max_request_body_size": int(limit)} if limit else {}
    return create_server(
        app, host=host, port=port, threads=threads, ident="biasscope", clear_untrusted_proxy_headers=True, **extra
    )


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; anything but loopback requires an access token")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True)
@click.option("--token", default=None, envvar="BIASSCOPE_TOKEN",
              help="access token (default: none on loopback, generated and printed otherwise)")
@click.option("--model", "model", default="resnet18", show_default=True,
              help="default model (a zoo name, timm:NAME, hf:ID, clip:ARCH or a model file); a zoo model falls "
                   "back to mobilenet_v2 when its weights are missing")
@click.option("--classes", default=None, metavar="A,B,...|FILE", help="CLIP: the classes (with --model clip:ARCH)")
@click.option("--prompt", "prompts", multiple=True, metavar="TEMPLATE", help="CLIP: prompt template (repeatable)")
@click.option("--pretrained", default=None, metavar="TAG|FILE", help="CLIP: open_clip weights tag or file")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="dtype of gradient-free forwards (LIME, SHAP, occlusion, predictions); auto = bf16 where the "
                   "hardware runs it natively (AMX CPUs, GPUs), checked against fp32 on representative photos at "
                   "start, else fp32")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True, help="request threads")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="background explanation jobs run at once")
@click.option("--max-upload-mb", type=FiniteFloat(0.01, 1024), default=20.0, show_default=True)
@click.option("--max-pixels", type=click.IntRange(1, 500_000_000), default=40_000_000, show_default=True)
@click.option("--preload/--no-preload", default=True, show_default=True,
              help="load the default model before accepting requests")
@click.option("--data-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="enable audits: manifests and images are read only under this folder")
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
              help="where audit runs are written (default: DATA_ROOT/.biasscope-runs)")
@click.option("--max-sync-cost", type=click.IntRange(0, 10**9), default=400, show_default=True,
              help="POST /api/explain runs in the request thread only up to this many estimated forward passes; "
                   "dearer requests (and slow methods) become background jobs (202)")
@click.option("--malloc-arenas", type=click.IntRange(0, 64), default=2, show_default=True,
              help="cap glibc malloc arenas (flat memory with many request threads); 0 = glibc default")
@handle_errors
def serve_cmd(host: str, port: int, token: str | None, model: str, classes: str | None, prompts: tuple[str, ...],
              pretrained: str | None, device: str, precision: str, threads: int, workers: int,
              max_upload_mb: float, max_pixels: int, preload: bool, data_root: str | None,
              runs_dir: str | None, max_sync_cost: int = 400, malloc_arenas: int = 2) -> None:
    """Serve the web app (and its JSON API) with waitress."""
    from ..web import create_app, is_loopback

    limit_malloc_arenas(malloc_arenas)  # before any request thread exists

    if not token and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    app = create_app(
        {
            "HOST": host,
            "TOKEN": token,
            "DEFAULT_MODEL": model,
            "EXTRA_MODELS": extra_models(model, device=device, precision=precision, classes=classes,
                                         prompts=prompts, pretrained=pretrained),
            "DEVICE": device,
            "PRECISION": precision,
            "JOB_WORKERS": workers,
            "MAX_UPLOAD_BYTES": int(max_upload_mb * 1024 * 1024),
            "MAX_PIXELS": max_pixels,
            "DATA_ROOT": data_root,
            "RUNS_DIR": runs_dir,
            "MAX_SYNC_COST": max_sync_cost,
        }
    )
    st = app.extensions["biasscope"]
    choice = st.models.default_choice()
    if choice.note:
        click.echo(("note: " if choice.ready else "warning: ") + choice.note, err=True)
    if preload and choice.ready:
        adapter = st.models.get(choice.name)
        adapter.warm_up()  # engine and batch sizes now rather than during a user's request
        release_free_heap()  # the measurements' activations are freed: return them to the system
        click.echo(f"model {choice.name} loaded ({adapter.source})", err=True)
    server = make_server(app, host, port, threads)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown}:{server.effective_port}/"
    if token:
        url += f"?token={token}"
        click.echo(f"access token: {token}", err=True)
    if st.audits.enabled:
        click.echo(f"audits: manifests under {st.audits.data_root}, runs in {st.audits.runs_dir}", err=True)
    else:
        click.echo("audits disabled (start with --data-root DIR to enable them)", err=True)
    click.echo(f"biasscope serving on {url}  (Ctrl+C to stop)", err=False)
    sys.stdout.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        st.close()
