"""Grad-CAM: where a checkpoint looked when it classified a cell (pytorch-grad-cam).

The checkpoint is loaded by `sslall.model._inference.Predictor` (same transform, preprocessing and
temperature as `sslall predict`). The target layer is chosen per architecture family:

- a vision transformer (timm models with `patch_embed` and `blocks`): the last block's
  `norm1`, its tokens (minus the class/register tokens) reshaped to the patch grid;
- any other timm model: the module of its last `feature_info` stage (the last conv stage:
  `layer4` of a ResNet, the last block stage of an EfficientNet, `norm5` of a DenseNet, ...);
- anything else (`baseline-cnn`): its last `Conv2d`.

Each overlay is a PNG: the image as the model saw it (resized, cropped, preprocessed) next to
the heat map over it, with the predicted class and calibrated confidence written underneath.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from sslall.data._images import UnreadableImage, load_rgb
from sslall.decide._metrics import softmax
from sslall.model._inference import Predictor

__all__ = ["Explanation", "Explainer", "target_layer"]

MIN_SIDE = 224  # overlays are drawn at least this large, so a 64 px cell is readable


@dataclass
class Explanation:
    """One image's Grad-CAM: the overlay written, or the reason there is none."""

    path: str
    out: Path | None
    label: str | None = None
    confidence: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "overlay": str(self.out) if self.out else None,
                "class": self.label, "confidence": self.confidence, "error": self.error}


def target_layer(backbone: nn.Module) -> tuple[nn.Module, Callable | None]:
    """(the layer Grad-CAM reads, the reshape transform it needs or None); see the docstring."""
    blocks = getattr(backbone, "blocks", None)
    patch = getattr(backbone, "patch_embed", None)
    if patch is not None and blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1, _token_reshape(int(getattr(backbone, "num_prefix_tokens", 1)),
                                                tuple(patch.grid_size))
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, list) and info:
        return backbone.get_submodule(info[-1]["module"]), None
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no layer for Grad-CAM in {type(backbone).__name__}")
    return convs[-1], None


class _Upright(nn.Module):
    """A `Classifier`'s logits of the image as given (no turned view), for Grad-CAM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.features(x))


class Explainer:
    """Grad-CAM overlays for one checkpoint."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        from pytorch_grad_cam import GradCAM

        self.predictor = Predictor(checkpoint, device=device)
        model = self.predictor.model
        layer, reshape = target_layer(model.backbone)
        # the upright view alone, explicitly: with a turned-view model's two passes the layer's
        # activations are recorded twice, and which pair pytorch-grad-cam uses is its list order
        self.cam = GradCAM(model=_Upright(model), target_layers=[layer], reshape_transform=reshape)
        self.mean = np.asarray(self.predictor.meta["mean"], dtype=np.float32)
        self.std = np.asarray(self.predictor.meta["std"], dtype=np.float32)

    def overlay(self, path: str | Path) -> tuple[Image.Image, str, float]:
        """(overlay picture, predicted class, calibrated confidence) of one image file."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        p = self.predictor
        x = p.transform(load_rgb(path, max_pixels=p.max_pixels)).unsqueeze(0).to(p.device)
        with torch.no_grad():
            logits = p.model(x).cpu().numpy()
        probs = softmax(logits, p.temperature)[0]
        k = int(probs.argmax())
        with torch.enable_grad():
            heat = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
        seen = x[0].detach().cpu().numpy().transpose(1, 2, 0) * self.std + self.mean
        seen = np.clip(seen, 0.0, 1.0).astype(np.float32)
        over = show_cam_on_image(seen, np.nan_to_num(heat), use_rgb=True)
        picture = _side_by_side(seen, over, f"{p.classes[k]}  {probs[k]:.2f}")
        return picture, p.classes[k], float(probs[k])

    def explain(self, paths: Sequence[str | Path], out_dir: Path) -> list[Explanation]:
        """Write `<out_dir>/<stem>.cam.png` for each image; unreadable ones get an error."""
        out_dir.mkdir(parents=True, exist_ok=True)
        done: list[Explanation] = []
        used: set[str] = set()
        for path in paths:
            try:
                picture, label, conf = self.overlay(path)
            except UnreadableImage as exc:
                done.append(Explanation(str(path), None, error=str(exc)))
                continue
            name = _unique(Path(path).stem, used)
            target = out_dir / f"{name}.cam.png"
            picture.save(target)
            done.append(Explanation(str(path), target, label, round(conf, 5)))
        return done


def _token_reshape(prefix: int, grid: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        t = tokens[:, prefix:, :]
        h, w = grid
        return t.reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return reshape


def _side_by_side(seen: np.ndarray, over: np.ndarray, caption: str) -> Image.Image:
    side = max(MIN_SIDE, seen.shape[0])
    left = Image.fromarray((seen * 255).round().astype(np.uint8)).resize((side, side), Image.NEAREST)
    right = Image.fromarray(over).resize((side, side), Image.BILINEAR)
    bar = max(24, side // 9)
    canvas = Image.new("RGB", (2 * side, side + bar), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (side, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(int(bar * 0.7))
    draw.text((8, side + bar // 8), caption, fill="black", font=font)
    return canvas


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name
