"""Tiny random configs of every segmenting meta-architecture, shared by the predictor, demo and
benchmark tests (Talk2DINO from overrides of the quickstart config)."""

#: Talk2DINO at test scale: a 2-block, 32-wide DINOv2 with registers (random), the quickstart's
#: tiny CLIP text tower, 56-px windows at stride 28 on a 56-px short side
TALK2DINO_TINY = (
    "MODEL.META_ARCHITECTURE", "Talk2DINO",
    "MODEL.DINOV2.MODEL_NAME", "vit_small_patch14_reg4_dinov2.lvd142m", "MODEL.DINOV2.PRETRAINED", "",
    "MODEL.DINOV2.IMAGE_SIZE", "56", "MODEL.DINOV2.EMBED_DIM", "32", "MODEL.DINOV2.DEPTH", "2", "MODEL.DINOV2.NUM_HEADS", "2",
    "MODEL.TALK2DINO.SLIDING_SHORT_SIDE", "56", "MODEL.TALK2DINO.SLIDING_MAX_LONG_SIDE", "224",
    "MODEL.TALK2DINO.WINDOW", "56", "MODEL.TALK2DINO.WINDOW_STRIDE", "28",
)
#: meta-architecture -> (config file, overrides)
CONFIGS = {
    "MaskCLIPBaseline": ("configs/quickstart/baseline_maskclip_tiny.yaml", ()),
    "CATSeg": ("configs/quickstart/catseg_tiny.yaml", ()),
    "Talk2DINO": ("configs/quickstart/baseline_maskclip_tiny.yaml", TALK2DINO_TINY),
}
