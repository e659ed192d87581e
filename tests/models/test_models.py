"""Model loading: torchvision zoo offline, state dicts, checkpoints, ONNX, TorchScript, hashes."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from biasscope.errors import BiasscopeError, ModelError, WeightsMissingError
from biasscope.images import load_image
from biasscope.models import SUPPORTED_MODELS, fetch_weights, load_model, save_checkpoint, zoo_status
from biasscope.models.zoo import build_architecture, default_target_layer


@pytest.fixture(scope="module")
def mobilenet():
    return load_model("mobilenet_v2")


def test_real_mobilenet_predictions(mobilenet):
    coffee, cat = (load_image(data.coffee()), load_image(data.chelsea()))
    preds = mobilenet.predict([coffee, cat], top=3)
    assert preds[0][0].label == "espresso" and preds[0][0].probability > 0.9
    assert preds[1][0].label in {"Egyptian cat", "tabby", "tiger cat"}
    # probabilities are a distribution and ranked
    assert preds[1][0].probability >= preds[1][1].probability >= preds[1][2].probability
    assert mobilenet.class_names[967] == "espresso"
    assert mobilenet.target_layer_name == "features.18"


def test_preprocess_matches_torchvision_normalisation(mobilenet):
    img = load_image(np.full((10, 20, 3), 255, dtype=np.uint8))
    x = mobilenet.preprocess(img)
    assert x.shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor(mobilenet.mean)) / torch.tensor(mobilenet.std)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-6)


def test_missing_weights_message_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsMissingError) as err:
        load_model("resnet18")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--download" in msg and "--weights FILE" in msg
    info = zoo_status("mobilenet_v2")
    assert not info.ready and info.fix == "biasscope weights fetch mobilenet_v2"


def test_fetch_weights_checks_hash_and_installs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = fetch_weights("mobilenet_v2")
    assert path == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert zoo_status("mobilenet_v2").ready
    # a corrupted cache file is replaced, not trusted
    path.write_bytes(b"garbage")
    assert fetch_weights("mobilenet_v2").stat().st_size > 10_000_000


def test_unknown_model_and_variant():
    with pytest.raises(ModelError, match="unknown model 'resnet19'"):
        load_model("resnet19")
    with pytest.raises(ModelError, match="no weights 'NOPE'"):
        load_model("mobilenet_v2:NOPE")


def test_every_documented_model_has_a_real_default_layer():
    for name in ["resnet18", "resnet50", "vgg16", "mobilenet_v2", "mobilenet_v3_large",
                 "efficientnet_b0", "googlenet", "inception_v3"]:
        model = build_architecture(name, 10).eval()
        layer, path = default_target_layer(model, name)
        assert path == SUPPORTED_MODELS[name]
        seen: dict = {}

        def grab(_m, _i, o, seen=seen):
            seen["shape"] = o.shape

        h = layer.register_forward_hook(grab)
        size = 299 if name == "inception_v3" else 224
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        h.remove()
        assert len(seen["shape"]) == 4 and seen["shape"][-1] >= 5, name  # a spatial map to weight


def test_state_dict_with_labels(tmp_path):
    torch.manual_seed(0)
    net = build_architecture("resnet18", 3).eval()
    sd_path = tmp_path / "ft.pth"
    torch.save(net.state_dict(), sd_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("doctor\nnurse\n\nengineer\n")
    adapter = load_model("resnet18", weights=sd_path, labels=labels)
    assert adapter.class_names == ["doctor", "nurse", "engineer"]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(adapter.logits(x), net(x), atol=1e-5)
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ModelError, match="3 outputs but 2 class names"):
        load_model("resnet18", weights=sd_path, labels=bad)
    with pytest.raises(ModelError, match="state dict, not a full model"):
        load_model(sd_path)


def test_state_dict_wrong_architecture(tmp_path):
    sd = tmp_path / "m.pth"
    torch.save(build_architecture("resnet18", 4).state_dict(), sd)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        load_model("mobilenet_v2", weights=sd)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model("resnet18", weights=p)
    assert "pwned" not in capsys.readouterr().out


def test_checkpoint_roundtrip(tmp_path):
    net = build_architecture("mobilenet_v2", 2).eval()
    ck = tmp_path / "fair.pt"
    save_checkpoint(ck, arch="mobilenet_v2", state_dict=net.state_dict(), class_names=["female", "male"],
                    input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    adapter = load_model(ck)
    assert adapter.class_names == ["female", "male"] and adapter.input_size == 64
    assert adapter.mean == (0.5, 0.5, 0.5) and adapter.target_layer_name == "features.18"


def _tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def test_onnx_model_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = _tiny()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, 32, 32), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    adapter = load_model(path, labels=["a", "b", "c"])
    assert adapter.input_size == 32 and "onnxruntime" in adapter.note
    x = torch.randn(3, 3, 32, 32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(adapter.logits(x).numpy(), ref, atol=1e-5)
    assert adapter.target_layer is not None  # last Conv2d found for CAMs


def test_torchscript_model_has_no_hooks(tmp_path):
    net = _tiny()
    path = tmp_path / "tiny.ts"
    torch.jit.trace(net, torch.randn(1, 3, 32, 32)).save(str(path))
    adapter = load_model(path, input_size=32)
    assert not adapter.supports_hooks and adapter.class_names == ["class_0", "class_1", "class_2"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(adapter.logits(x), net(x), atol=1e-6)


def test_class_index_by_name(mobilenet):
    assert mobilenet.class_index("Espresso") == 967
    assert mobilenet.class_index("967") == 967
    with pytest.raises(BiasscopeError, match=r"did you mean: .*stethoscope"):
        mobilenet.class_index("stethoscop")
    with pytest.raises(BiasscopeError, match="out of range"):
        mobilenet.class_index(5000)


def test_cuda_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model("mobilenet_v2", device="cuda")


# ------------------------------------------------------------------ files that are not what they claim
def test_binary_labels_file_is_refused_clearly(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError, match=r"labels file .*labels.txt is not UTF-8 text \(a binary file\?\)"):
        load_model("resnet18", weights=tmp_path / "unused.pth", labels=p)
    p.write_bytes(b"cat\x00\x00\x00dog\n")  # valid UTF-8, but NUL bytes: not a text file either
    with pytest.raises(ModelError, match="is not UTF-8 text"):
        load_model("resnet18", weights=tmp_path / "unused.pth", labels=p)


def test_a_file_that_is_no_model_is_called_so(tmp_path):
    p = tmp_path / "passwd"
    p.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ModelError) as err:
        load_model(p)
    msg = str(err.value)
    assert "is not a model file biasscope can read" in msg and "state dict" in msg
    assert "is a state dict, not a full model" not in msg
    # a real state dict given as --model still gets the advice to name the architecture
    sd = tmp_path / "weights.pth"
    torch.save(_tiny().state_dict(), sd)
    with pytest.raises(ModelError, match="is a state dict, not a full model: give the architecture too"):
        load_model(sd)


def test_broken_torchscript_says_why(tmp_path):
    import zipfile

    good = tmp_path / "good.pt"
    torch.jit.trace(_tiny(), torch.randn(1, 3, 32, 32)).save(str(good))
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():  # a pickle that would call os.system('id') where the weights should be
            evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
            zout.writestr(name, evil if name.endswith("data.pkl") else zin.read(name))
    with pytest.raises(ModelError) as err:
        load_model(bad)
    msg = str(err.value)
    assert "is not a loadable TorchScript file (" in msg and "): " not in msg
    reason = msg.split("TorchScript file (", 1)[1].split(")", 1)[0]
    assert reason.strip(), msg


def test_empty_and_junk_onnx_files(tmp_path):
    pytest.importorskip("onnx2torch")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"ONNX file .*empty.onnx is empty \(0 bytes\)"):
        load_model(empty)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07")  # parses as a protobuf with an IR version and nothing else
    with pytest.raises(ModelError, match="is not an ONNX model: it holds no graph"):
        load_model(junk)
    text = tmp_path / "text.onnx"
    text.write_text("definitely not protobuf " * 10)
    with pytest.raises(ModelError, match="is not an ONNX model"):
        load_model(text)


def test_weights_only_refusal_names_the_object_and_is_whole(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "f": print}, p)
    with pytest.raises(ModelError) as err:
        load_model("resnet18", weights=p)
    msg = str(err.value)
    assert "refused it: Unsupported global: GLOBAL print was not an allowed global by default)" in msg
    assert "\x1b[" not in msg and " . " not in msg and "file ." not in msg
    assert msg.endswith("export the model to TorchScript or ONNX.")
    raw = tmp_path / "raw.pth"  # a plain pickle, not a torch file: the unpickler names the opcode it refused
    with open(raw, "wb") as f:
        pickle.dump({"w": print}, f, protocol=4)
    with pytest.raises(ModelError, match=r"refused it: Unsupported operand \d+\)\. It must hold only tensors"):
        load_model("resnet18", weights=raw)


def test_failed_download_is_one_sentence_naming_file_and_folder(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ModelError) as err:
        fetch_weights("resnet18", download=True)
    msg = str(err.value)
    folder = tmp_path / "hub" / "checkpoints"
    assert msg.startswith("downloading resnet18-f37072fd.pth failed ([Errno 101] Network is unreachable)")
    assert f"into {folder}" in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "\n" not in msg and not list(folder.glob("*.pth"))
    with pytest.raises(ModelError, match=r"downloading resnet18-f37072fd\.pth failed"):
        load_model("resnet18", download=True)
