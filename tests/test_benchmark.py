"""tools/benchmark.py on tiny configs: every JSON line parses and carries its fields, the
Markdown table is printed with one row per (config, vocabulary size), failures are reported.
No timing is asserted: the figures are whatever the machine gives."""
import json
import os
import subprocess
import sys

from .conftest import REPO_ROOT
from .tiny_configs import TALK2DINO_TINY

BASELINE = "configs/quickstart/baseline_maskclip_tiny.yaml"
CATSEG = "configs/quickstart/catseg_tiny.yaml"
SMALL = ["--image-size", "64x96", "--repeats", "1", "--batch-images", "2", "--batch-size", "2"]


def run_benchmark(*args, timeout=600, tmpdir=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)  # where the per-measurement text caches go
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "benchmark.py"), *args],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    return result, records, table


def test_predictor_mode_per_meta_architecture(tmp_path):
    result, records, table = run_benchmark("--mode", "predictor", "--config-file", BASELINE, "--config-file", CATSEG,
                                           "--classes", "3", *SMALL, tmpdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == []  # the temporary text caches are removed
    assert [(r["meta_architecture"], r["measurement"]) for r in records] == [
        (arch, kind) for arch in ("MaskCLIPBaseline", "CATSeg") for kind in ("cold", "warm", "warm_disk", "batched")
    ]
    for r in records:
        assert r["mode"] == "predictor" and r["classes"] == 3 and r["image"] == "64x96" and r["dtype"] == "float32"
        assert r["peak_memory_mib"] > 0 and r["peak_memory_kind"] == "process max RSS"
        if r["measurement"] == "batched":
            assert r["images"] == 2 and r["batch_size"] == 2 and r["images_per_s"] > 0
        else:
            assert r["latency_s"] >= 0
    calls = {(r["meta_architecture"], r["measurement"]): r.get("text_encoder_calls") for r in records}
    for arch in ("MaskCLIPBaseline", "CATSeg"):
        assert calls[arch, "cold"] == 1  # the first vocabulary is encoded ...
        cold = next(r for r in records if (r["meta_architecture"], r["measurement"]) == (arch, "cold"))
        assert 0 < cold["text_encoder_s"] <= cold["latency_s"]
        assert calls[arch, "warm"] == 0  # ... then comes from the in-memory cache ...
        assert calls[arch, "warm_disk"] == 0  # ... and, for a second instance, from the disk cache
    assert table[0].startswith("| model | config | device | dtype | image | classes | cold (s) | warm (s) | warm from disk (s)")
    assert table[0].endswith("| text encoder in cold (s) |")
    assert len(table) == 2 + 2 and "| MaskCLIPBaseline |" in table[2] and "| CATSeg |" in table[3]


def test_talk2dino_sliding_window_eval_and_predictor():
    result, records, table = run_benchmark("--config-file", BASELINE, "--classes", "3,5", *SMALL, *TALK2DINO_TINY)
    assert result.returncode == 0, result.stderr
    assert [(r["meta_architecture"], r["classes"], r["measurement"]) for r in records] == [("Talk2DINO", 3, "eval"), ("Talk2DINO", 5, "eval")]
    for r in records:
        # 64 x 96 -> short side 56: 56 x 84, 56-px windows at stride 28 -> 2 windows
        assert r["windows"] == 2 and r["repeats"] == 1
        assert r["latency_s_median"] >= 0 and r["first_call_s"] >= 0 and r["peak_memory_mib"] > 0
    assert table[0].startswith("| model | config | device | dtype | image | classes | latency (s, median)") and len(table) == 4
    assert table[0].endswith("| windows |") and table[2].endswith("| 2 |")

    result, records, table = run_benchmark("--mode", "predictor", "--config-file", BASELINE, "--classes", "3", *SMALL, *TALK2DINO_TINY)
    assert result.returncode == 0, result.stderr
    assert [r["measurement"] for r in records] == ["cold", "warm", "warm_disk", "batched"]
    assert {r["meta_architecture"] for r in records} == {"Talk2DINO"} and len(table) == 3


def test_failures_are_reported():
    result, _, _ = run_benchmark("--config-file", BASELINE, "--classes", "three")
    assert result.returncode == 2 and "--classes 'three' must be comma-separated integers" in result.stderr
    result, records, table = run_benchmark("--config-file", BASELINE, "--classes", "3", *SMALL, "MODEL.NO_SUCH_KEY", "1")
    assert result.returncode == 1
    assert records[0]["classes"] == 3 and "NO_SUCH_KEY" in records[0]["error"]
    assert table == []
