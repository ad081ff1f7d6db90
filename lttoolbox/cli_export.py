"""``ltexport``: a run's evaluated model as one TorchScript or ONNX file, with its metadata.

Usage::

    ltexport RUN_DIR --format onnx                      # RUN_DIR/model-<last phase>.onnx
    ltexport RUN_DIR --format torchscript --out model.torchscript
    ltexport RUN_DIR --format onnx --weights model-joint.pt --input normalized --force

The exported network is the one evaluation uses: :func:`lttoolbox.runs.open_run`'s model, built
from the resolved recipe of the phase whose weights are loaded (a cRT, tau-norm, LWS or MARC phase
exports its own head, with its post-hoc parameters), in eval mode (BatchNorm uses its running
statistics). Nothing that only training uses is in it: no feature generator, augmentation or loss.

The exported input (``--input``):

* ``uint8`` (the default): ``(B, C, H, W)`` images with values 0..255, as the run's data set holds
  them; the file scales and normalises them with the run's mean and std, with the same float32
  constants and the same operation as evaluation (``x * (1 / (255 std)) + (-mean / std)``).
* ``float``: ``(B, C, H, W)`` float32 images scaled to [0, 1] (``torchvision``'s ``ToTensor``);
  the file normalises them (``x * (1 / std) + (-mean / std)``).
* ``normalized``: the bare network; the input is already normalised with the run's mean and std
  (in the metadata).

``B`` is free (a dynamic axis), ``C``, ``H``, ``W`` are the run's (``in_channels``,
``image_size``; an image is resized to that square as ``ltpredict`` does, or, for streamed data
evaluated on a centre crop, resized to ``eval_resize`` and centre-cropped). The output is the
``(B, num_classes)`` float32 logits; the softmax and any post-hoc logit adjustment
(``ltpredict --tau``) are left to the user, who finds the training class counts in the metadata.

The metadata (:func:`export_metadata`: class names, mean, std, channels, image size, the input
kind, the phase, the model config...) is stored as the TorchScript file's extra file
``lttoolbox.json`` and as the ONNX model's ``metadata_props`` (one entry per key, each value
JSON-encoded); :func:`read_metadata` reads either back.

Before anything is written, the serialised file is loaded again (``torch.jit.load``, or an
onnxruntime session on the CPU) and run on a random batch of another size than the one it was
traced with; its logits must match the model's (to ``1e-4`` relative to the logits' scale), which
checks the dynamic batch axis too. The file is then written atomically: a failure leaves no file,
or the previous one with ``--force``.

ONNX: ``torch.onnx.export`` with the ``torch.export``-based exporter (``dynamo=True``, which needs
``onnxscript``) at opset :data:`ONNX_OPSET`, the opset its operator library is written in;
``pip install -e ".[onnx]"`` installs onnx, onnxscript and onnxruntime. TorchScript needs nothing
more than torch, but ``torch.jit`` is deprecated upstream: prefer ONNX for new deployments.

Example:
    >>> import torch
    >>> from lttoolbox.models import DigitsCNN
    >>> model = DigitsCNN(num_classes=3).eval()
    >>> wrapped = InputNormalization(model, mean=[0.5], std=[0.25], input="uint8")
    >>> x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    >>> torch.allclose(wrapped(x), model(torch.full((2, 1, 8, 8), 2.0)), atol=1e-6)
    True
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .cli import run_command
from .errors import ConfigError, LTError

FORMATS = ("torchscript", "onnx")
INPUTS = ("uint8", "float", "normalized")
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx"}
#: ONNX opset of the exported graphs: the one torch's ONNX operator library (torchlib) is written
#: in, so no version conversion runs.
ONNX_OPSET = 18
#: Name of the metadata file inside a TorchScript archive.
EXTRA_FILE = "lttoolbox.json"
#: The extra that --format onnx needs, and the modules it brings.
ONNX_EXTRA = 'pip install -e ".[onnx]"'
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
#: Batch sizes of the example input (traced) and of the check after export (another size, so
#: that a batch axis fixed by mistake is caught).
TRACE_BATCH, CHECK_BATCH = 2, 3
#: Largest difference allowed between the file's logits and the model's, relative to
#: ``max(1, max |logit|)``: float32 kernels of another library, not another computation.
TOLERANCE = 1e-4


class ExportError(LTError):
    """A model that cannot be exported, a missing extra, or an output that must not be replaced."""


class InputNormalization(nn.Module):
    """A model preceded by the run's normalisation, so that it takes images, not tensors to
    normalise by hand.

    ``uint8`` input computes ``x * (1 / (255 std)) + (-mean / std)`` with the float32 constants
    and the ``addcmul`` of the evaluation transform (:class:`lttoolbox.data.transforms.
    BatchTransform`), so the logits are those evaluation computes; ``float`` input (0..1) uses
    ``1 / std`` for the scale.

    Args:
        model: The network, taking normalised ``(B, C, H, W)`` float32 input.
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel standard deviation on the 0..1 scale.
        input: ``uint8`` or ``float``.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input: str = "uint8"):
        super().__init__()
        from .data.transforms import BatchTransform

        if input not in ("uint8", "float"):
            raise ConfigError(f"must be uint8 or float, got {input!r}", key="input")
        scale, shift = BatchTransform(mean, std)._scale_shift(torch.device("cpu"))
        if input == "float":  # the same float64 arithmetic, without the 1/255
            std64 = torch.tensor([float(s) for s in std], dtype=torch.float64)
            scale = (1.0 / std64).to(torch.float32).view(1, -1, 1, 1)
        self.model = model
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.addcmul(self.shift, x.to(torch.float32), self.scale))


def export_metadata(run, input: str) -> dict:
    """What a user of the exported file needs besides the network: the run's data facts
    (``data.json``), the input's form, and where the weights came from."""
    import lttoolbox

    info = run.info
    size = info["image_size"]
    channels = int(info["in_channels"])
    meta = {
        "format": "lttoolbox export 1",
        "classes": list(info["classes"]),
        "input": input,
        "input_dtype": "uint8" if input == "uint8" else "float32",
        "input_range": {"uint8": [0, 255], "float": [0.0, 1.0], "normalized": None}[input],
        "input_shape": ["batch", channels, size, size],
        "normalization": ("inside the model" if input != "normalized"
                          else "(x / 255 - mean) / std, done by the caller"),
        "output": "logits",
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "in_channels": channels,
        "image_size": size,
        "train_class_counts": list(info.get("train_class_counts", [])),
        "model": run.phase["model"],
        "phase": run.phase["meta"]["phase"],
        "weights": run.weights.name,
        "run": str(run.dir),
        "lttoolbox": lttoolbox.__version__,
    }
    if info.get("path") == "stream" and info.get("eval_crop", True):
        meta["eval_resize"] = int(info["eval_resize"])  # a new image: resized, centre-cropped
    return meta


def check_choices(format: str, input: str) -> None:
    """Refuse a format or an input kind that does not exist (for callers other than the CLI)."""
    if format not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)}, got {format!r}", key="--format")
    if input not in INPUTS:
        raise ConfigError(f"must be one of {', '.join(INPUTS)}, got {input!r}", key="--input")


def require_onnx() -> None:
    """Refuse ``--format onnx`` in one line when a module of the [onnx] extra is missing."""
    import importlib

    missing = []
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"--format onnx needs the [onnx] extra ({', '.join(missing)} "
                          f"missing): {ONNX_EXTRA}")


def example_input(input: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A random batch of the exported input's kind (a fixed seed: the check is repeatable)."""
    g = torch.Generator().manual_seed(seed)
    if input == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if input == "float":
        return torch.rand(shape, generator=g)
    return torch.randn(shape, generator=g)


def to_torchscript(module: nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    """The traced module with ``meta`` as its extra file, serialised."""
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream, and the model's input check (a Python comparison
        # of the input's shape) is not recorded by the trace: both are expected here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        traced = torch.jit.trace(module, (example,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def to_onnx(module: nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    """The exported ONNX model (dynamic batch axis ``batch``) with ``meta`` as
    ``metadata_props``, serialised."""
    import contextlib

    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecations
        program = torch.onnx.export(module, (example,), None, dynamo=True,
                                    opset_version=ONNX_OPSET, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},),
                                    verbose=False, external_data=False)
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


def run_file(data: bytes, format: str, x: torch.Tensor) -> torch.Tensor:
    """The logits that the serialised file ``data`` computes for ``x``."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
            with torch.no_grad():
                return loaded(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def export_model(model: nn.Module, format: str, meta: dict, mean: Sequence[float],
                 std: Sequence[float], input: str = "uint8") -> tuple[bytes, float]:
    """Serialise ``model`` (any module mapping normalised ``(B, C, H, W)`` images to logits) and
    check the result.

    Args:
        model: The network; a copy on the CPU, contiguous, in eval mode is exported (``model``
            itself is not changed).
        format: ``torchscript`` or ``onnx``.
        meta: The metadata to store; ``meta["input_shape"]`` gives ``C, H, W``.
        mean, std: The normalisation, used unless ``input`` is ``normalized``.
        input: One of :data:`INPUTS`.

    Returns:
        ``(data, difference)``: the file's bytes and the largest absolute difference between its
        logits and the model's on the check batch.

    Raises:
        ExportError: a missing extra, or a file whose logits differ from the model's.
    """
    import copy

    check_choices(format, input)
    if format == "onnx":
        require_onnx()
    net = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    module = net if input == "normalized" else InputNormalization(net, mean, std, input).eval()
    shape = tuple(int(v) for v in meta["input_shape"][1:])
    example = example_input(input, (TRACE_BATCH, *shape), seed=0)
    try:
        data = (to_torchscript if format == "torchscript" else to_onnx)(module, example, meta)
    except Exception as err:  # noqa: BLE001 - the exporter's own error, in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"{type(net).__name__} cannot be exported to {format}: {first}") from err
    check = example_input(input, (CHECK_BATCH, *shape), seed=1)
    with torch.no_grad():
        expected = module(check).float()
    got = run_file(data, format, check).float()
    if got.shape != expected.shape:
        raise ExportError(f"the exported {format} file gives logits of shape {tuple(got.shape)} "
                          f"for a batch of {CHECK_BATCH}, the model {tuple(expected.shape)}")
    difference = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not difference <= TOLERANCE * scale:
        raise ExportError(f"the exported {format} file's logits differ from the model's by "
                          f"{difference:.3g} (allowed {TOLERANCE * scale:.3g}); nothing written")
    return data, difference


def default_out(run, format: str) -> Path:
    """``RUN_DIR/<weights file's stem><suffix>``: ``model-main.onnx`` for ``model-main.pt``."""
    return run.dir / (run.weights.stem + SUFFIXES[format])


def export_run(run_dir: str | Path, format: str, out: str | Path | None = None,
               weights: str | Path | None = None, input: str = "uint8",
               force: bool = False) -> tuple[Path, dict, float]:
    """Export a run's evaluated model to one file (see the module docstring).

    Args:
        run_dir: The run directory.
        format: ``torchscript`` or ``onnx``.
        out: The file to write; ``RUN_DIR/<weights stem>.torchscript`` or ``.onnx`` by default.
        weights: A weights file of the run (``model-<phase>.pt``); the last phase's by default.
        input: What the file takes: ``uint8`` images, ``float`` images in [0, 1], or
            ``normalized`` tensors.
        force: Replace an existing ``out``.

    Returns:
        ``(path, metadata, difference)``: the file written, its metadata, and the largest
        absolute difference between its logits and the model's on a random batch.

    Raises:
        RunError: not a run, no finished weights, weights that do not fit.
        ExportError: an existing ``out`` without ``force``, a missing extra, a failed check.

    Example:
        >>> path, meta, _ = export_run("runs/digits", "torchscript")  # doctest: +SKIP
        >>> meta["classes"][:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    from .rundir import atomic_write
    from .runs import open_run

    check_choices(format, input)
    if out is not None:
        check_out(Path(out), force)
    if format == "onnx":
        require_onnx()  # before the run is opened: the missing extra is the one thing to say
    run = open_run(run_dir, weights, device="cpu")
    path = Path(out) if out is not None else default_out(run, format)
    if out is None:
        check_out(path, force)
    meta = export_metadata(run, input)
    data, difference = export_model(run.model, format, meta, run.info["mean"], run.info["std"],
                                    input)
    atomic_write(path, lambda handle: handle.write(data), binary=True)
    return path, meta, difference


def check_out(path: Path, force: bool) -> None:
    """Refuse an ``--out`` that exists (unless ``force``) or cannot become a file."""
    from .cli_predict import check_out_file

    if path.is_dir():
        raise ConfigError(f"{path} is a folder; name the file to write, for example "
                          f"{path / 'model.onnx'}", key="--out")
    if path.exists() and not force:
        raise ExportError(f"{path} exists; pass --force to replace it, or choose another --out")
    check_out_file(path)


def read_metadata(path: str | Path) -> dict:
    """The metadata of a file ``ltexport`` wrote (TorchScript or ONNX, told apart by content).

    Raises:
        ExportError: not a file ``ltexport`` wrote, or an ONNX file without the [onnx] extra.
    """
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):  # a TorchScript archive
        files = {EXTRA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        if not files[EXTRA_FILE]:
            raise ExportError(f"{path} holds no {EXTRA_FILE}: not written by ltexport")
        return json.loads(files[EXTRA_FILE])
    try:
        import onnx
    except ImportError:
        raise ExportError(f"reading an ONNX file needs the [onnx] extra: {ONNX_EXTRA}") from None
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "format" not in props:
        raise ExportError(f"{path} has no lttoolbox metadata: not written by ltexport")
    return {key: json.loads(value) for key, value in props.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ltexport", description="Export a run's evaluated model to TorchScript or ONNX, "
        "with its class names and normalisation.",
        epilog="The file takes (B, C, H, W) uint8 images by default and returns logits; its "
        "metadata holds the class names, mean/std and input size. More in "
        "docs/after_training.md.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", help="file to write (default: RUN_DIR/<weights stem>.torchscript "
                                      "or .onnx)")
    parser.add_argument("--weights", help="weights file (default: the last phase's)")
    parser.add_argument("--input", default="uint8", choices=INPUTS,
                        help="what the file takes: uint8 images 0..255 (default), float images "
                             "in [0, 1] (both normalised inside), or normalized tensors")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    def body(console) -> int:
        path, meta, difference = export_run(args.run, args.format, args.out, args.weights,
                                            args.input, args.force)
        shape = " x ".join(str(v) for v in meta["input_shape"])
        console.print(f"wrote {path}: phase '{meta['phase']}', input {meta['input']} "
                      f"({shape}), {len(meta['classes'])} classes; logits match the model's to "
                      f"{difference:.1e}", soft_wrap=True, markup=False)
        return 0

    return run_command(body, lambda console: console.print("interrupted; nothing was written"))


if __name__ == "__main__":
    sys.exit(main())
