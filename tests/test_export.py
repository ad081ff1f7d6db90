"""``ltexport``: the evaluated model of a run as TorchScript and ONNX, checked against the run's own
model on its test images, the metadata read back, and the refusals."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch

from conftest import PerEntry, digits
from lttoolbox.cli_export import export_model, main as ltexport, read_metadata
from lttoolbox.engine import train
from lttoolbox.models import HEADS
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS, MODELS
from lttoolbox.runs import open_run

# torch.jit.load is deprecated upstream (torch 2.9+); reading TorchScript is what is tested here
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.load.* is deprecated")

#: The file's logits against the model's: 1e-5 times max(1, max |logit|). float32 kernels of
#: another library (onnxruntime's convolutions) round differently, and a one-epoch ResNet-32 has
#: logits in the hundreds, where neighbouring float32 values are 1.5e-5 to 3e-5 apart.
ATOL = 1e-5


def close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(got, expected, rtol=0,
                          atol=ATOL * max(1.0, float(expected.abs().max())))


def split_of(run_dir) -> tuple[torch.Tensor, np.ndarray]:
    """The run's test split: uint8 images and labels, as evaluation reads them."""
    data = DATASETS.build(open_run(run_dir, device="cpu").recipe["data"], key="data")
    return torch.as_tensor(data.test.images), np.asarray(data.test.labels)


def jit_logits(path, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    files = {"lttoolbox.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    with torch.no_grad():
        return module(x), json.loads(files["lttoolbox.json"])


def onnx_logits(path, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    meta = session.get_modelmeta().custom_metadata_map
    return torch.from_numpy(logits), {k: json.loads(v) for k, v in meta.items()}


def file_logits(fmt: str, path, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return (jit_logits if fmt == "torchscript" else onnx_logits)(path, x)


def needs(fmt: str) -> None:
    if fmt == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(name, reason="the [onnx] extra is not installed")


def reference(run_dir, weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test images and the logits evaluation computes for them (open_run's model and
    evaluation transform)."""
    run = open_run(run_dir, weights, device="cpu")
    images, _ = split_of(run_dir)
    with torch.no_grad():
        return images, run.model(run.eval_transform(images)).float()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch digits run."""
    out = tmp_path_factory.mktemp("export") / "run"
    train(resolve(digits(train={"epochs": 1})), out, quiet=True)
    return out


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_file_gives_the_logits_of_the_run_and_reproduces_its_evaluation(run_dir, tmp_path,
                                                                            fmt, capsys):
    needs(fmt)
    out = tmp_path / f"m.{fmt}"
    assert ltexport([str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    images, expected = reference(run_dir)
    got, meta = file_logits(fmt, out, images)  # uint8 images: the file normalises
    assert got.shape == expected.shape == (images.shape[0], 10)
    assert close(got, expected), (got - expected).abs().max()
    # its predictions on the test split are the run's evaluation, image for image
    _, labels = split_of(run_dir)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, got.argmax(1).numpy()), 1)
    results = json.loads((run_dir / "results.json").read_text())
    assert confusion.tolist() == results["confusion_matrix"]
    for size in (1, 7):  # the batch axis is free
        assert close(file_logits(fmt, out, images[:size])[0], expected[:size])
    # the metadata, as the format's own reader sees it and as read_metadata returns it
    info = json.loads((run_dir / "data.json").read_text())
    assert meta == read_metadata(out)
    assert meta["classes"] == info["classes"] == [str(c) for c in range(10)]
    assert meta["mean"] == info["mean"] and meta["std"] == info["std"]
    assert meta["input"] == "uint8" and meta["input_shape"] == ["batch", 1, 8, 8]
    assert meta["in_channels"] == 1 and meta["image_size"] == 8
    assert meta["train_class_counts"] == info["train_class_counts"]
    assert meta["model"]["name"] == "digits_cnn" and meta["weights"] == "model-main.pt"
    if fmt == "torchscript":  # the network's own tensors, nothing more
        model = open_run(run_dir, device="cpu").model
        assert plain_state(out) == {f"model.{k}" for k in model.state_dict()}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["float", "normalized"])
def test_float_and_normalized_inputs(run_dir, tmp_path, fmt, kind):
    needs(fmt)
    out = tmp_path / f"m.{fmt}"
    assert ltexport([str(run_dir), "--format", fmt, "--out", str(out), "--input", kind]) == 0
    images, expected = reference(run_dir)
    info = json.loads((run_dir / "data.json").read_text())
    x = images.double() / 255.0  # [0, 1]; normalised by hand in float64 for the bare network
    if kind == "normalized":
        x = (x - info["mean"][0]) / info["std"][0]
    got, meta = file_logits(fmt, out, x.float())
    assert close(got, expected), (got - expected).abs().max()
    assert meta["input"] == kind and meta["input_dtype"] == "float32"


#: The context the trainer gives each registered model here (its smallest input keeps the export
#: cheap), and whether it is large enough (tens of seconds per export on a busy CPU) to be a
#: ``long`` test.
CONTEXT = PerEntry(MODELS, {
    "digits_cnn": (dict(in_channels=1, image_size=8), False),
    "resnet32": (dict(in_channels=3, image_size=32), False),
    "resnet10": (dict(in_channels=3, image_size=32), False),
    **{name: (dict(in_channels=3, image_size=32), True)
       for name in ("resnet50", "resnet152", "resnext50_32x4d")},
    # two branches on the same image, as evaluated
    "two_branch_digits_cnn": (dict(in_channels=1, image_size=8), False),
    "two_branch_resnet32": (dict(in_channels=3, image_size=32), True),
    # one small timm CNN (the [timm] extra; skipped without it)
    "timm": (dict(in_channels=3, image_size=32, arch="test_resnet"), False),
}, where="CONTEXT in tests/test_export.py")


def model_cases():
    return [pytest.param(name, fmt, marks=[pytest.mark.long] if CONTEXT[name][1] else [],
                         id=f"{name}-{fmt}")
            for name in CONTEXT.names for fmt in ("torchscript", "onnx")]


def test_the_model_table_names_every_model():
    CONTEXT.check()


@pytest.mark.parametrize("name, fmt", model_cases())
def test_every_model_exports(name, fmt):
    """Each registered model (BatchNorm statistics and weights random, in eval mode) gives its
    logits from the file, uint8 images normalised inside."""
    needs(fmt)
    context = dict(CONTEXT[name][0])
    if "arch" in context:
        pytest.importorskip("timm", reason="the [timm] extra is not installed")
    torch.manual_seed(0)
    model = MODELS.build({"name": name, **({"arch": context.pop("arch")} if "arch" in context
                                            else {})}, num_classes=5, **context).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                tensor.copy_(torch.rand_like(tensor) + (0.5 if key.endswith("var") else -0.5))
    c, s = context["in_channels"], context["image_size"]
    mean, std = [0.4, 0.5, 0.6][:c], [0.2, 0.25, 0.3][:c]
    meta = {"format": "test", "input_shape": ["batch", c, s, s]}
    data, _ = export_model(model, fmt, meta, mean, std, input="uint8")
    x = torch.randint(0, 256, (2, c, s, s), dtype=torch.uint8)
    normalised = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, c, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, c, 1, 1)
    with torch.no_grad():
        expected = model(normalised.float())
    assert close(run_bytes(fmt, data, x), expected)


def run_bytes(fmt: str, data: bytes, x: torch.Tensor) -> torch.Tensor:
    """The logits of a serialised file, read with the format's own library."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(io.BytesIO(data))(x)
    import onnxruntime
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_exports_with_its_post_hoc_parameters(head, fmt):
    """Each registered head, its parameters and buffers (tau, scales, MARC's a and b, the taken
    over rows) set to random values, gives the model's logits from the file."""
    needs(fmt)
    torch.manual_seed(0)
    model = MODELS.build({"name": "digits_cnn", "head": head}, num_classes=5).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith(("running_var", "tau"))
                             else torch.randn_like(tensor))
    meta = {"format": "test", "input_shape": ["batch", 1, 8, 8]}
    data, _ = export_model(model, fmt, meta, [0.3], [0.4], input="normalized")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert close(run_bytes(fmt, data, x), expected)


@pytest.mark.long
def test_each_phase_exports_the_head_evaluation_uses(tmp_path):
    """joint -> cRT -> LWS -> tau-norm: each phase's weights export that phase's head, and the
    run's default is the last phase, whose evaluation the file reproduces."""
    recipe = resolve(digits(train={"epochs": 1}, phases=[
        {"name": "joint"},
        {"name": "crt", "sampler": {"name": "class_balanced"},
         "train": {"freeze": ["backbone"], "reset_head": True}},
        {"name": "lws", "model": {"head": "lws"}, "sampler": {"name": "class_balanced"},
         "train": {"freeze": ["backbone"]}},
        {"name": "tau", "model": {"head": {"name": "tau_norm", "tau": 0.7}},
         "train": {"epochs": 0}}]))
    run_dir = tmp_path / "run"
    train(recipe, run_dir, quiet=True)
    images, labels = split_of(run_dir)
    exported = {}
    for phase in ("joint", "crt", "lws", "tau"):
        out = tmp_path / f"{phase}.torchscript"
        assert ltexport([str(run_dir), "--format", "torchscript", "--out", str(out),
                         "--weights", f"model-{phase}.pt"]) == 0
        _, expected = reference(run_dir, f"model-{phase}.pt")
        exported[phase], meta = jit_logits(out, images)
        assert close(exported[phase], expected), phase
        assert meta["phase"] == phase and meta["weights"] == f"model-{phase}.pt"
    assert meta["model"]["head"]["name"] == "tau_norm" and meta["model"]["head"]["tau"] == 0.7
    for a, b in (("joint", "crt"), ("crt", "lws"), ("lws", "tau")):  # each head counts
        assert not torch.allclose(exported[a], exported[b], atol=1e-3), (a, b)
    assert ltexport([str(run_dir), "--format", "torchscript"]) == 0  # the default: the last
    default, meta = jit_logits(run_dir / "model-tau.torchscript", images)
    assert torch.equal(default, exported["tau"]) and meta["phase"] == "tau"
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, default.argmax(1).numpy()), 1)
    results = json.loads((run_dir / "results.json").read_text())
    assert confusion.tolist() == results["confusion_matrix"]
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason="the [onnx] extra is not installed")
    assert ltexport([str(run_dir), "--format", "onnx"]) == 0
    got, meta = onnx_logits(run_dir / "model-tau.onnx", images)
    assert close(got, exported["tau"]) and meta["phase"] == "tau"


def plain_state(path) -> set[str]:
    """The tensors a TorchScript file holds, without the normalisation's two constants."""
    keys = set(torch.jit.load(str(path), map_location="cpu").state_dict())
    assert {"scale", "shift"} <= keys
    return keys - {"scale", "shift"}


@pytest.mark.long
def test_a_run_with_a_feature_generator_exports_the_plain_network(tmp_path):
    """A generator acts in training only: the file holds the network's tensors and nothing else,
    and gives its logits."""
    run_dir = tmp_path / "run"
    train(resolve(digits(train={"epochs": 1}, generator={"name": "hallucinator"})), run_dir,
          quiet=True)
    out = tmp_path / "m.torchscript"
    assert ltexport([str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    model = open_run(run_dir, device="cpu").model
    assert plain_state(out) == {f"model.{k}" for k in model.state_dict()}
    images, expected = reference(run_dir)
    assert close(jit_logits(out, images)[0], expected)


# ------------------------------------------------------------------------------------ refusals
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_default_out_then_an_existing_out_needs_force(run_dir, capsys):
    path = run_dir / "model-main.torchscript"
    path.unlink(missing_ok=True)
    try:
        assert ltexport([str(run_dir), "--format", "torchscript"]) == 0
        first = path.read_bytes()
        capsys.readouterr()
        assert ltexport([str(run_dir), "--format", "torchscript", "--input", "float"]) == 2
        assert "exists; pass --force" in one_line_error(capsys)
        assert path.read_bytes() == first
        assert ltexport([str(run_dir), "--format", "torchscript", "--input", "float",
                         "--force"]) == 0
        assert read_metadata(path)["input"] == "float"
        assert not [p for p in run_dir.iterdir() if p.name.startswith(".model-main")]
    finally:
        path.unlink(missing_ok=True)


def test_a_run_without_weights_is_refused_in_one_line(run_dir, tmp_path, capsys):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "model-main.pt").unlink()
    before = sorted(p.name for p in unfinished.iterdir())
    assert ltexport([str(unfinished), "--format", "torchscript"]) == 2
    assert "holds no finished weights" in one_line_error(capsys)
    assert sorted(p.name for p in unfinished.iterdir()) == before


def test_an_out_folder_is_refused(run_dir, tmp_path, capsys):
    assert ltexport([str(run_dir), "--format", "torchscript", "--out",
                     str(tmp_path), "--force"]) == 2
    assert "is a folder" in one_line_error(capsys)


def test_the_missing_extra_is_named_in_one_line(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    out = tmp_path / "m.onnx"
    assert ltexport([str(run_dir), "--format", "onnx", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert 'pip install -e ".[onnx]"' in err and "onnxruntime missing" in err
    assert not out.exists()


def test_a_file_that_does_not_match_the_model_is_not_written(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    import lttoolbox.cli_export as cli_export

    out = tmp_path / "m.torchscript"
    out.write_bytes(b"previous")
    real = cli_export.run_file
    monkeypatch.setattr(cli_export, "run_file", lambda *a: real(*a) + 1e-2)
    assert ltexport([str(run_dir), "--format", "torchscript", "--out", str(out),
                     "--force"]) == 2
    assert "differ from the model's" in one_line_error(capsys)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.torchscript"]


def test_an_exporter_failure_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys,
                                                            monkeypatch):
    import lttoolbox.cli_export as cli_export

    def fail(*args):
        raise RuntimeError("aten::some_op is not supported\n  a long trace follows")

    monkeypatch.setattr(cli_export, "to_torchscript", fail)
    out = tmp_path / "m.torchscript"
    assert ltexport([str(run_dir), "--format", "torchscript", "--out", str(out)]) == 2
    assert one_line_error(capsys) == ("error: DigitsCNN cannot be exported to torchscript: "
                                      "aten::some_op is not supported")
    assert not list(tmp_path.iterdir())


def test_an_unknown_format_or_input_is_refused_from_python(run_dir):
    from lttoolbox.cli_export import export_run
    from lttoolbox.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--format: must be one of torchscript, onnx"):
        export_run(run_dir, "tflite")
    with pytest.raises(ConfigError, match=r"^--input: must be one of uint8, float, normalized"):
        export_run(run_dir, "onnx", input="bgr")
