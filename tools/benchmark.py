#!/usr/bin/env python
"""Per-image latency and peak memory of a model's evaluation path, per vocabulary size.

    python tools/benchmark.py --config-file configs/catseg_vitb_384.yaml --classes 20,150,459,847
    python tools/benchmark.py --config-file configs/catseg_vitb_384.yaml --device cuda --dtype bfloat16

The model is built from the config with random weights (``MODEL.CLIP.PRETRAINED ""``; the
architecture and therefore the cost are those of the real model) unless ``--keep-weights``.
The input is a random ``--image-size`` square image (the evaluation mapper's output), run
through the model's own evaluation path (for CAT-Seg: 640 x 640 sliding window, 4 windows +
global view as one batch). Text embeddings are computed on the warm-up call and then come from
the cache, as they do during evaluation. Each measurement runs in its own process so that peak
memory (CPU: maximum resident set size; CUDA: ``max_memory_allocated``) is its own. One JSON
line per measurement, then a Markdown table. Numbers are printed, never asserted.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(args) -> dict:
    import torch

    import ovseg_d2  # noqa: F401
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ovseg_d2 import add_ovseg_config

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(args.config_file)
    overrides = ["MODEL.DEVICE", args.device]
    if not args.keep_weights:
        overrides += ["MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", ""]
    cfg.merge_from_list(overrides + args.opts)
    model = build_model(cfg).eval()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.image_size, args.image_size), dtype=torch.uint8, generator=generator)
    names = [f"object number {i}" for i in range(args.num_classes)]
    inputs = [{"image": image, "height": args.image_size, "width": args.image_size, "vocabulary": names}]
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(inputs)[0]["sem_seg"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    cold_start = time.perf_counter()
    run()  # warm-up: text embeddings computed and cached
    cold = time.perf_counter() - cold_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "config": args.config_file,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "classes": args.num_classes,
        "image": args.image_size,
        "latency_s_median": round(statistics.median(times), 4),
        "latency_s_min": round(min(times), 4),
        "first_call_s": round(cold, 4),
        "repeats": args.repeats,
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--classes", default="20,150,459,847", help="comma-separated vocabulary sizes")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--keep-weights", action="store_true", help="load the config's real weights")
    parser.add_argument("--num-classes", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if args.num_classes:
        print(json.dumps(measure(args)), flush=True)
        return 0
    rows = []
    for n in [int(c) for c in args.classes.split(",") if c.strip()]:
        child = [sys.executable, os.path.abspath(__file__), "--num-classes", str(n)] + sys.argv[1:]
        result = subprocess.run(child, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1")))
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            print(json.dumps({"classes": n, "error": result.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(lines[-1], flush=True)
        rows.append(json.loads(lines[-1]))
    if rows:
        print("\n| model | device | dtype | classes | latency (s, median) | first call (s) | peak memory (MiB) |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['meta_architecture']} | {r['device']} | {r['dtype']} | {r['classes']} | {r['latency_s_median']:.3f} | {r['first_call_s']:.3f} | {r['peak_memory_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
