"""``add_ovseg_config(cfg)``: every config key that ovseg_d2 adds to detectron2's defaults.

Each key carries a one-line comment. Keys shared by the methods (CLIP, DINOv2, text prompts,
solver extras, evaluation) live here once; method-specific sections are added by the issue
that adds the method, in this same function.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_ovseg_config"]

# CLIP's normalisation on the 0-255 RGB scale (OpenAI CLIP; also what CAT-Seg feeds its ViT).
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]


def add_ovseg_config(cfg: CN) -> CN:
    """Declare ovseg_d2's config keys on ``cfg`` (in place) and return it."""
    _C = cfg
    _C.MODEL.WEIGHTS_UNSAFE_PICKLE = False  # True lets MODEL.WEIGHTS unpickle arbitrary objects (trusted files only)
    _C.MODEL.WEIGHTS_STRICT = True  # MODEL.WEIGHTS must match the model exactly (missing/unknown keys are an error); False: partial load

    # ---- CLIP (open_clip), shared by the baseline, CAT-Seg, CLIPSelf and Talk2DINO's text side
    _C.MODEL.CLIP = CN()
    _C.MODEL.CLIP.MODEL_NAME = "ViT-B-16"  # open_clip model config name (or one shipped in ovseg_d2/modeling/backbone/clip_model_configs)
    _C.MODEL.CLIP.PRETRAINED = "openai"  # open_clip pretrained tag, a local checkpoint path, or "" for random init
    _C.MODEL.CLIP.FORCE_QUICK_GELU = True  # OpenAI-architecture weights need QuickGELU; open_clip's plain ViT configs use GELU
    _C.MODEL.CLIP.DENSE_LAST_BLOCK = "value"  # last block in dense mode: value (MaskCLIP) | value_residual_cls (CAT-Seg) | value_residual (CLIPSelf)
    _C.MODEL.CLIP.INTERMEDIATE_LAYERS = []  # 0-based indices of blocks whose residual-stream outputs are also returned
    _C.MODEL.CLIP.VISION_TRAINABLE = "qv"  # image tower parameters to train: none | qv (query/value projections) | blocks (all transformer blocks)
    _C.MODEL.CLIP.TEXT_TRAINABLE = "qv"  # text tower parameters to train: none | qv | blocks
    _C.MODEL.CLIP.PIXEL_MEAN = list(CLIP_PIXEL_MEAN)  # per-channel RGB mean on the 0-255 scale
    _C.MODEL.CLIP.PIXEL_STD = list(CLIP_PIXEL_STD)  # per-channel RGB std on the 0-255 scale

    # ---- DINOv2 (timm), Talk2DINO's image backbone
    _C.MODEL.DINOV2 = CN()
    _C.MODEL.DINOV2.MODEL_NAME = "vit_base_patch14_reg4_dinov2.lvd142m"  # timm model name
    _C.MODEL.DINOV2.PRETRAINED = "timm"  # "timm" (hub weights of MODEL_NAME), a local .pth/.safetensors (timm or official DINOv2 key layout), or "" for random init
    _C.MODEL.DINOV2.IMAGE_SIZE = 448  # input size the position embeddings are built for (dynamic sizes are still accepted)
    _C.MODEL.DINOV2.EMBED_DIM = 0  # >0: override the timm model's width (tiny random models for tests/quickstart); 0: the model name's
    _C.MODEL.DINOV2.DEPTH = 0  # >0: override the number of blocks; 0: the model name's
    _C.MODEL.DINOV2.NUM_HEADS = 0  # >0: override the attention heads; 0: the model name's
    _C.MODEL.DINOV2.PIXEL_MEAN = [123.675, 116.28, 103.53]  # ImageNet RGB mean on the 0-255 scale (DINOv2's x/255 normalisation)
    _C.MODEL.DINOV2.PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet RGB std on the 0-255 scale

    # ---- Talk2DINO (MODEL.META_ARCHITECTURE = "Talk2DINO"; defaults: the reference ViT-B recipe and evaluation)
    _C.MODEL.TALK2DINO = CN()
    _C.MODEL.TALK2DINO.PROJECTION_NAME = "Talk2DINOProjection"  # psi, by name in TALK2DINO_PROJECTION_REGISTRY
    _C.MODEL.TALK2DINO.TEMPERATURE = 0.07  # fixed InfoNCE temperature on cosine similarities (the reference never trains its scale)
    _C.MODEL.TALK2DINO.GATHER_NEGATIVES = False  # multi-GPU: gather image/caption embeddings of all processes as in-batch negatives
    _C.MODEL.TALK2DINO.SLIDING_SHORT_SIDE = 448  # evaluation: the image is resized (aspect kept) to this short side ...
    _C.MODEL.TALK2DINO.SLIDING_MAX_LONG_SIDE = 2048  # ... unless the long side would exceed this (mmseg's Resize to fit (2048, 448))
    _C.MODEL.TALK2DINO.WINDOW = 448  # sliding-window size; every window goes through DINOv2 at this size (32 x 32 patches)
    _C.MODEL.TALK2DINO.WINDOW_STRIDE = 224  # sliding-window stride
    _C.MODEL.TALK2DINO.BACKGROUND_CLEANING = False  # background cleaning for vocabularies given at call time (test sets: metadata 'talk2dino_background_cleaning')
    _C.MODEL.TALK2DINO.BACKGROUND_CLEANING_LAMBDA = 0.2  # weight of the class attention map in background cleaning
    _C.MODEL.TALK2DINO.PAMR = False  # refine the upsampled window maps with PAMR (the paper's headline numbers use it)
    _C.MODEL.TALK2DINO.PAMR_ITERATIONS = 10  # PAMR propagation steps
    _C.MODEL.TALK2DINO.PAMR_DILATIONS = [1, 2, 4, 8, 12, 24]  # PAMR 3x3 stencil dilations (8 neighbours each)
    _C.MODEL.TALK2DINO.SCORE_CHUNK_CLASSES = 64  # classes upsampled/refined/stitched at a time at evaluation (bounds memory at 847 classes)

    # ---- Text prompts and class embeddings, shared by every method
    _C.MODEL.TEXT = CN()
    _C.MODEL.TEXT.TEMPLATE_SET = "catseg"  # name of a prompt-template set in ovseg_d2/modeling/text/templates.py
    _C.MODEL.TEXT.TEMPLATES = []  # explicit templates with one "{}"; overrides TEMPLATE_SET when non-empty
    _C.MODEL.TEXT.SYNONYMS = "first"  # class names "a, b" / "a; b": first (use the first name) | mean (average the synonyms' embeddings)
    _C.MODEL.TEXT.EMBEDDING_CACHE_DIR = "auto"  # persistent per-class text-embedding cache: "auto" ($XDG_CACHE_HOME or ~/.cache)/ovseg_d2/text_embeddings, a directory, or "" (off)

    # ---- MaskCLIP-style baseline: cosine cost volume, no aggregation
    _C.MODEL.BASELINE = CN()
    _C.MODEL.BASELINE.TEMPERATURE_INIT = 0.07  # initial softmax temperature applied to cosine similarities
    _C.MODEL.BASELINE.LEARN_TEMPERATURE = True  # train the temperature (as a log-scale parameter)

    # ---- CAT-Seg head (MODEL.SEM_SEG_HEAD.NAME = "CATSegHead"; defaults: the released ViT-B/16 and ViT-L/14 models)
    _C.MODEL.CATSEG = CN()
    _C.MODEL.CATSEG.HIDDEN_DIM = 128  # channels of the cost embedding inside the aggregator
    _C.MODEL.CATSEG.NUM_LAYERS = 2  # aggregation layers (spatial Swin pair + class attention each)
    _C.MODEL.CATSEG.NUM_HEADS = 4  # attention heads of the spatial and the class attention
    _C.MODEL.CATSEG.WINDOW_SIZE = 12  # Swin window (tokens); the second block of a pair shifts by half of it
    _C.MODEL.CATSEG.MLP_RATIO = 4.0  # hidden size of the Swin and class-attention MLPs, relative to HIDDEN_DIM
    _C.MODEL.CATSEG.FEATURE_RESOLUTION = [24, 24]  # CLIP token grid (h, w) the shifted-window masks are built for
    _C.MODEL.CATSEG.APPEARANCE_GUIDANCE_DIM = 0  # channels of the dense CLIP features (512 B, 768 L); 0: from the backbone's "dense" output
    _C.MODEL.CATSEG.APPEARANCE_GUIDANCE_PROJ_DIM = 128  # appearance guidance after its Conv3x3 + ReLU
    _C.MODEL.CATSEG.TEXT_GUIDANCE_DIM = 0  # size of the class embeddings (512 B, 768 L); 0: the backbone's "dense" channels
    _C.MODEL.CATSEG.TEXT_GUIDANCE_PROJ_DIM = 128  # text guidance after its Linear + ReLU
    _C.MODEL.CATSEG.INTERMEDIATE_DIM = 0  # width of the tapped CLIP blocks fed to upsample1/2 (768 B, 1024 L); 0: from the backbone
    _C.MODEL.CATSEG.DECODER_GUIDANCE_DIMS = [256, 128]  # output channels of upsample1 (x2) and upsample2 (x4)
    _C.MODEL.CATSEG.DECODER_GUIDANCE_PROJ_DIMS = [32, 16]  # decoder guidance after its Conv3x3 + ReLU, per stage
    _C.MODEL.CATSEG.DECODER_DIMS = [64, 32]  # output channels of the two upsampling decoder stages
    _C.MODEL.CATSEG.PROMPT_CHANNELS = 1  # prompts per class in the cost volume (input channels of the 7x7 conv)
    _C.MODEL.CATSEG.POOLING_SIZES = [2, 2]  # class-attention average pooling (h, w) in training
    _C.MODEL.CATSEG.TEST_POOLING_SIZES = [1, 1]  # class-attention pooling at evaluation ([1, 1] for the published numbers)
    _C.MODEL.CATSEG.CLASS_TOKEN_BUDGET = 256  # classes in the class attention: fewer are padded with learned tokens, more pruned by max cost (0: neither)
    _C.MODEL.CATSEG.PRUNED_LOGIT = -100.0  # logit of classes pruned by CLASS_TOKEN_BUDGET
    # CAT-Seg meta-architecture (input sizes, inference path, loss)
    _C.MODEL.CATSEG.CLIP_INPUT_SIZE = 384  # square size every view is resized to before CLIP (384 ViT-B/16, 336 ViT-L/14@336)
    _C.MODEL.CATSEG.SLIDING_WINDOW = True  # evaluation path: windows + global view (published numbers); False: whole image
    _C.MODEL.CATSEG.SLIDING_RESIZE = 640  # the test image is resized to this square before cutting windows
    _C.MODEL.CATSEG.WINDOW = 384  # sliding-window size (and the global view's size)
    _C.MODEL.CATSEG.WINDOW_STRIDE = 256  # sliding-window stride (the reference's int(384 * (1 - 0.333)))
    _C.MODEL.CATSEG.SIZE_DIVISIBILITY = 32  # whole-image path: pad the image to a multiple of this before squeezing it to the CLIP size
    _C.MODEL.CATSEG.SCORE_CHUNK_CLASSES = 8  # classes upsampled/stitched at a time at evaluation (bounds memory at 847 classes; 8 keeps the temporaries small)
    _C.MODEL.CATSEG.CPU_CHUNK_MAPS = 8  # CPU inference: class maps of one image per chunk through the spatial aggregation and decoder (0: all at once; same result)
    _C.MODEL.CATSEG.CPU_CHUNK_ROWS = 2  # CPU inference: token-grid rows of one image per chunk through the class aggregation (0: all at once; same result)
    _C.MODEL.CATSEG.MASK_IGNORE_IN_LOSS = True  # exclude ignore pixels from the BCE loss; False reproduces the reference (negatives everywhere)

    # ---- CLIPSelf (MODEL.META_ARCHITECTURE = "CLIPSelf"; defaults: the reference ViT-B/16 recipe)
    _C.MODEL.CLIPSELF = CN()
    _C.MODEL.CLIPSELF.STUDENT_SIZE = 1024  # student input: longest side resized to this, zero-padded bottom/right to a square (896 for ViT-L/14)
    _C.MODEL.CLIPSELF.REGION_SOURCE = "grid"  # grid (random M x N cells) | proposals (boxes from DATASETS.PROPOSAL_FILES_TRAIN, needs MODEL.LOAD_PROPOSALS)
    _C.MODEL.CLIPSELF.MAX_REGIONS = 20  # regions distilled per image (cells/proposals beyond this are dropped after shuffling)
    _C.MODEL.CLIPSELF.GRID_MAX_SPLITS = 6  # grid: M in 1..this, N in ceil(M/2)..min(2M, this) (24 choices at 6)
    _C.MODEL.CLIPSELF.PROPOSAL_CROP_SCALE = 1.5  # proposals: the teacher crops each box enlarged by this factor about its centre
    _C.MODEL.CLIPSELF.PROPOSAL_MIN_SIZE = 1.0  # proposals: boxes narrower or lower than this (pixels, after resizing) are dropped
    _C.MODEL.CLIPSELF.ENSEMBLE_ALPHA = 0.7  # exported weights: alpha * student + (1 - alpha) * teacher (0.7 ViT-B, 0.95 ViT-L)
    _C.MODEL.CLIPSELF.EXPORT_PERIOD = 0  # write an ensembled open_clip checkpoint every this many iterations (0: once per epoch of DATASETS.TRAIN)
    _C.MODEL.CLIPSELF.EVAL_MODES = ["rois", "maskpool", "crops"]  # region-classification modes computed at evaluation

    # ---- Vocabulary
    _C.MODEL.TRAIN_CLASS_NAMES_FROM = ""  # data set whose stuff_classes are the training vocabulary ("": DATASETS.TRAIN[0])
    _C.MODEL.TEST_CLASS_NAMES_FROM = ""  # data set whose stuff_classes are the default test vocabulary ("": DATASETS.TEST[0])
    _C.MODEL.BACKGROUND_THRESHOLD = 0.5  # on background-by-threshold sets (V21, C60, COCO-Object) a pixel is background unless a class scores above this

    # ---- Input pipeline
    _C.INPUT.DATASET_MAPPER_NAME = "ovseg_semantic"  # training mapper (ovseg_d2/data/mappers): ovseg_semantic | clipself; region-classification test sets always use their own
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # random crops retried while one class covers more than this fraction (1.0: plain crop)
    _C.INPUT.COLOR_AUG_SSD = False  # SSD-style photometric augmentation during training
    _C.INPUT.SIZE_DIVISIBILITY = -1  # pad training crops to this size (-1: the crop size when cropping is on)

    # ---- Captions (Talk2DINO's training data, retrieval evaluation, feature cache; evaluator_type "captions")
    _C.INPUT.CAPTION = CN()
    _C.INPUT.CAPTION.IMAGE_SIZE = 448  # caption images: short side resized to this (bicubic), then centre-cropped to this square
    _C.INPUT.CAPTION.FEATURE_CACHE_DIR = ""  # folder written by tools/extract_features.py: caption sets it holds feed their cached DINOv2/CLIP features instead of images (Talk2DINO trains ψ only; a stale cache is refused; "": off)

    # ---- Solver extras (detectron2's SOLVER keys are kept)
    _C.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW | ADAM | SGD
    _C.SOLVER.BETAS = [0.9, 0.999]  # Adam(W) betas
    _C.SOLVER.EPS = 1e-8  # Adam(W) epsilon
    _C.SOLVER.LR_MULTIPLIERS = []  # [[regex, multiplier], ...]: first regex that matches a parameter's name scales its LR (e.g. [["clip\\.", 0.01]])
    _C.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (positional/class/token embeddings, padding tokens)
    _C.SOLVER.AMP.DTYPE = "float16"  # autocast dtype when SOLVER.AMP.ENABLED: float16 (with loss scaling) | bfloat16
    _C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # value | norm (per parameter, detectron2) | full_model (one norm over all parameters)

    # ---- Evaluation
    _C.TEST.EVAL_BEFORE_TRAIN = False  # evaluate once before the first iteration and print a before/after table
    _C.TEST.PRECISION = "float32"  # OpenVocabPredictor / tools/demo.py: float32 | bfloat16 (autocast, CPU or CUDA) | float16 (autocast, CUDA)
    _C.TEST.SUITE = ""  # suite(s)/data sets, comma-separated, that tools/eval_all.py runs without --suite/--datasets and train_net.py --eval-only runs instead of DATASETS.TEST ("": off)
    _C.TEST.SAVE_PREDICTIONS = False  # write predicted label PNGs under OUTPUT_DIR/inference/<dataset>/

    # ---- Checkpointing
    _C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0  # keep at most this many periodic checkpoints (0: keep all)
    return cfg
