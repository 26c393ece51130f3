#!/usr/bin/env python
"""Parity and speed of ovseg_d2's CAT-Seg against the authors' implementation on the same machine.

    python tools/compare_catseg_reference.py --reference-root ~/src/CAT-Seg \\
        --config-file configs/catseg_vitb_384.yaml --classes 20,150,459,847 --repeats 2

``--reference-root`` is a checkout of KU-CVLAB/CAT-Seg (CVPR 2024 version, branch main). Its model
is imported from there and built with random weights: its CLIP comes from its own ``build_model``
applied to a random state dict in OpenAI's layout (made by open_clip with the same architecture),
every parameter then gets seeded Gaussian noise (``--perturb``) so that zero-initialised ones
(biases, padding tokens) take part in the comparison. Its state dict (the released checkpoint
layout) is saved to a temporary ``.pth`` and ours is built from ``--config-file`` with
``MODEL.WEIGHTS`` pointing at it, so the released-layout loader runs exactly as for users.

Both get the same input: a fixed-seed ``--image-size`` RGB image after the test mapper's resize
(short side ``INPUT.MIN_SIZE_TEST``), through each one's own evaluation path (sliding window, with
the reference's evaluation overrides ``TEST.SLIDING_WINDOW True`` and
``MODEL.SEM_SEG_HEAD.POOLING_SIZES [1,1]``). Text embeddings are computed before timing and then
come from each one's cache, as during evaluation. After one warm-up call each, the two are timed
interleaved (reference, ours, reference, ours, ...) so that load from other jobs hits both alike;
``os.getloadavg()`` is printed with the figures. Per vocabulary size: max abs difference of the
final sigmoid scores, agreement of the per-pixel argmax, latencies and speed-up, as JSON lines,
then a Markdown table. Numbers are printed, never asserted.

Runtime adaptations of the reference (no file of the checkout is changed): its package
``__init__`` files are not executed (they register data sets, a Swin backbone, and model names
that ovseg_d2 also registers; the model modules are imported directly, with registrations
skipped); ``clip.load`` is replaced by the random-weight build above (the original downloads
OpenAI's weights); on ``--device cpu`` its hard-coded ``Tensor.cuda()`` calls return the tensor on
the CPU; its vocabulary is set through ``test_class_texts`` with its token and embedding caches
cleared.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Files of a KU-CVLAB/CAT-Seg checkout this tool imports or reads (relative to its root).
REFERENCE_FILES = (
    "cat_seg/cat_seg_model.py",
    "cat_seg/config.py",
    "cat_seg/modeling/heads/cat_seg_head.py",
    "cat_seg/modeling/transformer/cat_seg_predictor.py",
    "cat_seg/modeling/transformer/model.py",
    "cat_seg/third_party/clip.py",
    "cat_seg/third_party/model_vpt.py",
)

#: Our config file name -> (the reference's config, open_clip architecture of its CLIP).
CONFIG_PAIRS = {
    "catseg_vitb_384.yaml": ("configs/vitb_384.yaml", "ViT-B-16"),
    "catseg_vitl_336.yaml": ("configs/vitl_336.yaml", "ViT-L-14-336"),
}

#: The reference's evaluation overrides (its eval script), see shared/anchors/catseg_eval_settings.md.
REFERENCE_EVAL_OVERRIDES = ["TEST.SLIDING_WINDOW", "True", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1, 1]"]

#: Vocabulary size -> shipped class-name list of that size (other sizes: the first N of A-847).
VOCABULARIES = {20: "pascal_voc_20", 59: "pascal_context_59", 150: "ade20k_150", 171: "coco_stuff_171", 459: "pascal_context_459", 847: "ade20k_847"}


class ReferenceCheckoutError(ValueError):
    """``--reference-root`` is not a usable KU-CVLAB/CAT-Seg checkout."""


def check_reference_root(root: str, reference_config: str) -> Path:
    """The checkout's root as a Path, or a ReferenceCheckoutError saying what is expected."""
    expected = (
        "--reference-root must be a checkout of the authors' CAT-Seg (CVPR 2024 version: "
        "git clone https://github.com/KU-CVLAB/CAT-Seg), the folder that holds cat_seg/ and configs/"
    )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ReferenceCheckoutError(f"{expected}; {str(path)!r} is not a directory")
    missing = [f for f in (*REFERENCE_FILES, reference_config) if not (path / f).is_file()]
    if missing:
        raise ReferenceCheckoutError(f"{expected}; {str(path)!r} lacks {', '.join(missing)}")
    return path.resolve()


def reference_config_for(config_file: str, override: str = "") -> tuple[str, str]:
    """(reference config relative to its root, open_clip architecture) for our ``config_file``."""
    name = os.path.basename(config_file)
    if name not in CONFIG_PAIRS:
        raise ValueError(f"--config-file {config_file}: no reference counterpart known; use one of {sorted(CONFIG_PAIRS)}")
    reference_config, architecture = CONFIG_PAIRS[name]
    return override or reference_config, architecture


def vocabulary_of_size(size: int) -> list[str]:
    """A real benchmark vocabulary of ``size`` classes (synonyms included, as in the data sets)."""
    from ovseg_d2.data.class_names import load_class_names

    if size in VOCABULARIES:
        return load_class_names(VOCABULARIES[size])
    names = load_class_names("ade20k_847")
    if not 0 < size <= len(names):
        raise ValueError(f"--classes: {size} is not in 1..{len(names)} (or one of {sorted(VOCABULARIES)})")
    return names[:size]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes {text!r}: expected comma-separated integers, e.g. 20,150,459,847") from None
    if not sizes:
        raise ValueError("--classes is empty")
    return sizes


# ---------------------------------------------------------------------------- reference side
@contextlib.contextmanager
def registrations_skipped() -> Iterator[None]:
    """detectron2 (fvcore) registries ignore new registrations inside the block: the reference
    registers ``CATSeg`` and ``CATSegHead``, names ovseg_d2 already holds. Its classes are used
    directly, never through a registry."""
    from fvcore.common.registry import Registry

    original = Registry._do_register
    Registry._do_register = lambda self, name, obj: None
    try:
        yield
    finally:
        Registry._do_register = original


def _package_without_init(name: str, folder: Path) -> None:
    """Put package ``name`` (files in ``folder``) in sys.modules without running its __init__."""
    existing = sys.modules.get(name)
    if existing is not None:
        if [str(folder)] != list(getattr(existing, "__path__", [])):
            raise ReferenceCheckoutError(f"a different {name!r} package is already imported ({existing!r})")
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module


def import_reference(root: Path) -> types.SimpleNamespace:
    """The reference's model modules, imported from ``root``."""
    import ovseg_d2  # noqa: F401  (environment remedies before the reference imports torchvision)

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    _package_without_init("cat_seg", root / "cat_seg")
    _package_without_init("cat_seg.modeling", root / "cat_seg" / "modeling")
    with registrations_skipped():
        return types.SimpleNamespace(
            model=importlib.import_module("cat_seg.cat_seg_model"),
            head=importlib.import_module("cat_seg.modeling.heads.cat_seg_head"),
            config=importlib.import_module("cat_seg.config"),
            clip=importlib.import_module("cat_seg.third_party.clip"),
            clip_model=importlib.import_module("cat_seg.third_party.model_vpt"),
        )


@contextlib.contextmanager
def cuda_calls_on(device: str) -> Iterator[None]:
    """On a CPU run, ``Tensor.cuda()`` (hard-coded in the reference) returns the tensor on ``device``."""
    import torch

    if device != "cpu":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.to("cpu")
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def random_openai_clip_state_dict(architecture: str, seed: int) -> dict:
    """State dict in OpenAI's CLIP layout (``in_proj_weight`` packed, plus the three metadata
    entries of OpenAI's files), with open_clip's random initialisation of ``architecture``."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(architecture, pretrained=None, force_quick_gelu=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["input_resolution"] = torch.tensor(model.visual.image_size[0])
    state["context_length"] = torch.tensor(model.context_length)
    state["vocab_size"] = torch.tensor(model.vocab_size)
    return state


def build_reference(ref, cfg_file: Path, architecture: str, class_json: str, *, device: str, seed: int, perturb: float):
    """The reference CATSeg in eval mode with random weights on ``device``."""
    import torch
    from detectron2.config import get_cfg

    cfg = get_cfg()
    ref.config.add_cat_seg_config(cfg)
    cfg.merge_from_file(str(cfg_file))
    cfg.merge_from_list(REFERENCE_EVAL_OVERRIDES + [
        "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", class_json,
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", class_json,
        "MODEL.DEVICE", device,
    ])

    def load_random_clip(name, device=device, jit=False, prompt_depth=0, prompt_length=0):
        state = random_openai_clip_state_dict(architecture, seed)
        expected = set(state) - {"input_resolution", "context_length", "vocab_size"}
        model = ref.clip_model.build_model(dict(state), prompt_depth, prompt_length)  # loads with strict=False
        # strict=False above: check that every tensor of the random state dict found its place
        loaded = {k.replace("q_proj_weight", "in_proj_weight") for k in model.state_dict() if not k.endswith(("k_proj_weight", "v_proj_weight"))}
        if expected - loaded:
            raise RuntimeError(f"the reference's CLIP did not take {sorted(expected - loaded)[:5]} (open_clip {architecture})")
        return model.to(device), None

    original_load, original_build_head = ref.clip.load, ref.model.build_sem_seg_head
    ref.clip.load = load_random_clip
    ref.model.build_sem_seg_head = lambda cfg, input_shape: ref.head.CATSegHead(cfg, input_shape)
    try:
        with cuda_calls_on(device):
            model = ref.model.CATSeg(cfg)
    finally:
        ref.clip.load, ref.model.build_sem_seg_head = original_load, original_build_head
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=generator).to(p.device, p.dtype))
    return model, cfg


def set_reference_vocabulary(model, names: Sequence[str]) -> None:
    """Point the reference at ``names`` and fill its text-embedding cache (as its first call does)."""
    import torch

    predictor = model.sem_seg_head.predictor
    predictor.test_class_texts = list(names)
    predictor.tokens, predictor.cache = None, None
    with torch.no_grad(), cuda_calls_on(str(model.device.type)):
        predictor.get_text_embeds(predictor.test_class_texts, predictor.prompt_templates, predictor.clip_model)


# ---------------------------------------------------------------------------- our side
def build_ours(config_file: str, weights: str, device: str, opts: Sequence[str]):
    """Our model from ``config_file`` with ``MODEL.WEIGHTS weights`` loaded by our checkpointer."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ovseg_d2 import add_ovseg_config
    from ovseg_d2.checkpoint import build_checkpointer

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", device, *opts])
    model = build_model(cfg)
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model.eval(), cfg


def cache_our_text_embeddings(model, names: Sequence[str]) -> None:
    """Fill our text-embedding cache for ``names`` (the forward's first call would do the same)."""
    import torch

    with torch.no_grad():
        model.class_embeddings(list(names))


# ---------------------------------------------------------------------------- measurement
def test_input(height: int, width: int, min_size: int, max_size: int, seed: int) -> dict:
    """A fixed-seed uint8 RGB image after detectron2's test resize, as the test mapper gives it."""
    import numpy as np
    import torch
    from detectron2.data import transforms as T

    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    resized = T.ResizeShortestEdge(min_size, max_size).get_transform(image).apply_image(image)
    return {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}


def timed(call: Callable[[], "object"], device: str) -> tuple[float, "object"]:
    import torch

    start = time.perf_counter()
    out = call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def compare(args) -> list[dict]:
    import torch

    reference_config, architecture = reference_config_for(args.config_file, args.reference_config)
    root = check_reference_root(args.reference_root, reference_config)
    sizes = parse_sizes(args.classes)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    ref = import_reference(root)
    vocabularies = {n: vocabulary_of_size(n) for n in sizes}

    with tempfile.TemporaryDirectory(prefix="catseg_compare_") as tmp:
        class_json = os.path.join(tmp, "classes.json")
        with open(class_json, "w") as f:  # only read at construction (its init-time embeddings)
            json.dump(vocabularies[sizes[0]], f)
        reference, ref_cfg = build_reference(ref, root / reference_config, architecture, class_json, device=device, seed=args.seed, perturb=args.perturb)
        weights = os.path.join(tmp, "reference_random.pth")
        torch.save({"model": reference.state_dict()}, weights)
        ours, cfg = build_ours(args.config_file, weights, device, args.opts)
        os.remove(weights)
        sample = test_input(args.image_size[0], args.image_size[1], cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, args.seed)

        def run_reference():
            with torch.no_grad(), cuda_calls_on(device):
                return reference([dict(sample)])[0]["sem_seg"]

        def run_ours(names):
            with torch.no_grad():
                return ours([dict(sample, vocabulary=names)])[0]["sem_seg"]

        rows = []
        for index, size in enumerate(sizes):
            names = vocabularies[size]
            text_ref, _ = timed(lambda: set_reference_vocabulary(reference, names), device)
            text_ours, _ = timed(lambda: cache_our_text_embeddings(ours, names), device)
            if index == 0:  # warm-up, untimed
                run_reference()
                run_ours(names)
            load_before = os.getloadavg()
            ref_times, our_times, diff, agreement = [], [], None, None
            for repeat in range(args.repeats):
                t_ref, out_ref = timed(run_reference, device)
                t_ours, out_ours = timed(lambda: run_ours(names), device)
                ref_times.append(t_ref)
                our_times.append(t_ours)
                if repeat == 0:
                    diff = (out_ref.float() - out_ours.float()).abs().max().item()
                    agreement = (out_ref.argmax(0) == out_ours.argmax(0)).float().mean().item()
                del out_ref, out_ours
            row = {
                "classes": size,
                "vocabulary": VOCABULARIES.get(size, f"first {size} of ade20k_847"),
                "max_abs_diff_sigmoid": diff,
                "argmax_agreement": round(agreement, 6),
                "reference_s": round(statistics.median(ref_times), 3),
                "ours_s": round(statistics.median(our_times), 3),
                "speedup": round(statistics.median(ref_times) / statistics.median(our_times), 2),
                "reference_times_s": [round(t, 3) for t in ref_times],
                "ours_times_s": [round(t, 3) for t in our_times],
                "text_embedding_s": {"reference": round(text_ref, 3), "ours": round(text_ours, 3)},
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "device": device if device != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
                "image": f"{args.image_size[0]}x{args.image_size[1]} -> {tuple(sample['image'].shape[-2:])}",
                "repeats": args.repeats,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| classes | max abs diff (sigmoid) | argmax agreement | reference (s) | ours (s) | speed-up | load avg (1 min, before/after) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['classes']} | {r['max_abs_diff_sigmoid']:.2e} | {100 * r['argmax_agreement']:.3f} % | {r['reference_s']:.2f} | "
            f"{r['ours_s']:.2f} | {r['speedup']:.2f}x | {r['loadavg_before'][0]:.2f} / {r['loadavg_after'][0]:.2f} |"
        )
    by_size = {r["classes"]: r for r in rows}
    if 150 in by_size and 847 in by_size:
        lines.append("")
        lines.append(
            f"847 / 150 classes latency: ours {by_size[847]['ours_s'] / by_size[150]['ours_s']:.2f}x, "
            f"reference {by_size[847]['reference_s'] / by_size[150]['reference_s']:.2f}x"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", required=True, help="checkout of KU-CVLAB/CAT-Seg (holds cat_seg/ and configs/)")
    parser.add_argument("--config-file", default="configs/catseg_vitb_384.yaml")
    parser.add_argument("--reference-config", default="", help="reference config relative to its root (default: the counterpart of --config-file)")
    parser.add_argument("--classes", default="20,150,459,847", help="comma-separated vocabulary sizes")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per implementation and size")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="original image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perturb", type=float, default=0.02, help="std of the noise added to every reference parameter")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for ours, KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        reference_config, _ = reference_config_for(args.config_file, args.reference_config)
        check_reference_root(args.reference_root, reference_config)
        parse_sizes(args.classes)
    except ValueError as error:  # ReferenceCheckoutError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = compare(args)
    print()
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
