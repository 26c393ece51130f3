"""A tiny stand-in for the Talk2DINO meta-architecture that honours the data side's contract
(/work/notes/talk2dino_contract.md), so the caption mapper, the retrieval evaluator, the trainer
wiring and the feature cache can be tested before the real model exists.

* "DINOv2": a frozen 8x8-patch conv; per-head embeddings are the softmax(CLS->patch logits)
  weighted means of the normalised patch tokens, the logits from a frozen linear layer;
* "CLIP text tower": a frozen bag of hashed words (crc32, stable across processes) -> 512-d;
* psi: Linear(512, D) -> tanh -> Linear(D, D), the only trained part;
* training: max-over-heads selection + symmetric InfoNCE at T = 0.07 -> {"loss_talk2dino"};
* eval on caption inputs: {"head_embeddings": (heads, D) normalised, "caption_embedding": (D,)}.

Frozen weights come from a generator seeded by ``cfg.SEED``, so two builds agree exactly.
"""
import zlib

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

HEADS, DIM, TEXT_DIM, PATCH, VOCAB = 3, 16, 512, 8, 4096
TEMPERATURE = 0.07
NAME = "CaptionStandIn"


class CaptionStandIn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        generator = torch.Generator().manual_seed(int(cfg.SEED))
        self.patch = nn.Conv2d(3, DIM, kernel_size=PATCH, stride=PATCH)
        self.attention = nn.Linear(DIM, HEADS)
        self.words = nn.EmbeddingBag(VOCAB, TEXT_DIM, mode="mean")
        for p in [*self.patch.parameters(), *self.attention.parameters(), *self.words.parameters()]:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            p.requires_grad_(False)
        self.psi = nn.Sequential(nn.Linear(TEXT_DIM, DIM), nn.Tanh(), nn.Linear(DIM, DIM))
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), persistent=False)
        self.training_inputs = []  # the batches forward() saw in training, for the tests
        self.eval_inputs = []

    @property
    def device(self):
        return self.pixel_mean.device

    def head_embeddings_from_inputs(self, batched_inputs):
        """(B, heads, D) unnormalised, from "dino_head_embeddings" or from "image"."""
        if all("dino_head_embeddings" in x for x in batched_inputs):
            return torch.stack([x["dino_head_embeddings"] for x in batched_inputs]).to(self.device)
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device).float()
        images = (images - self.pixel_mean) / self.pixel_std
        tokens = F.normalize(self.patch(images).flatten(2).transpose(1, 2), dim=-1)  # (B, P, D)
        weights = self.attention(tokens).softmax(dim=1)  # (B, P, heads), softmax over patches
        return torch.einsum("bph,bpd->bhd", weights, tokens)

    def encode_captions(self, captions):
        """(B, 512) raw text features."""
        ids = [torch.tensor([zlib.crc32(w.encode()) % VOCAB for w in c.split()] or [0]) for c in captions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.words(torch.cat(ids).to(self.device), offsets.to(self.device))

    def caption_text_features_from_inputs(self, batched_inputs):
        if all("caption_text_feature" in x for x in batched_inputs):
            return torch.stack([x["caption_text_feature"] for x in batched_inputs]).to(self.device)
        return self.encode_captions([x["caption"] for x in batched_inputs])

    def forward(self, batched_inputs):
        heads = F.normalize(self.head_embeddings_from_inputs(batched_inputs), dim=-1)  # (B, heads, D)
        text = F.normalize(self.psi(self.caption_text_features_from_inputs(batched_inputs)), dim=-1)  # (B, D)
        if self.training:
            self.training_inputs.append(batched_inputs)
            index = torch.arange(len(batched_inputs), device=self.device)
            best = torch.einsum("bhd,bd->bh", heads, text).argmax(dim=1)  # each image's head for its own caption
            logits = heads[index, best] @ text.T / TEMPERATURE
            loss = (F.cross_entropy(logits, index) + F.cross_entropy(logits.T, index)) / 2
            return {"loss_talk2dino": loss}
        self.eval_inputs.extend(batched_inputs)
        return [{"head_embeddings": h, "caption_embedding": t} for h, t in zip(heads, text)]


if NAME not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(CaptionStandIn)


def stand_in_cfg(*opts):
    """Base quickstart config with the stand-in on the built-in caption sets, 32-px images."""
    from .conftest import quickstart_cfg

    return quickstart_cfg(
        "configs/quickstart/Base-quickstart.yaml",
        "MODEL.META_ARCHITECTURE", NAME,
        "DATASETS.TRAIN", "('ovseg_shapes_train_captions',)",
        "DATASETS.TEST", "('ovseg_shapes_val_captions',)",
        "INPUT.CAPTION.IMAGE_SIZE", "32",
        "DATALOADER.NUM_WORKERS", "0",
        *opts,
    )
