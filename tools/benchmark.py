#!/usr/bin/env python
"""Latency, peak memory and throughput per vocabulary size: the evaluation path or the predictor.

    # evaluation path (--mode eval, default): per-image latency of the model's own test forward
    python tools/benchmark.py --config-file configs/catseg_vitb_384.yaml --classes 20,150,459,847
    python tools/benchmark.py --config-file configs/catseg_vitb_384.yaml --device cuda --dtype bfloat16
    # Talk2DINO sliding window (448 windows, stride 224) on an ADE20K-sized image
    python tools/benchmark.py --config-file configs/talk2dino_vitb.yaml --classes 20,150,847 --image-size 512x683

    # predictor (--mode predictor): OpenVocabPredictor as a user calls it, one model per config
    python tools/benchmark.py --mode predictor --config-file configs/quickstart/baseline_maskclip_tiny.yaml \\
        --config-file configs/catseg_vitb_384.yaml --classes 20,150,847

Models are built from the config with random weights (``MODEL.CLIP.PRETRAINED ""``,
``MODEL.DINOV2.PRETRAINED ""``, ``MODEL.WEIGHTS ""``: the architecture and therefore the cost
are those of the real model) unless ``--keep-weights``. Without ``--config-file`` the package
defaults are used (ViT-B/16 CLIP, ViT-B/14 DINOv2-reg), with the overrides given after the
options. The input is a random ``--image-size`` image (``S`` or ``HxW``).

``--mode eval``: the image is fed to the model as the evaluation mapper would (for CAT-Seg:
640 x 640 sliding window, 4 windows + global view as one batch; Talk2DINO: short side 448,
448 windows at stride 224). Text embeddings are computed on the first call (a fresh text cache)
and then come from the cache, as during evaluation. Rows: median latency of ``--repeats`` calls, the first call,
peak memory.

``--mode predictor``: per vocabulary size a fresh persistent text-embedding cache (a temporary
folder), then
  * ``cold``: the first ``predictor(image, vocabulary)`` call (the text encoder runs; the text
    tower's own share is ``text_encoder_s``);
  * ``warm``: the median of ``--repeats`` further calls (embeddings from the in-memory cache);
  * ``warm_disk``: the first call of a second predictor instance with the same weights (as a
    second run of ``tools/demo.py``: embeddings from the disk cache, the text encoder skipped);
  * ``batched``: ``predict_batch`` over ``--batch-images`` images, ``--batch-size`` per model
    call, as images per second.
The predictor's own resize applies (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) and the scores
come back at the input resolution.

Each vocabulary size runs in its own process so that peak memory (CPU: the process's maximum
resident set size, model included; CUDA: ``max_memory_allocated``) is its own. One JSON line per
measurement, then a Markdown table. Numbers are printed, never asserted.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = ("float32", "bfloat16", "float16")


def parse_size(text: str) -> tuple[int, int]:
    """"640" -> (640, 640); "512x683" -> (512, 683)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--image-size {text!r}: give S or HxW in pixels, e.g. 640 or 512x683")
    return parts[0], parts[1]


def build_cfg(args):
    from detectron2.config import get_cfg

    from ovseg_d2 import add_ovseg_config

    cfg = get_cfg()
    add_ovseg_config(cfg)
    if args.config:
        cfg.merge_from_file(args.config)
    overrides = ["MODEL.DEVICE", args.device]
    if not args.keep_weights:
        overrides += ["MODEL.CLIP.PRETRAINED", "", "MODEL.DINOV2.PRETRAINED", "", "MODEL.WEIGHTS", ""]
    cfg.merge_from_list(overrides + list(args.opts))
    return cfg


def vocabulary(num_classes: int) -> list[str]:
    return [f"object number {i}" for i in range(num_classes)]


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def common_fields(args, cfg, device) -> dict:
    return {
        "mode": args.mode,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "config": args.config or "(package defaults)",
        "device": device_name(device),
        "dtype": args.dtype,
        "classes": args.num_classes,
        "image": "x".join(map(str, args.image_size)),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
    }


def measure_eval(args, cache_dir: str) -> list[dict]:
    import torch
    from detectron2.modeling import build_model

    args.opts = list(args.opts) + ["MODEL.TEXT.EMBEDDING_CACHE_DIR", cache_dir]
    cfg = build_cfg(args)
    model = build_model(cfg).eval()
    device = torch.device(cfg.MODEL.DEVICE)
    generator = torch.Generator().manual_seed(0)
    height, width = args.image_size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    inputs = [{"image": image, "height": height, "width": width, "vocabulary": vocabulary(args.num_classes)}]
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(inputs)[0]["sem_seg"]
        synchronize(device)
        return out

    cold_start = time.perf_counter()
    run()  # warm-up: text embeddings computed and cached
    cold = time.perf_counter() - cold_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    row = common_fields(args, cfg, device)
    if hasattr(model, "sliding_size") and hasattr(model, "window_stride"):  # Talk2DINO: windows per image
        from ovseg_d2.modeling.sliding_window import window_boxes

        row["windows"] = len(window_boxes(*model.sliding_size(height, width), model.window_size, model.window_stride))
    row.update(
        measurement="eval",
        latency_s_median=round(statistics.median(times), 4),
        latency_s_min=round(min(times), 4),
        first_call_s=round(cold, 4),
        repeats=args.repeats,
        peak_memory_mib=round(peak_memory_mib(device), 1),
    )
    return [row]


def measure_predictor(args, cache_dir: str) -> list[dict]:
    import numpy as np
    import torch

    from ovseg_d2 import OpenVocabPredictor

    args.opts = list(args.opts) + ["MODEL.TEXT.EMBEDDING_CACHE_DIR", cache_dir]
    cfg = build_cfg(args)
    device = torch.device(cfg.MODEL.DEVICE)
    precision = args.dtype
    predictor = OpenVocabPredictor(cfg, precision=precision)
    rng = np.random.default_rng(0)
    height, width = args.image_size
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(max(1, args.batch_images))]
    names = vocabulary(args.num_classes)

    def timed(call):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        return time.perf_counter() - start

    encoder = predictor.model.text_encoder
    encode_tokens, text_seconds = encoder.encode_tokens, []

    def timed_encode(tokens):  # the text tower's own time within the cold call
        synchronize(device)
        start = time.perf_counter()
        out = encode_tokens(tokens)
        synchronize(device)
        text_seconds.append(time.perf_counter() - start)
        return out

    encoder.encode_tokens = timed_encode
    cold = timed(lambda: predictor(images[0], names))
    encoder.encode_tokens = encode_tokens
    cold_encoder_calls = encoder.encoder_calls
    warm = [timed(lambda: predictor(images[0], names)) for _ in range(args.repeats)]
    batched = timed(lambda: predictor.predict_batch(images, names, batch_size=args.batch_size))
    peak = peak_memory_mib(device)
    base = common_fields(args, cfg, device)
    rows = [
        {**base, "measurement": "cold", "latency_s": round(cold, 4), "text_encoder_calls": cold_encoder_calls,
         "text_encoder_s": round(sum(text_seconds), 4), "peak_memory_mib": round(peak, 1)},
        {**base, "measurement": "warm", "latency_s": round(statistics.median(warm), 4), "latency_s_min": round(min(warm), 4),
         "repeats": args.repeats, "text_encoder_calls": predictor.model.text_encoder.encoder_calls - cold_encoder_calls, "peak_memory_mib": round(peak, 1)},
        {**base, "measurement": "batched", "images_per_s": round(len(images) / batched, 4), "images": len(images),
         "batch_size": args.batch_size, "seconds": round(batched, 4), "peak_memory_mib": round(peak, 1)},
    ]
    # A second instance with the same weights reads the disk cache (peak memory is recorded above,
    # before this second model exists).
    state = predictor.model.state_dict()
    del predictor
    second = OpenVocabPredictor(cfg, precision=precision)
    second.model.load_state_dict(state)
    del state
    warm_disk = timed(lambda: second(images[0], names))
    rows.insert(2, {**base, "measurement": "warm_disk", "latency_s": round(warm_disk, 4),
                    "text_encoder_calls": second.model.text_encoder.encoder_calls, "peak_memory_mib": round(peak, 1)})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: one row per (config, classes); eval and predictor rows get their own columns."""
    eval_rows = [r for r in rows if r.get("measurement") == "eval"]
    lines = []
    if eval_rows:
        windows = any("windows" in r for r in eval_rows)  # sliding-window models: windows per image
        lines += [
            "| model | config | device | dtype | image | classes | latency (s, median) | first call (s) | peak memory (MiB) |"
            + (" windows |" if windows else ""),
            "|---|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if windows else ""),
        ]
        for r in eval_rows:
            lines.append(
                f"| {r['meta_architecture']} | {r['config']} | {r['device']} | {r['dtype']} | {r['image']} | {r['classes']} | "
                f"{r['latency_s_median']:.3f} | {r['first_call_s']:.3f} | {r['peak_memory_mib']:.0f} |"
                + (f" {r.get('windows', 'n/a')} |" if windows else "")
            )
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r.get("mode") == "predictor":
            groups.setdefault((r["config"], r["classes"], r["dtype"]), {})[r["measurement"]] = r
    if groups:
        if lines:
            lines.append("")
        lines += [
            "| model | config | device | dtype | image | classes | cold (s) | warm (s) | warm from disk (s) | batched (images/s) | peak memory (MiB) | text encoder in cold (s) |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for group in groups.values():
            first = next(iter(group.values()))

            def value(kind, key, fmt="{:.3f}"):
                return fmt.format(group[kind][key]) if kind in group else "n/a"

            lines.append(
                f"| {first['meta_architecture']} | {first['config']} | {first['device']} | {first['dtype']} | {first['image']} | "
                f"{first['classes']} | {value('cold', 'latency_s')} | {value('warm', 'latency_s')} | {value('warm_disk', 'latency_s')} | "
                f"{value('batched', 'images_per_s', '{:.2f}')} | {first['peak_memory_mib']:.0f} | {value('cold', 'text_encoder_s')} |"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--mode", choices=("eval", "predictor"), default="eval", help="the model's evaluation path, or OpenVocabPredictor")
    parser.add_argument("--config-file", action="append", default=[], help="a config; repeat for several models (none: the package defaults)")
    parser.add_argument("--classes", default="20,150,459,847", help="comma-separated vocabulary sizes")
    parser.add_argument("--image-size", type=parse_size, default=(640, 640), help="S or HxW (default 640)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first one")
    parser.add_argument("--batch-images", type=int, default=8, help="--mode predictor: images of the batched measurement")
    parser.add_argument("--batch-size", type=int, default=4, help="--mode predictor: images per model call in the batched measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--keep-weights", action="store_true", help="load the config's real weights")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per vocabulary size (0: no limit)")
    parser.add_argument("--num-classes", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--text-cache-dir", default="", help=argparse.SUPPRESS)  # child mode: a fresh folder made by the parent
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (applied to every config)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        print("error: --repeats and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.num_classes:  # child: one config, one vocabulary size
        if not args.text_cache_dir:
            print("error: --num-classes is internal (the parent process passes --text-cache-dir)", file=sys.stderr)
            return 2
        import torch

        import ovseg_d2  # noqa: F401

        if args.threads:
            torch.set_num_threads(args.threads)
        args.config = args.config_file[0] if args.config_file else ""
        # a fresh persistent text cache per measurement: the first call is cold whatever earlier
        # runs left in the user's cache, and that cache is not touched (the parent made the
        # folder and removes it, even when it had to kill this process)
        rows = measure_predictor(args, args.text_cache_dir) if args.mode == "predictor" else measure_eval(args, args.text_cache_dir)
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    try:
        sizes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        print(f"error: --classes {args.classes!r} must be comma-separated integers, e.g. 20,150,847", file=sys.stderr)
        return 2
    rows, failed = [], 0
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    for config in args.config_file or [""]:
        for n in sizes:
            child = [sys.executable, os.path.abspath(__file__), "--num-classes", str(n), "--mode", args.mode,
                     "--image-size", "x".join(map(str, args.image_size)), "--repeats", str(args.repeats),
                     "--batch-images", str(args.batch_images), "--batch-size", str(args.batch_size), "--device", args.device,
                     "--dtype", args.dtype, "--threads", str(args.threads)]
            child += ["--config-file", config] if config else []
            child += ["--keep-weights"] if args.keep_weights else []
            cache_dir = tempfile.mkdtemp(prefix="ovseg_d2_benchmark_text_cache_")
            child += ["--text-cache-dir", cache_dir] + list(args.opts)
            try:
                result = subprocess.run(child, capture_output=True, text=True, env=env, timeout=args.timeout or None)
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                error = None if result.returncode == 0 and lines else (result.stderr.strip().splitlines() or ["no output"])[-1]
            except subprocess.TimeoutExpired:
                lines, error = [], f"over --timeout {args.timeout:g} s"
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            if error:
                failed += 1
                print(json.dumps({"mode": args.mode, "config": config or "(package defaults)", "classes": n, "error": error}), flush=True)
                continue
            for line in lines:
                print(line, flush=True)
                rows.append(json.loads(line))
    if rows:
        print("\n" + table(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
