"""The runner with hand-made embeddings (a model whose embedding is the chip's mean colour): every
score is known, resuming embeds nothing twice, a replaced image is embedded again, a model change is
refused. No dlib needed."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from biasscope.errors import BiasscopeError
from biasscope.verify import ChipRecipe, EmbeddingModel, VerifyOptions, run_verify_audit

COLOURS = {  # person -> the colours of their photos (their embeddings)
    "p0": [(200, 10, 10), (190, 20, 10)],
    "p1": [(10, 200, 10), (20, 190, 10)],
    "p2": [(10, 10, 200), (10, 20, 190)],
    "p3": [(120, 120, 10), (110, 130, 10)],
}
GROUP = {"p0": "a", "p1": "a", "p2": "b", "p3": "b"}


class MeanColour(EmbeddingModel):
    """Embedding = the mean RGB of the (whole-image) chip."""

    def __init__(self, name: str = "mean-colour") -> None:
        self.name = name
        self.recipe = ChipRecipe(size=8)
        self.calls: list[int] = []

    def chip(self, image, *, face=None):
        return SimpleNamespace(image=image.convert("RGB").resize((8, 8)))

    def embed(self, chips):
        self.calls.append(len(chips))
        return np.array([np.asarray(c, dtype=np.float64).reshape(-1, 3).mean(0) for c in chips])


@pytest.fixture
def folder(tmp_path):
    rows = ["path,identity,group"]
    for person, cols in COLOURS.items():
        for k, c in enumerate(cols):
            Image.new("RGB", (16, 16), c).save(tmp_path / f"{person}_{k}.png")
            rows.append(f"{person}_{k}.png,{person},{GROUP[person]}")
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _cos(u, v):
    u, v = np.asarray(u, float), np.asarray(v, float)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_scores_are_the_cosines_of_the_embeddings_and_resume(folder, tmp_path):
    model = MeanColour()
    out = tmp_path / "run"
    opts = VerifyOptions(far=0.5, n_boot=50)
    res = run_verify_audit(folder / "ids.csv", out=out, model=model, groups=["group"], options=opts, plots=False)
    assert sum(model.calls) == 8  # each image once
    colour = {f"{p}_{k}.png": c for p, cols in COLOURS.items() for k, c in enumerate(cols)}
    with (out / "pairs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # 4 genuine pairs; same-group impostors: 4 in a (p0 x p1) and 4 in b; cross-group: 16
    assert sorted(r["kind"] for r in rows).count("genuine") == 4 and len(rows) == 4 + 8 + 16
    for r in rows:
        assert float(r["score"]) == pytest.approx(_cos(colour[r["path_a"]], colour[r["path_b"]]), abs=1e-12)
    # far 0.5 over 8 same-group impostors: k = 4, the threshold is the 5th highest impostor score
    imp = sorted((float(r["score"]) for r in rows if r["kind"] == "impostor"), reverse=True)
    assert res.metrics["overall"]["threshold"] == pytest.approx(imp[4])
    # other groups, FAR and sampling: every embedding is reused
    model.calls.clear()
    run_verify_audit(folder / "ids.csv", out=out, model=model, options=VerifyOptions(far=0.25, n_boot=50),
                     plots=False)
    assert model.calls == []
    # a replaced image is embedded again (and only it)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(folder / "p0_1.png")  # another size: a new stamp on any FS
    res3 = run_verify_audit(folder / "ids.csv", out=out, model=model, groups=["group"], options=opts, plots=False)
    assert model.calls == [1]
    gen0 = res3.scores[(res3.scores["kind"] == "genuine") & (res3.scores["identity_a"] == "p0")]["score"]
    assert float(gen0.iloc[0]) == pytest.approx(_cos((200, 10, 10), (0, 0, 255)))
    # a different model is refused in the same folder
    with pytest.raises(BiasscopeError, match="different model"):
        run_verify_audit(folder / "ids.csv", out=out, model=MeanColour("other"), plots=False)
    assert json.loads((out / "metrics.json").read_text())["manifest"]["n_images"] == 8


def test_impostor_explanations_pick_the_top_scoring_pairs(folder, tmp_path, monkeypatch):
    import biasscope.verify.explain as explain_mod
    from biasscope.verify import PairExplanation, VerifyStore, explain_subgroups, load_pairs

    model = MeanColour()
    res = run_verify_audit(folder / "ids.csv", out=tmp_path / "r", model=model, groups=["group"],
                           options=VerifyOptions(far=0.5, n_boot=50), plots=False)
    calls = []

    def fake_explain(model, ca, cb, **kw):
        calls.append(kw)
        z = np.zeros((8, 8), np.float32)
        return PairExplanation(score=0.0, heat_a=z, heat_b=z, shares_a={"eyes": 1.0}, shares_b={"eyes": 1.0},
                               method=kw["method"], areas_a={"eyes": 0.5}, areas_b={"eyes": 0.5})

    monkeypatch.setattr(explain_mod, "explain_pair", fake_explain)
    pairs = load_pairs(folder / "ids.csv", groups=["group"])
    store = VerifyStore(tmp_path / "r")
    got = explain_subgroups(model, pairs, res.scores, store, per_subgroup=2, kind="impostor")
    imp = res.scores[res.scores["kind"] == "impostor"]
    # each subgroup has two people: its best impostor pair uses both, so a second pair is impossible
    want = sorted(int(imp.loc[imp[imp["subgroup"] == s]["score"].idxmax(), "pair_id"]) for s in ("a", "b"))
    assert sorted(e["pair_id"] for e in got) == want and all(e["kind"] == "impostor" for e in got)
    assert len(calls) == 2
    # stored: asking again explains nothing new
    again = explain_subgroups(model, pairs, res.scores, store, per_subgroup=2, kind="impostor")
    assert len(calls) == 2 and [e["pair_id"] for e in again] == [e["pair_id"] for e in got]
