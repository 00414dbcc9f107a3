"""Deployable models: a checkpoint as one ONNX or TorchScript file that needs no sslall.

The exported graph takes the image tensor a caller can build with numpy alone and returns the
calibrated probabilities `sslall predict` prints:

    input  `image`          uint8 [N, S, S, 3]: RGB, channels last, S the checkpoint's image
                            size; each image decoded by the package's RGB rule, preprocessed as
                            the checkpoint records (if at all), its shorter side resized to S
                            (antialiased bilinear) and centre-cropped to S x S
    output `probabilities`  float32 [N, C]: softmax(logits / temperature), classes in metadata
                            order

Inside the graph: to float, / 255, NHWC -> NCHW, normalise by the checkpoint's mean and std,
the classifier, divide by the temperature, softmax. Decoding, preprocessing and resizing stay
outside it: they work on images of any size, which a fixed-shape graph cannot take, and the
preprocessing steps are OpenCV/numpy code, not tensor operations. The metadata (`sslall` key:
ONNX `metadata_props`, TorchScript `_extra_files["sslall.json"]`) says what they must be.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslall import __version__
from sslall._fsutil import write_atomic
from sslall.data._images import RGB_CONVERSION
from sslall.data._preprocess import preprocess_key
from sslall.errors import ModelError, UsageError
from sslall.model._backbones import build_classifier_from_checkpoint
from sslall.model._checkpoints import load_checkpoint
from sslall.model._inference import checkpoint_preprocess

__all__ = ["EXPORT_FORMATS", "METADATA_KEY", "ONNX_OPSET", "CalibratedModel", "ExportResult",
           "export_bytes", "export_checkpoint", "export_metadata", "read_export_metadata"]

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18
METADATA_KEY = "sslall"  # ONNX metadata_props key; TorchScript extra file `sslall.json`
EXPORT_FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
ONNX_INSTALL_HINT = "ONNX export needs onnx and onnxscript: pip install 'sslall[export]'"
RESIZE_RULE = ("shorter side to image_size (antialiased bilinear on uint8, as torchvision's "
               "Resize), then centre crop image_size x image_size")


class CalibratedModel(nn.Module):
    """uint8 [N, S, S, 3] RGB -> float32 [N, C] calibrated probabilities (module docstring)."""

    def __init__(self, classifier: nn.Module, mean: list[float], std: list[float],
                 temperature: float) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)  # outputs need no autograd
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        logits = self.classifier((x - self.mean) / self.std).to(torch.float32)
        return torch.softmax(logits / self.temperature, dim=1)


@dataclass
class ExportResult:
    """What `export_checkpoint` wrote."""

    path: Path
    format: str
    bytes: int
    metadata: dict

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "bytes": self.bytes,
                "round": self.metadata.get("round"), "classes": self.metadata["classes"],
                "preprocess": self.metadata["preprocess_key"]}


def export_metadata(meta: dict, fmt: str) -> dict:
    """The metadata an exported file carries: enough to prepare its input and read its output."""
    size = int(meta["image_size"])
    pre = checkpoint_preprocess(meta)
    return {
        "format_version": EXPORT_FORMAT_VERSION, "format": fmt, "sslall_version": __version__,
        "classes": list(meta["classes"]), "temperature": float(meta.get("temperature", 1.0)),
        "image_size": size, "mean": [float(m) for m in meta["mean"]],
        "std": [float(s) for s in meta["std"]],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", size, size, 3],
                  "layout": "NHWC", "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(meta["classes"])],
                   "meaning": "calibrated probabilities, softmax(logits / temperature)"},
        "rgb_conversion": RGB_CONVERSION, "resize": RESIZE_RULE,
        "preprocess": None if pre is None or preprocess_key(pre) == "none" else dict(meta["preprocess"]),
        "preprocess_key": preprocess_key(pre),
        "backbone": str(meta["backbone"]), "round": meta.get("round"),
        "weights_sha256": meta.get("weights_sha256"),
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
    }


def export_bytes(checkpoint: Path, fmt: str) -> tuple[bytes, dict]:
    """The exported file's bytes and its metadata, for a round folder or its checkpoint files.

    Raises:
        UsageError: `fmt` is not one of `EXPORT_FORMATS`.
        ModelError: ONNX export without onnx/onnxscript installed, or the model cannot be
            exported; the checkpoint is damaged.
        NotFoundError: the checkpoint does not exist.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        _require_onnx()
    state, meta = load_checkpoint(Path(checkpoint))
    metadata = export_metadata(meta, fmt)
    model = CalibratedModel(build_classifier_from_checkpoint(state, meta), metadata["mean"],
                            metadata["std"], metadata["temperature"]).eval()
    size = metadata["image_size"]
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    text = json.dumps(metadata, sort_keys=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' advice is for their developers
            data = _onnx(model, example, text) if fmt == "onnx" else _torchscript(model, example, text)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        raise ModelError(f"cannot export {metadata['backbone']} as {fmt}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from exc
    return data, metadata


def export_checkpoint(checkpoint: Path, fmt: str, out: Path, *, force: bool = False) -> ExportResult:
    """Export `checkpoint` to `out` (written to a temporary sibling, then renamed into place).

    Raises:
        UsageError: `out` exists and `force` is False, or is a folder; `fmt` is unknown.
        ModelError, NotFoundError: as `export_bytes`.
    """
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name (e.g. {out / 'model.onnx'})")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    data, metadata = export_bytes(checkpoint, fmt)
    try:
        write_atomic(out, data)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return ExportResult(out, fmt, len(data), metadata)


def read_export_metadata(path: Path) -> dict:
    """The `sslall` metadata of an exported file (ONNX by its `.onnx` suffix, else TorchScript).

    Raises:
        ModelError: the file holds no sslall metadata, or cannot be read as that format.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            _require_onnx()
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                     .metadata_props}
            text = props.get(METADATA_KEY)
        else:  # a TorchScript file is a zip archive: <name>/extra/sslall.json (no torch.jit)
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist()
                         if n.endswith(f"/extra/{METADATA_KEY}.json")]
                text = archive.read(names[0]).decode("utf-8") if names else None
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot read {path} as an exported model: {exc}") from None
    if not text:
        raise ModelError(f"{path} carries no sslall metadata")
    return json.loads(text)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ModelError(ONNX_INSTALL_HINT) from None


def _onnx(model: nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    """The dynamo exporter (the TorchScript-based one is deprecated), batch axis dynamic."""
    import onnx

    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
    )
    if program is None:
        raise ModelError("torch.onnx.export returned no program")
    proto = program.model_proto
    del proto.metadata_props[:]
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=metadata))
    proto.doc_string = "sslall model: uint8 [N, S, S, 3] RGB -> calibrated probabilities"
    return proto.SerializeToString()


def _torchscript(model: nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    traced = torch.jit.trace(model, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": metadata})
    return buffer.getvalue()
