"""Declared parameters: the one validation behind the API, the CLI, the web forms and audits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasscope.errors import ExplainerError
from biasscope.explainers import SEED_MAX, Param, list_explainers


def test_every_numeric_parameter_has_finite_bounds_and_seeds_share_one_range():
    for cls in list_explainers():
        for p in cls.params:
            if p.type in (int, float):
                assert math.isfinite(p.min) and math.isfinite(p.max) and p.min <= p.default <= p.max, (cls.name, p)
            if p.name == "seed":
                assert (p.type, p.min, p.max) == (int, 0, SEED_MAX) == (int, 0, 2**32 - 1)
    with pytest.raises(TypeError, match="must declare finite min and max"):
        Param("sigma", float, 1.0, min=0.0)
    with pytest.raises(TypeError, match="must declare finite min and max"):
        Param("n", int, 1, min=0, max=math.inf)


INT = Param("steps", int, 8, min=2, max=1000)
FLOAT = Param("width", float, 0.25, min=1e-3, max=100)
BOOL = Param("absolute", bool, True)


@pytest.mark.parametrize(("param", "value", "want"), [
    (INT, 4, 4), (INT, 4.0, 4), (INT, "12", 12), (INT, np.int64(7), 7), (INT, None, 8), (INT, "", 8),
    (FLOAT, 2, 2.0), (FLOAT, "0.5", 0.5), (FLOAT, np.float32(0.5), 0.5),
    (BOOL, False, False), (BOOL, np.bool_(True), True),
])
def test_accepted_values(param, value, want):
    got = param.coerce(value)
    assert got == want and type(got) is param.type


@pytest.mark.parametrize(("param", "value"), [
    (INT, 3.7), (INT, "3.7"), (INT, float("nan")), (INT, float("inf")), (INT, True), (INT, [4]), (INT, 1001),
    (FLOAT, float("nan")), (FLOAT, "inf"), (FLOAT, -math.inf), (FLOAT, 1e308), (FLOAT, 10**400), (FLOAT, False),
    (BOOL, "maybe"), (BOOL, "true"), (BOOL, 1), (BOOL, 0.0),
])
def test_refused_values(param, value):
    with pytest.raises(ExplainerError, match=f"parameter {param.name} must be"):
        param.coerce(value)


@pytest.mark.parametrize(("text", "want"), [("true", True), ("Yes", True), ("1", True), ("false", False),
                                            ("NO", False), ("0", False)])
def test_command_line_bool_words(text, want):
    assert BOOL.parse_text(text) is want


def test_command_line_text_is_checked_like_any_value():
    assert INT.parse_text(" 16 ") == 16 and FLOAT.parse_text("1e-2") == 0.01
    for bad in ("maybe", "on", ""):
        with pytest.raises(ExplainerError, match="true or false"):
            BOOL.parse_text(bad)
    with pytest.raises(ExplainerError, match="whole number"):
        INT.parse_text("3.7")


def test_signed_follows_the_parameters_not_the_class():
    """SmoothGrad is unsigned by default and signed with ``absolute=False``: the instance, the stored
    runs' reader :func:`is_signed` and the explanation all follow the parameters."""
    import torch
    from PIL import Image

    from biasscope.api import explain
    from biasscope.explainers import get_explainer, is_signed
    from tests.fixtures import LinearModel, make_adapter

    w = torch.zeros(2, 3, 8, 8)
    w[0, :, :, :4], w[0, :, :, 4:] = 1.0, -1.0  # class 0: +1 left, -1 right in every channel
    adapter = make_adapter(LinearModel(w, torch.zeros(2)), input_size=8, num_classes=2)
    cls = get_explainer("smoothgrad")
    assert cls.signed is False and cls(adapter).signed is False and cls(adapter, absolute=False).signed is True
    assert is_signed("smoothgrad") is False and is_signed("smooth_grad", {"smooth_grad": {"absolute": False}})
    assert is_signed("smoothgrad", {"smoothgrad": {"absolute": False}}) is True
    assert is_signed("smoothgrad", {"smoothgrad": {"no_such": 1}}) is False  # an old run's params: the default
    assert is_signed("integrated_gradients") is True and is_signed("gradcam", {"gradcam": {}}) is False
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    out = explain(adapter, img, ["smoothgrad"], target=0, faithfulness=False,
                  params={"smoothgrad": {"absolute": False, "n_samples": 2}})["smoothgrad"]
    # a linear model's gradient is its weight wherever the noise moves the input: sum over channels
    assert out.signed is True
    np.testing.assert_allclose(out.model_heatmap, w[0].sum(0).numpy(), atol=1e-5)
