"""Hand-computable checks of the split, sampling, weights, bootstrap, augmentation and backbones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from biasscope.errors import BiasscopeError, WeightsMissingError
from biasscope.training import (
    augment_batch,
    balanced_weights,
    build_backbone,
    head_name,
    inverse_frequency_weights,
    paired_bootstrap,
    parse_proportions,
    skew_subset,
    stratified_split,
    underrepresented_groups,
)
from biasscope.training.data import Example


def _examples(cells: dict[tuple[int, str], int], synthetic: int = 0) -> list[Example]:
    out: list[Example] = []
    for (y, g), n in sorted(cells.items()):
        for _ in range(n):
            out.append(Example(len(out), Path(f"/x/{len(out)}.png"), f"{len(out)}.png", str(y), y, g, False))
    for _ in range(synthetic):
        out.append(Example(len(out), Path(f"/x/{len(out)}.png"), f"{len(out)}.png", "1", 1, "b", True))
    return out


def test_stratified_split_counts_per_cell_and_synthetic_only_in_train():
    ex = _examples({(0, "a"): 50, (1, "a"): 30, (0, "b"): 10, (1, "b"): 3}, synthetic=7)
    train, val = stratified_split(ex, val_fraction=0.2, seed=0)
    cells = Counter((ex[i].y, ex[i].group) for i in val)
    # round(0.2 * n), at least one for cells of two or more
    assert cells == {(0, "a"): 10, (1, "a"): 6, (0, "b"): 2, (1, "b"): 1}
    assert not any(ex[i].synthetic for i in val)
    assert sorted(train + val) == list(range(len(ex)))
    assert stratified_split(ex, val_fraction=0.2, seed=0) == (train, val)
    assert stratified_split(ex, val_fraction=0.2, seed=1)[1] != val


def test_skew_subset_has_the_asked_proportions_and_keeps_label_mix():
    ex = _examples({(0, "a"): 60, (1, "a"): 40, (0, "b"): 30, (1, "b"): 30})
    idx = list(range(len(ex)))
    sub = skew_subset(ex, idx, parse_proportions("a=3,b=1"), seed=0)
    # the limit is a: 100 images at share 0.75 -> 133 in all -> a 100, b 33
    groups = Counter(ex[i].group for i in sub)
    assert groups == {"a": 100, "b": 33}
    labels_b = Counter(ex[i].y for i in sub if ex[i].group == "b")
    assert sorted(labels_b.values()) == [16, 17]  # b's 50/50 label mix kept
    assert skew_subset(ex, idx, {"a": 0.75, "b": 0.25}, seed=0) == sub
    with pytest.raises(BiasscopeError, match="not in the training data"):
        skew_subset(ex, idx, {"c": 1.0}, seed=0)
    with pytest.raises(BiasscopeError, match="GROUP=SHARE"):
        parse_proportions("a=0.5,b=-1")


def test_balancing_and_inverse_frequency_weights_by_hand():
    ex = _examples({(0, "a"): 6, (1, "a"): 2, (0, "b"): 1, (1, "b"): 1})
    idx = list(range(len(ex)))
    p = balanced_weights(ex, idx, "label-group")
    for key, n in {(0, "a"): 6, (1, "a"): 2, (0, "b"): 1, (1, "b"): 1}.items():
        members = [i for i in idx if (ex[i].y, ex[i].group) == key]
        assert p[members] == pytest.approx([1 / (4 * n)] * n)
    in_a = np.array([e.group == "a" for e in ex])
    pg = balanced_weights(ex, idx, "group")
    assert pg[in_a].sum() == pytest.approx(0.5) and pg[~in_a].sum() == pytest.approx(0.5)
    w = inverse_frequency_weights(ex, idx, "group")  # N=10, K=2: a (8) -> 10/16, b (2) -> 10/4
    assert w[in_a] == pytest.approx([10 / 16] * 8) and w[~in_a] == pytest.approx([2.5, 2.5])
    assert w.mean() == pytest.approx(1.0)
    assert underrepresented_groups(ex, idx) == ["b"]
    assert underrepresented_groups(ex, [i for i in idx if in_a[i]]) == []


def test_paired_bootstrap_matches_direct_resampling():
    rng = np.random.default_rng(5)
    correct = rng.integers(0, 2, size=(2, 30)).astype(float)
    groups = np.array(["a"] * 20 + ["b"] * 10)
    ga, oa, names = paired_bootstrap(correct, groups, n_boot=50, seed=7)
    assert names == ["a", "b"]
    ref = np.random.default_rng(7)
    ia = np.flatnonzero(groups == "a")
    ib = np.flatnonzero(groups == "b")
    da = ref.integers(0, 20, size=(50, 20))
    db = ref.integers(0, 10, size=(50, 10))
    for m in range(2):
        assert ga[:, m, 0] == pytest.approx(correct[m, ia][da].mean(1))
        assert ga[:, m, 1] == pytest.approx(correct[m, ib][db].mean(1))
        assert oa[:, m] == pytest.approx((correct[m, ia][da].sum(1) + correct[m, ib][db].sum(1)) / 30)
    same, _, _ = paired_bootstrap(np.stack([correct[0], correct[0]]), groups, n_boot=20, seed=1)
    assert np.array_equal(same[:, 0], same[:, 1])  # paired: identical models never differ


def test_augmentation_is_seeded_and_strong_only_where_asked():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    strong = torch.tensor([True, False, True, False, False, False])
    a = augment_batch(x, mode="none", strong=strong, generator=torch.Generator().manual_seed(3))
    b = augment_batch(x, mode="none", strong=strong, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    plain = x.float() / 255
    assert torch.equal(a[~strong], plain[~strong])  # untouched without augmentation
    assert not torch.equal(a[strong], plain[strong])
    c = augment_batch(x, mode="standard", strong=None, generator=torch.Generator().manual_seed(3))
    # standard augmentation only flips and shifts: the multiset of pixel values per channel is kept
    # except at the reflected border, so the colours stay within the original's range
    assert c.min() >= plain.min() and c.max() <= plain.max()


def test_backbone_head_and_pretrained_weights():
    m = build_backbone("resnet18", 3, pretrained=False)
    assert head_name(m) == "fc" and m.fc.out_features == 3
    with pytest.raises(WeightsMissingError, match=r"resnet18-f37072fd\.pth"):
        build_backbone("resnet18", 3, pretrained=True)
    from biasscope.models.zoo import zoo_status

    if not zoo_status("mobilenet_v2").ready:
        pytest.skip("MobileNetV2 weights are not in the torch hub cache")
    from biasscope.models.zoo import build_zoo_model

    mb = build_backbone("mobilenet_v2", 2, pretrained=True)
    ref, _ = build_zoo_model("mobilenet_v2")
    assert head_name(mb) == "classifier.1" and mb.classifier[1].out_features == 2
    sd, rsd = mb.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], rsd[k]) for k in sd if not k.startswith("classifier.1."))
