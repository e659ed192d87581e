"""Engines: the Ray engine writes the same audit results as the local engine.

Oracle: the local engine's run on the same manifest (itself tested in tests/audit). The Ray tests
start a local Ray instance (``ray.init(num_cpus=2)``) and are skipped only when Ray is not
installed.
"""

from __future__ import annotations

import math
import pickle
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from biasscope.audit import AuditConfig, RunStore, load_manifest, run_audit
from biasscope.audit.runner import ModelSource
from biasscope.engines import MSG_NO_RAY, LocalEngine, RayEngine, get_engine
from biasscope.errors import BiasscopeError, CancelledError
from tests.audit.synth import CLASSES, CONCEPTS, ColourNet, make_adapter, write_dataset

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="Ray is not installed: pip install 'biasscope[ray]'")


@pytest.fixture(autouse=True)
def _fixed_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic chunking inside every engine (the Ray engine forwards BIASSCOPE_* variables)."""
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "64")


@pytest.fixture(scope="module")
def ray_engine():
    """A local Ray instance and one engine whose two workers serve every test.

    Ray's CPU count is logical: 4 slots leave room for the CLI test's own one-worker engine while
    this engine's two actors are alive (with 2 slots that actor could never be scheduled)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'biasscope[ray]'")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    engine = RayEngine(workers=2)
    yield engine
    engine.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth")
    csv = write_dataset(root, n_per_cell=5, seed=3, broken=1)
    return load_manifest(csv, groups=["gender"])


def _config(methods: list[str]) -> AuditConfig:
    return AuditConfig(groups=["gender"], methods=methods, concepts=dict(CONCEPTS), top_k=2)


def _results(run_dir: Path) -> list[dict]:
    store = RunStore(run_dir)
    out = []
    for res in store.results():
        r = res.to_json() | {"model": res.model}
        r.pop("seconds", None)  # wall time differs between runs
        for method in r.get("shares", {}):
            r.setdefault("heatmaps", {})[method] = store.heatmap(r["model"], r["image_id"], method)
        out.append(r)
    return out


def assert_same(a, b, path: str = "") -> None:
    """Equal structure and values; floats within 1e-6 (different batch splits round differently)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, atol=2e-3, err_msg=path)  # heatmaps are stored as float16
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------- no Ray needed
def test_get_engine_resolves_names_and_rejects_unknown() -> None:
    assert isinstance(get_engine(None), LocalEngine)
    assert isinstance(get_engine("local"), LocalEngine)
    eng = LocalEngine()
    assert get_engine(eng) is eng
    with pytest.raises(BiasscopeError, match="unknown engine 'spark'; choose from local, ray"):
        get_engine("spark")
    with pytest.raises(BiasscopeError, match="local engine takes no options"):
        get_engine("local", address="auto")


def test_ray_engine_without_ray_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(BiasscopeError) as info:
        get_engine("ray")
    assert str(info.value) == MSG_NO_RAY
    assert "biasscope[ray]" in MSG_NO_RAY


def test_adapter_pickles_with_its_hook_layer_and_a_fresh_lock() -> None:
    a = make_adapter(1.0)
    a.set_batch_sizes(forward=3)
    b = pickle.loads(pickle.dumps(a))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(b.probabilities(x), a.probabilities(x), rtol=0, atol=0)
    assert b.target_layer is b.model.conv  # the layer is the one inside the copied model
    assert b.batch_sizes == {}  # measured again on the machine it lands on
    with b.hooks():  # a working (new) lock
        pass


def test_local_engine_instance_equals_default(manifest, tmp_path: Path) -> None:
    cfg = _config(["gradcam"])
    run_audit(manifest, [make_adapter(1.0, "m")], tmp_path / "a", cfg, batch_size=7, finalize=False)
    run_audit(manifest, [make_adapter(1.0, "m")], tmp_path / "b", cfg, batch_size=7, finalize=False,
              engine=LocalEngine())
    assert_same(_results(tmp_path / "a"), _results(tmp_path / "b"))
    assert RunStore(tmp_path / "b").get_meta("engine") == {"engine": "local"}


# ---------------------------------------------------------------------------------------------- Ray
@needs_ray
def test_ray_engine_writes_the_same_results_as_local(ray_engine, manifest, tmp_path: Path) -> None:
    cfg = _config(["gradcam", "integrated_gradients"])
    cfg.method_params = {"integrated_gradients": {"steps": 8}}
    models = [make_adapter(1.0, "biased"), make_adapter(0.0, "fair")]
    run_audit(manifest, models, tmp_path / "local", cfg, batch_size=6, finalize=False)
    res = run_audit(manifest, models, tmp_path / "ray", cfg, batch_size=6, finalize=False, engine=ray_engine)
    local, remote = _results(tmp_path / "local"), _results(tmp_path / "ray")
    assert len(local) == 2 * len(manifest.rows)
    assert sum(r["status"] == "error" for r in local) == 2  # the broken file, once per model
    assert any(r["status"] == "ok" and r["shares"]["gradcam"] for r in local)
    assert_same(local, remote)
    assert res.counts == RunStore(tmp_path / "local").counts()
    assert RunStore(tmp_path / "ray").get_meta("engine")["engine"] == "ray"


@needs_ray
def test_ray_engine_loads_unpicklable_models_on_the_workers(ray_engine, manifest, tmp_path: Path) -> None:
    path = tmp_path / "colournet.pt"
    torch.jit.script(ColourNet(1.0).eval()).save(str(path))
    opts = {"labels": list(CLASSES), "input_size": 32, "mean": "0,0,0", "std": "1,1,1"}
    src = ModelSource(str(path), key="scripted", options=opts)
    with pytest.raises(Exception):  # noqa: B017 - the reason for loading on the workers
        pickle.dumps(src.load().model)
    cfg = _config([])
    run_audit(manifest, [src], tmp_path / "local", cfg, batch_size=8, finalize=False)
    run_audit(manifest, [src], tmp_path / "ray", cfg, batch_size=8, finalize=False, engine=ray_engine)
    assert_same(_results(tmp_path / "local"), _results(tmp_path / "ray"))


@needs_ray
def test_cancelled_ray_run_keeps_whole_batches_and_resumes_to_the_local_result(
    ray_engine, manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(["gradcam"])
    model = make_adapter(1.0, "m")
    run_audit(manifest, [model], tmp_path / "local", cfg, batch_size=4, finalize=False)
    calls = {"n": 0}

    def cancel() -> bool:  # checked before each batch is handed to the engine
        calls["n"] += 1
        return calls["n"] > 3

    monkeypatch.setattr(ray_engine, "max_in_flight", 2)
    with pytest.raises(CancelledError):
        run_audit(manifest, [model], tmp_path / "ray", cfg, batch_size=4, finalize=False, engine=ray_engine,
                  cancel=cancel)
    store = RunStore(tmp_path / "ray")
    done = store.done_ids("m")
    assert 0 < len(done) < len(manifest.rows) and len(done) % 4 == 0  # whole batches only
    assert store.get_meta("status") == "cancelled"
    run_audit(manifest, [model], tmp_path / "ray", cfg, batch_size=4, finalize=False, engine=ray_engine)
    assert_same(_results(tmp_path / "local"), _results(tmp_path / "ray"))


# ---------------------------------------------------------------------------------------------- CLI
def _cli_model(tmp_path: Path) -> Path:
    path = tmp_path / "colournet.pt"
    torch.jit.script(ColourNet(1.0).eval()).save(str(path))
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return path


def _cli_args(manifest, model: Path, out: Path) -> list[str]:
    return ["audit", str(manifest.path), "--model", str(model), "--labels", str(model.parent / "labels.txt"),
            "--input-size", "32", "--group", "gender", "--concept", "doctor = stethoscope, lab coat",
            "--concept", "nurse = scrubs", "--out", str(out), "--n-boot", "100", "--n-perm", "100", "--json"]


def test_cli_ray_options_need_the_ray_engine(manifest, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from biasscope.cli import main

    model = _cli_model(tmp_path)
    res = CliRunner().invoke(main, [*_cli_args(manifest, model, tmp_path / "out"), "--address", "auto"])
    assert res.exit_code != 0
    assert "--address, --workers and --cpus-per-worker need --engine ray" in res.output


@needs_ray
def test_cli_engine_ray_writes_the_same_results_as_local(ray_engine, manifest, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from biasscope.cli import main

    model = _cli_model(tmp_path)
    local = CliRunner().invoke(main, _cli_args(manifest, model, tmp_path / "local"))
    assert local.exit_code == 0, local.output
    remote = CliRunner().invoke(main, [*_cli_args(manifest, model, tmp_path / "ray"), "--engine", "ray",
                                       "--workers", "1"])
    assert remote.exit_code == 0, remote.output
    assert_same(_results(tmp_path / "local"), _results(tmp_path / "ray"))
    assert RunStore(tmp_path / "ray").get_meta("engine")["workers"] == 1
