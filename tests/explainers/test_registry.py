"""The registry: methods are found by discovery (one new file adds one), listed in a declared order."""

from __future__ import annotations

import sys
import textwrap

import pytest

from biasscope.explainers import EXPLAINERS, discover, get_explainer, list_explainers

#: the order users see in the CLI, the web form and /api/explainers (CAMs first, then the others)
LISTING = ["gradcam", "gradcampp", "hirescam", "layercam", "xgradcam", "scorecam", "eigencam", "attention_rollout",
           "integrated_gradients", "gradient_shap", "guided_gradcam", "kernel_shap", "lime", "occlusion", "smoothgrad"]


def test_listing_order_is_the_declared_one():
    names = [c.name for c in list_explainers()]
    assert names == LISTING == list(EXPLAINERS)
    assert names == [c.name for c in sorted(list_explainers(), key=lambda c: (c.order, c.name))]


@pytest.fixture
def restore_registry():
    from biasscope.explainers import registry

    saved, aliases = dict(EXPLAINERS), dict(registry.ALIASES)
    yield
    EXPLAINERS.clear()
    EXPLAINERS.update(saved)
    registry.ALIASES.clear()
    registry.ALIASES.update(aliases)


def test_a_new_module_is_discovered_and_placed_by_its_order(tmp_path, monkeypatch, restore_registry):
    pkg = tmp_path / "more_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helpers.py").write_text("raise ImportError('private helpers are not imported by discovery')\n")
    (pkg / "edges.py").write_text(textwrap.dedent('''
        import torch

        from biasscope.explainers import Attribution, Explainer, register


        @register(aliases=("sobel",))
        class Edges(Explainer):
            name = "edges"
            label = "Edges"
            order = 15

            def attribute(self, x, targets):
                return Attribution(maps=x.abs().sum(1))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "more_methods.edges", raising=False)
    assert discover("more_methods", [str(pkg)]) == ["edges"]
    assert get_explainer("sobel").name == "edges"
    names = [c.name for c in list_explainers()]
    assert names == [*LISTING[:1], "edges", *LISTING[1:]]  # order 15: after Grad-CAM (10), before Grad-CAM++ (20)
