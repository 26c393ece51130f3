"""Batching shared by the meta-architectures: inputs -> normalised padded images and labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList

__all__ = ["batch_images", "batch_labels", "resize_to_outputs"]


def batch_images(batched_inputs: list[dict], backbone, input_format: str, device: torch.device) -> ImageList:
    """uint8 images (3 x H x W, ``input_format``) -> RGB, normalised by ``backbone.normalize``,
    zero-padded bottom/right to a common size divisible by the backbone's patch size."""
    images = []
    for x in batched_inputs:
        image = x["image"].to(device)
        if input_format == "BGR":
            image = image.flip(0)
        images.append(backbone.normalize(image))
    return ImageList.from_tensors(images, size_divisibility=backbone.patch_size[0])


def batch_labels(batched_inputs: list[dict], images: ImageList, ignore_value: int, device: torch.device) -> torch.Tensor:
    """``sem_seg`` labels padded with ``ignore_value`` to the image batch's size: B x H x W long."""
    if any("sem_seg" not in x for x in batched_inputs):
        raise KeyError("training inputs need a 'sem_seg' label map (use the ovseg_semantic dataset mapper)")
    labels = [x["sem_seg"].to(device) for x in batched_inputs]
    padded = ImageList.from_tensors(labels, size_divisibility=0, pad_value=ignore_value).tensor
    pad_h = images.tensor.shape[-2] - padded.shape[-2]
    pad_w = images.tensor.shape[-1] - padded.shape[-1]
    return F.pad(padded, (0, pad_w, 0, pad_h), value=ignore_value).long()


def resize_to_outputs(maps: torch.Tensor, image_sizes: list[tuple[int, int]], batched_inputs: list[dict]) -> list[torch.Tensor]:
    """Per image: crop the padded map (B x T x Hp x Wp) to its input size, then resize
    bilinearly to the requested output size (``height``/``width``, default the input size)."""
    outputs = []
    for score, (h, w), x in zip(maps, image_sizes, batched_inputs):
        out_h, out_w = x.get("height", h), x.get("width", w)
        score = score[:, :h, :w]
        if (out_h, out_w) != (h, w):
            score = F.interpolate(score[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        outputs.append(score)
    return outputs
