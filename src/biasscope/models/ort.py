"""ONNX Runtime for gradient-free forwards: the same fp32 model, exported once, run faster.

Perturbation explainers (LIME, Kernel SHAP, occlusion), faithfulness curves and audit predictions
only need class probabilities of many images, which is where the time goes. ONNX Runtime's CPU
kernels run the exported graph of the *same* fp32 weights faster than eager PyTorch on this
machine kind (2 cores, AVX-512): ResNet-18 19.8 vs 21.2 ms/image in ``bench/bench_explainers.py``'s
floor (16.3 vs 20.4 in a quiet 32-image run), MobileNetV2 4.7-5.1 vs 17-18 ms/image at each engine's
best batch size, logits equal to 4e-6 and 2e-5. Numerics stay fp32, so explanations keep their
quality; nothing is quantised.

A model the user loaded from an ``.onnx`` file runs on that original file (``ModelAdapter.onnx_source``):
no re-export of the onnx2torch conversion, and ONNX Runtime sees the graph the user shipped. A fixed
batch size in that graph is honoured by running fixed-size chunks, the last one padded.

The session is built lazily (first call with enough images to pay for it) and checked: the first
batch runs through both engines and ONNX Runtime is only kept when the probabilities agree within
:data:`PROB_TOL` and the top-1 classes are equal. The original file is tried first, then the
export; any failure (a graph ONNX Runtime cannot run, a model the exporter cannot trace, onnxruntime
not installed, a mismatch) moves on to the next and finally leaves the adapter on PyTorch, with the
reason recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import cache_dir, read_blob, weights_digest, write_blob

__all__ = ["BACKENDS", "MHA_REASON", "MIN_WORK", "PROB_TOL", "OrtRunner", "OrtState", "build_checked_runner",
           "export_onnx", "has_fused_attention", "ort_available"]

BACKENDS = ("auto", "torch", "onnxruntime")
#: why a model with fused multi-head attention (torchvision ViTs) is not exported: the TorchScript exporter
#: has no symbolic for ``aten::_native_multi_head_attention`` at opset 17, and trying costs seconds
MHA_REASON = "ONNX export of fused multi-head attention is not supported; using PyTorch"
#: jobs smaller than this stay on PyTorch until ONNX Runtime is ready (export + check cost ~0.5 s)
MIN_WORK = 16
#: largest absolute difference of softmax probabilities accepted from ONNX Runtime vs PyTorch
PROB_TOL = 1e-4
#: largest ONNX export kept in the persistent cache (bytes): a VGG's 0.5 GB is exported again instead
MAX_CACHED_EXPORT = 256 * 2**20


def ort_available() -> bool:
    """Whether ``onnxruntime`` can be imported (the ``onnx`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


#: serialises exports: the silencing below swaps the process's stdout/stderr file descriptors
_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Nothing printed reaches the terminal: Python's and the C++ side's stdout/stderr go to a scratch file.

    The TorchScript exporter logs the whole Torch IR graph (kilobytes) to the C++ stdout when an
    export fails (its log switch is always on in torch 2.x), which Python's ``redirect_stdout`` cannot
    catch, so file descriptors 1 and 2 are pointed at a temporary file for the export's duration.
    """
    with _EXPORT_LOCK, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor (a detached process): nothing to silence there
                    continue
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def export_onnx(model: torch.nn.Module, input_size: int) -> bytes:
    """The model's fp32 graph as ONNX bytes with a dynamic batch axis (input ``x``, output ``y``).

    The exporter prints nothing: its output and warnings are captured (a failure is an exception).
    """
    x = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    with _silenced(), warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            (x,),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
            opset_version=17,
        )
    # A tracer warning means the graph froze something that depends on the input (a Python branch on
    # a tensor's value, a shape read as a number): the export would be right for the probe image and
    # silently wrong for others, so it is refused. (The exporter's own deprecation notice is expected:
    # torch is pinned, and the TorchScript-based exporter needs no extra package.)
    traced = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if traced:
        raise RuntimeError(f"the model's graph depends on its input ({str(traced[0].message).splitlines()[0][:160]})")
    return buf.getvalue()


class OrtRunner:
    """An ONNX Runtime session over a classifier graph: ``logits(x)`` for a CPU float batch.

    The graph must take one float32 ``(N, 3, H, W)`` input and give logits ``(N, C)`` as its first
    output. A graph with a fixed batch size ``B`` (the user's own file, exported without a dynamic
    axis) runs in chunks of ``B``; the last chunk is padded with zeros and the padding's rows dropped.
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        #: identity of the graph and runtime, for the persistent cache of measured batch sizes
        self.graph_digest = hashlib.blake2b(onnx_bytes, digest_size=16).hexdigest()
        self.version = f"{ort.__version__}:{so.intra_op_num_threads}"
        inputs = self.session.get_inputs()  # initializers are not listed: these must be fed
        if len(inputs) != 1:
            raise ValueError(f"the graph takes {len(inputs)} inputs; one image batch is expected")
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ValueError(f"the graph's input is {inp.type}, not tensor(float)")
        if len(inp.shape) != 4:
            raise ValueError(f"the graph's input has shape {inp.shape}; (batch, 3, height, width) is expected")
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        #: declared size of each input axis, None where symbolic or unset
        self.input_dims: list[int | None] = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        #: the batch size the graph insists on, or None for a dynamic batch
        self.fixed_batch: int | None = self.input_dims[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` of a normalised batch; a fixed-batch graph runs in padded chunks."""
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        for axis, want in enumerate(self.input_dims[1:], start=1):
            if want is not None and arr.shape[axis] != want:
                raise ValueError(f"the graph takes input shape {self.input_dims}, got {list(arr.shape)}")
        b = self.fixed_batch
        if b is None or arr.shape[0] == b:
            return torch.from_numpy(self._run(arr))
        outs = []
        for i in range(0, max(arr.shape[0], 1), b):
            chunk = arr[i : i + b]
            k = chunk.shape[0]
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), dtype=np.float32)])
            outs.append(self._run(chunk)[:k])
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(outs)))

    def _run(self, arr: np.ndarray) -> np.ndarray:
        out = np.asarray(self.session.run([self.output_name], {self.input_name: arr})[0], dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != arr.shape[0]:
            raise ValueError(
                f"the graph's first output has shape {list(out.shape)} for {arr.shape[0]} images; "
                "(batch, classes) logits are expected"
            )
        return out


@dataclass
class OrtState:
    """Per-adapter backend state: what was asked, what is in use and why."""

    requested: str = "torch"
    runner: OrtRunner | None = None
    tried: bool = False
    reason: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> str:
        return "onnxruntime" if self.runner is not None else "torch"

    def describe(self) -> dict:
        return {"requested": self.requested, "active": self.active, "reason": self.reason}


def build_checked_runner(model: torch.nn.Module, input_size: int, onnx_source: bytes | None, probe: torch.Tensor,
                         want: torch.Tensor) -> tuple[OrtRunner | None, str]:
    """A runner that matches PyTorch's probabilities ``want`` on ``probe``: the original ONNX file
    (``onnx_source``) first, then this process's or a cached export of ``model``.

    Returns ``(runner, reason)``; the reason names which graph is in use, or why none is. A model with
    fused multi-head attention is never exported (:data:`MHA_REASON`).
    """
    if not ort_available():
        return None, "onnxruntime is not installed (pip install 'biasscope[onnx]')"
    refused = []
    if onnx_source is not None:
        runner, why = _checked_runner(lambda: onnx_source, probe, want, "ONNX Runtime cannot run it")
        if runner is not None:
            return runner, f"original ONNX file {why}"
        refused.append(f"original ONNX file not used: {why}")
    if has_fused_attention(model):
        return None, "; ".join([*refused, MHA_REASON])
    key = _export_key(model, input_size)
    cached = read_blob("onnx", key, ".onnx") if key is not None else None
    if cached is not None:  # this model's export from an earlier process, checked like a fresh one
        runner, why = _checked_runner(lambda: cached, probe, want, "ONNX Runtime cannot run it")
        if runner is not None:
            return runner, "; ".join([*refused, f"exported graph {why} (export reused from the cache)"])
    graph: list[bytes] = []

    def export() -> bytes:
        graph.append(export_onnx(model, input_size))
        return graph[-1]

    runner, why = _checked_runner(export, probe, want, "export to ONNX failed")
    if runner is not None:
        if key is not None and len(graph[-1]) <= MAX_CACHED_EXPORT:
            write_blob("onnx", key, graph[-1], ".onnx")
        return runner, "; ".join([*refused, f"exported graph {why}"])
    return None, "; ".join([*refused, f"exported graph not used: {why}", "using PyTorch"])


def has_fused_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds ``nn.MultiheadAttention`` (torchvision ViTs, open_clip), which the exporter cannot
    export: such a model skips the export (and, without an ONNX file of its own, the probe too)."""
    return any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def _export_key(model: torch.nn.Module, input_size: int) -> dict | None:
    """The persistent cache's key of a model's ONNX export: a digest of its weights, input size and
    torch version (the exporter's); None when the cache is off or the weights alone are larger than
    MAX_CACHED_EXPORT (not stored, so not worth hashing)."""
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if cache_dir() is None or size > MAX_CACHED_EXPORT:
        return None
    return {"kind": "onnx-export", "version": 1, "weights": weights_digest(model),
            "input_size": int(input_size), "torch": torch.__version__}


def _checked_runner(
    make: Callable[[], bytes], probe: torch.Tensor, want: torch.Tensor, failed: str
) -> tuple[OrtRunner | None, str]:
    """Run ``probe`` through a session over ``make()``; keep it only if it agrees with ``want``."""
    try:
        runner = OrtRunner(make())
        got = torch.softmax(runner.logits(probe), dim=1)
    except Exception as exc:  # any exporter or runtime failure means: try the next engine
        first = (str(exc).splitlines() or [""])[0][:200]
        return None, f"{failed} ({type(exc).__name__}: {first})"
    if got.shape != want.shape:
        return None, f"its output has shape {list(got.shape)}, PyTorch's {list(want.shape)}"
    diff = float((got - want).abs().max())
    if not diff <= PROB_TOL:
        return None, f"ONNX Runtime disagrees with PyTorch (max |dp| {diff:.1e} > {PROB_TOL:.0e})"
    if not torch.equal(got.argmax(1), want.argmax(1)):
        return None, f"ONNX Runtime disagrees with PyTorch on a top-1 class (max |dp| {diff:.1e})"
    return runner, f"matches PyTorch on {probe.shape[0]} images (max |dp| {diff:.1e})"
