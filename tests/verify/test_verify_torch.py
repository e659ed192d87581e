"""User embedding models (TorchScript, ONNX) with their chip recipe; gradient and occlusion explanations
of the match score checked by hand; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

pytest.importorskip("dlib", reason="needs the faces extra: pip install 'biasscope[faces]'")

SIZE = 32
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.25, 0.25)


class PoolEmbed(nn.Module):
    """8x8 average pooling then a fixed linear map; only the pooled cells in ``cells`` count."""

    def __init__(self, cells: list[int] | None = None) -> None:
        super().__init__()
        w = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 3 * 16))).float()
        if cells is not None:
            keep = torch.zeros(3, 16)
            keep[:, cells] = 1
            w = w * keep.reshape(1, -1)
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8).flatten(1) @ self.w.T


def _by_hand(chip: np.ndarray, w: np.ndarray) -> np.ndarray:
    x = (chip / 255.0 - np.array(MEAN)) / np.array(STD)  # (s, s, 3)
    pooled = x.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3))  # (4, 4, 3)
    return w @ pooled.transpose(2, 0, 1).reshape(-1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_models")
    m = PoolEmbed().eval()
    x = torch.zeros(1, 3, SIZE, SIZE)
    ts = root / "embed.pt"
    torch.jit.trace(m, x).save(str(ts))
    ox = root / "embed.onnx"
    torch.onnx.export(m, x, str(ox), input_names=["x"], output_names=["e"],
                      dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, dynamo=False, opset_version=17)
    return {"torchscript": ts, "onnx": ox, "w": m.w.detach().numpy().astype(np.float64)}


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_user_model_embeds_chips_as_stated(model_files, photos, kind):
    pytest.importorskip("onnx2torch")
    from biasscope.verify import ChipRecipe, load_embedding_model

    recipe = ChipRecipe(size=SIZE, padding=0.25, landmarks=5, mean=MEAN, std=STD)
    model = load_embedding_model(model_files[kind], recipe=recipe)
    chip = np.asarray(model.chip(photos["astronaut"]).image)
    assert chip.shape == (SIZE, SIZE, 3)
    got = model.embed([chip])[0]
    want = _by_hand(chip.astype(np.float64), model_files["w"])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_user_model_needs_its_recipe(model_files):
    from biasscope.errors import ModelError
    from biasscope.verify import load_embedding_model

    with pytest.raises(ModelError, match="needs its chip recipe"):
        load_embedding_model(model_files["torchscript"])
    with pytest.raises(ModelError, match="unknown embedding model 'facenet'"):
        load_embedding_model("facenet")


@pytest.fixture(scope="module")
def chips(photos):
    from PIL import ImageOps

    from biasscope.verify import ChipRecipe, face_chip

    r = ChipRecipe(size=SIZE, padding=0.25, landmarks=5, mean=MEAN, std=STD)
    return face_chip(photos["astronaut"], r), face_chip(ImageOps.mirror(photos["hopper"]), r)


def test_gradient_explanation_is_the_directional_derivative(chips):
    from biasscope.verify import ChipRecipe, TorchEmbeddingModel, explain_pair

    recipe = ChipRecipe(size=SIZE, padding=0.25, landmarks=5, mean=MEAN, std=STD)
    # float64 so that a central difference is an exact enough oracle; reads the top-left 16x16 only
    model = TorchEmbeddingModel(PoolEmbed([0, 1, 4, 5]), recipe, dtype=torch.float64)
    ca, cb = chips
    ex = explain_pair(model, ca, cb, method="gradient")
    assert np.all(ex.heat_a[16:, :] == 0) and np.all(ex.heat_a[:, 16:] == 0)
    assert np.abs(ex.heat_a[:16, :16]).max() > 0
    # heat at a pixel = d/dt cos(f(x + t * x_pixel), f(b)) at t = 0 (gradient x input, channels summed)
    x = model.to_tensor([np.asarray(ca.image), np.asarray(cb.image)])

    def cos(xa):
        e = model.torch_embed(torch.cat([xa, x[1:2]]))
        return float(F.cosine_similarity(e[0:1], e[1:2]))

    h = 1e-4
    for r, c in ((3, 5), (10, 12), (15, 0)):
        up, down = x[0:1].clone(), x[0:1].clone()
        up[0, :, r, c] *= 1 + h
        down[0, :, r, c] *= 1 - h
        fd = (cos(up) - cos(down)) / (2 * h)
        assert float(ex.heat_a[r, c]) == pytest.approx(fd, abs=1e-5 * float(np.abs(ex.heat_a).max()))


def test_occlusion_only_where_the_model_looks(chips):
    from biasscope.verify import ChipRecipe, TorchEmbeddingModel, explain_pair

    recipe = ChipRecipe(size=SIZE, padding=0.25, landmarks=5, mean=MEAN, std=STD)
    model = TorchEmbeddingModel(PoolEmbed([0, 1, 4, 5]), recipe)
    ca, cb = chips
    ex = explain_pair(model, ca, cb, method="occlusion", patch=8, stride=8)
    for heat in (ex.heat_a, ex.heat_b):
        inside = float(np.abs(heat[:16, :16]).max())
        assert inside > 0
        # occluding what the model never reads changes nothing (up to float32 rounding of the batch)
        assert float(np.abs(heat[16:, :]).max()) <= 1e-5 * inside
        assert float(np.abs(heat[:, 16:]).max()) <= 1e-5 * inside


def test_part_shares_by_hand():
    from biasscope.verify import part_shares

    heat = np.array([[1.0, 3.0], [-5.0, 0.0]])
    masks = {"eyes": np.array([[True, False], [False, False]]), "mouth": np.array([[False, True], [True, True]])}
    assert part_shares(heat, masks) == {"eyes": 0.25, "mouth": 0.75}  # negatives do not count
    assert all(np.isnan(v) for v in part_shares(-np.abs(heat), masks).values())


def test_cli_verify_audit_with_user_model_and_why(model_files, identity_folder, tmp_path):
    from biasscope.cli import main

    out = tmp_path / "cli_run"
    args = ["verify-audit", str(identity_folder / "identities.csv"), "--model", str(model_files["torchscript"]),
            "--chip-size", str(SIZE), "--padding", "0.25", "--landmarks", "5", "--mean", "0.5,0.4,0.3",
            "--std", "0.25,0.25,0.25", "--group", "set", "--far", "0.05", "--n-boot", "100",
            "--explain", "2", "--explain-method", "gradient", "--out", str(out), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    m = json.loads((out / "metrics.json").read_text())
    for name in ("portrait", "lfw"):
        e = m["groupings"]["set"]["subgroups"][name]
        assert {"n_genuine", "n_impostor", "fmr", "fnmr", "tar_at_far", "threshold"} <= set(e)
        assert summary["subgroups"]["set"][name]["fmr"] == e["fmr"]
    why = m["why"]["groupings"]["set"]["subgroups"]
    assert why["portrait"]["n"] == 2 and why["lfw"]["n"] == 2  # one pair per identity, 2 per subgroup
    shares = [why["portrait"][p]["mean"] for p in ("eyes", "eyebrows", "mouth", "nose", "jaw_chin", "face_skin",
                                                   "hair_band", "background")]
    assert sum(s for s in shares if s is not None) == pytest.approx(1.0)
    # the parts partition each chip: their mean areas add up to the whole chip
    assert sum(v["area"] for k, v in why["portrait"].items() if k != "n") == pytest.approx(1.0)
    assert "share of the positive attribution on each face part" in (out / "report.html").read_text()
    # the same command again, human-readable: resumes from the store and prints the figures
    again = CliRunner().invoke(main, [a for a in args if a != "--json"])
    assert again.exit_code == 0, again.output
    assert f"global threshold {m['overall']['threshold']:.4f} at FAR 0.05" in again.output
    assert "portrait: FMR" in again.output
    # a malformed --mean is a usage error, not a traceback
    bad = CliRunner().invoke(main, [*args[:10], "--mean", "0.5,0.4", *args[12:]])
    assert bad.exit_code == 2 and "expected three numbers" in bad.output


def test_onnx_model_with_the_wrong_chip_size_is_refused(model_files):
    pytest.importorskip("onnx2torch")
    from biasscope.errors import ModelError
    from biasscope.verify import ChipRecipe, load_embedding_model

    with pytest.raises(ModelError, match="check --chip-size"):
        load_embedding_model(model_files["onnx"], recipe=ChipRecipe(size=20))  # 20 px pools to a 2x2 grid
