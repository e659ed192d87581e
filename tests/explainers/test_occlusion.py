"""Occlusion: hand-computed maps on linear models, Captum's Occlusion as the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.errors import ExplainerError
from biasscope.explainers import get_explainer, make_baseline
from biasscope.explainers.occlusion import window_starts
from tests.fixtures import LinearModel, SmoothNet, make_adapter, pixel_linear_adapter, small_mobilenet_v2_chelsea


def run_occlusion(adapter, x, targets, **params):
    return get_explainer("occlusion")(adapter, **params).run(x, targets)


def hand_map(contrib: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Mean over covering windows of the window's summed per-pixel contribution ``contrib`` (S, S)."""
    s = contrib.shape[0]
    starts = []
    r = 0
    while True:  # windows while the previous one had not reached the border; the last may be cut off
        starts.append(r)
        if r + window >= s:
            break
        r += stride
    total = np.zeros((s, s))
    count = np.zeros((s, s))
    for a in starts:
        for b in starts:
            drop = contrib[a : a + window, b : b + window].sum()
            total[a : a + window, b : b + window] += drop
            count[a : a + window, b : b + window] += 1
    assert count.min() >= 1
    return total / count


def test_window_starts_cover_the_border_like_captum():
    assert window_starts(8, 3, 2) == [0, 2, 4, 6]  # the last window covers only 6..7
    assert window_starts(224, 32, 16) == list(range(0, 193, 16))
    assert window_starts(10, 10, 3) == [0]


@pytest.mark.parametrize(("window", "stride"), [(3, 2), (4, 4), (3, 1), (8, 5)])
def test_linear_logit_model_gives_hand_computed_map(window, stride):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(2, 3, 8, 8, generator=g)
    adapter = make_adapter(LinearModel(weight, torch.tensor([0.3, -0.2])), input_size=8, num_classes=2)
    x = torch.rand(2, 3, 8, 8, generator=g)
    targets = torch.tensor([0, 1])
    attr = run_occlusion(adapter, x, targets, window=window, stride=stride, fill="black", output="logit")
    for i, t in enumerate(targets.tolist()):
        # black is 0 here (mean 0, std 1): occluding a window drops the logit by sum(W_t * x) over it
        contrib = (weight[t] * x[i]).sum(0).double().numpy()
        np.testing.assert_allclose(attr.maps[i].numpy(), hand_map(contrib, window, stride), rtol=1e-5, atol=1e-5)


def test_probability_output_on_linear_probability_model_with_white_fill():
    adapter = pixel_linear_adapter(16, scale=5e-3)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    attr = run_occlusion(adapter, x, torch.tensor([1]), window=4, stride=2, fill="white")
    w = adapter.model.weight.detach().double()
    contrib = (w * (x[0].double() - 1.0)).sum(0).numpy()  # white = 1: drop = sum W (x - 1)
    expected = hand_map(contrib, 4, 2)
    np.testing.assert_allclose(attr.maps[0].numpy(), expected, rtol=1e-4, atol=2e-6)
    assert expected.min() < 0 < expected.max()  # signed: occluding can raise the score
    assert attr.checks[0]["windows"] == 49


def test_single_window_is_the_whole_image_drop():
    adapter = make_adapter(SmoothNet(seed=0), input_size=12, num_classes=3)
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    attr = run_occlusion(adapter, x, torch.tensor([2]), window=12, stride=5, fill="blur", output="probability")
    base = make_baseline(adapter, x, "blur")
    p = adapter.probabilities(torch.cat([x, base]))[:, 2]
    np.testing.assert_allclose(attr.maps[0].numpy(), np.full((12, 12), float(p[0] - p[1])), atol=1e-6)


@pytest.mark.parametrize(
    ("window", "stride", "fill", "output"), [(5, 3, "black", "logit"), (4, 4, "mean", "probability")]
)
def test_matches_captum_on_a_small_network(window, stride, fill, output):
    from captum.attr import Occlusion as CaptumOcclusion

    adapter = make_adapter(
        SmoothNet(seed=1), input_size=16, num_classes=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
    )
    x = adapter.normalize(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)))
    targets = torch.tensor([0, 2])
    ours = run_occlusion(adapter, x, targets, window=window, stride=stride, fill=fill, output=output)

    def forward(z: torch.Tensor) -> torch.Tensor:
        out = adapter.model(z)
        return torch.softmax(out, 1) if output == "probability" else out

    ref = CaptumOcclusion(forward).attribute(
        x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
        baselines=make_baseline(adapter, x, fill), target=targets, perturbations_per_eval=8,
    )
    torch.testing.assert_close(ref[:, 0], ref[:, 2])  # the same value in every channel
    np.testing.assert_allclose(ours.maps.numpy(), ref[:, 0].numpy(), rtol=1e-4, atol=2e-6)


def test_noise_fill_is_seeded():
    adapter = make_adapter(SmoothNet(seed=0), input_size=12, num_classes=3)
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([1])
    a = run_occlusion(adapter, x, t, window=4, stride=2, fill="noise", seed=3)
    b = run_occlusion(adapter, x, t, window=4, stride=2, fill="noise", seed=3)
    c = run_occlusion(adapter, x, t, window=4, stride=2, fill="noise", seed=4)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    assert not torch.allclose(a.maps, c.maps)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 40}, "occlusion window 40 is larger than the model input 32x32; use window <= 32"),
        ({"window": 8, "stride": 9}, "occlusion stride 9 is larger than the window 8: pixels would be skipped"),
        ({"fill": "grey"}, "parameter fill must be one of black, mean, blur, white, noise"),
        ({"output": "logprob"}, "parameter output must be one of probability, logit"),
        ({"stride": 0}, "parameter stride must be >= 1"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(ExplainerError, match=message):
        get_explainer("occlusion")(pixel_linear_adapter(32), **params)


@pytest.mark.slow
def test_matches_captum_on_mobilenet():
    from captum.attr import Occlusion as CaptumOcclusion

    adapter, x, target = small_mobilenet_v2_chelsea(112)
    t = torch.tensor([target])
    ours = run_occlusion(adapter, x, t, window=32, stride=16, fill="black", output="probability")

    def forward(z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(adapter.model(z), 1)

    ref = CaptumOcclusion(forward).attribute(
        x, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16),
        baselines=make_baseline(adapter, x, "black"), target=t, perturbations_per_eval=32,
    )
    assert ref[0, 0].abs().max() > 0.01  # a real, non-trivial map
    np.testing.assert_allclose(ours.maps[0].numpy(), ref[0, 0].numpy(), rtol=1e-3, atol=2e-5)
