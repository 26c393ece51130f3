"""Persistent text-embedding cache: skips the encoder across model instances, shares entries
between vocabularies, recomputes corrupt entries, survives concurrent writers, and never serves
embeddings of older weights."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from ovseg_d2.modeling.text import PersistentTextEmbeddingCache, resolve_cache_directory
from ovseg_d2.modeling.text import text_encoder as text_encoder_module

from .conftest import REPO_ROOT, quickstart_cfg

BASELINE = "configs/quickstart/baseline_maskclip_tiny.yaml"
CPU = torch.device("cpu")


def tiny_model(cache_dir, *opts, seed=0):
    torch.manual_seed(seed)
    cfg = quickstart_cfg(BASELINE, "MODEL.TEXT.EMBEDDING_CACHE_DIR", str(cache_dir), *opts)
    return build_model(cfg).eval()


def entry_files(cache_dir):
    return sorted(glob.glob(os.path.join(str(cache_dir), "*", "*.pt")))


def test_second_model_instance_skips_the_text_encoder(tmp_path, shapes_root):
    names = ["red circle", "green triangle", "sand background"]
    first_model = tiny_model(tmp_path)
    with torch.no_grad():
        first = first_model.text_encoder(names, device=CPU)
    assert first_model.text_encoder.encoder_calls == 1
    assert len(entry_files(tmp_path)) == 3  # one entry per class name

    second_model = tiny_model(tmp_path)  # a fresh instance (same weights), as in a second run
    with torch.no_grad():
        again = second_model.text_encoder(names, device=CPU)
        outputs = second_model([{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "vocabulary": names}])
    assert second_model.text_encoder.encoder_calls == 0
    assert outputs[0]["sem_seg"].shape == (3, 64, 64)
    torch.testing.assert_close(again, first, rtol=0, atol=0)

    # Another vocabulary shares the entries of the names it has in common: only "purple star" is
    # encoded, and its embedding equals a direct (uncached) encoding.
    with torch.no_grad():
        mixed = second_model.text_encoder(["purple star", "red circle"], device=CPU)
        direct = second_model.text_encoder(["purple star", "red circle"], device=CPU, use_cache=False)
    assert second_model.text_encoder.encoder_calls == 2  # the miss, then the direct encoding
    assert second_model.text_encoder.disk_cache.hits == 3 + 1
    torch.testing.assert_close(mixed, direct, rtol=1e-5, atol=1e-5)


def test_other_weights_or_templates_are_other_entries(tmp_path, shapes_root):
    names = ["red circle"]
    with torch.no_grad():
        tiny_model(tmp_path, seed=0).text_encoder(names, device=CPU)
        other_weights = tiny_model(tmp_path, seed=1)
        other_weights.text_encoder(names, device=CPU)
        other_templates = tiny_model(tmp_path, "MODEL.TEXT.TEMPLATE_SET", "catseg")
        other_templates.text_encoder(names, device=CPU)
    assert other_weights.text_encoder.encoder_calls == 1
    assert other_templates.text_encoder.encoder_calls == 1
    assert len(entry_files(tmp_path)) == 3
    assert len(os.listdir(tmp_path)) == 2  # one folder per text-tower fingerprint


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other_key", "flipped_value"])
def test_corrupt_entry_is_recomputed_and_rewritten(tmp_path, shapes_root, damage):
    names = ["red circle", "green triangle"]
    with torch.no_grad():
        reference = tiny_model(tmp_path).text_encoder(names, device=CPU)
    files = {os.path.basename(p): p for p in entry_files(tmp_path)}
    model = tiny_model(tmp_path)
    target = model.text_encoder.disk_cache.entry_path(model.text_encoder.weights_fingerprint(), model.text_encoder.templates, "first", "red circle")
    other = next(p for p in files.values() if p != target)
    data = open(target, "rb").read()
    if damage == "truncate":
        open(target, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(target, "wb").write(os.urandom(len(data)))
    elif damage == "empty":
        open(target, "wb").close()
    elif damage == "other_key":  # a valid file, but of another class name
        open(target, "wb").write(open(other, "rb").read())
    else:  # valid container, tensor bytes altered (checksum no longer matches)
        entry = torch.load(target, weights_only=True)
        entry["embedding"][0, 0] += 1.0
        torch.save(entry, target)
    with torch.no_grad():
        got = model.text_encoder(names, device=CPU)
    assert model.text_encoder.encoder_calls == 1
    assert model.text_encoder.disk_cache.corrupt == 1
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    # The rewritten entry is sound: a third instance reads both names from disk.
    third = tiny_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(third.text_encoder(names, device=CPU), reference, rtol=1e-5, atol=1e-5)
    assert third.text_encoder.encoder_calls == 0 and third.text_encoder.disk_cache.corrupt == 0


_WRITER = """
import sys, torch
from ovseg_d2.modeling.text import PersistentTextEmbeddingCache
directory, worker, rounds, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache = PersistentTextEmbeddingCache(directory)
for _ in range(rounds):
    for i in range(count):
        cache.put("f" * 64, ("{}",), "first", f"class {i}", torch.full((1, 512), worker))
"""


def test_concurrent_writers_never_leave_a_broken_entry(tmp_path):
    """Two processes write the same entries over and over while this one reads them."""
    names = [f"class {i}" for i in range(4)]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(w), "40", str(len(names))], env=env) for w in (1, 2)]
    reader = PersistentTextEmbeddingCache(str(tmp_path))
    seen = set()
    while any(w.poll() is None for w in workers):
        for name in names:
            value = reader.get("f" * 64, ("{}",), "first", name)
            if value is not None:
                assert value.shape == (1, 512)
                assert torch.all(value == value[0, 0])  # all of one writer's tensor, never a mix
                seen.add(float(value[0, 0]))
    for w in workers:
        assert w.wait() == 0
    assert reader.corrupt == 0
    assert seen <= {1.0, 2.0}
    for name in names:
        assert float(reader.get("f" * 64, ("{}",), "first", name)[0, 0]) in (1.0, 2.0)
    leftovers = [n for _, _, files in os.walk(tmp_path) for n in files if not n.endswith(".pt")]
    assert leftovers == []  # no temporary files left behind


def test_training_the_text_tower_never_reads_stale_entries(tmp_path, shapes_root):
    """After an optimizer step the content fingerprint changes, so old entries are never served."""
    model = tiny_model(tmp_path, "MODEL.CLIP.TEXT_TRAINABLE", "qv")
    names = ["red circle", "green triangle"]
    encoder = model.text_encoder
    with torch.no_grad():
        before = encoder(names, device=CPU)
    fingerprint_before = encoder.weights_fingerprint()
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 8, (64, 64))}]
    model(batch)["loss_sem_seg"].backward()
    assert encoder.encoder_calls == 2  # the training forward encodes (differentiably), no cache
    optimizer.step()
    model.eval()
    assert encoder.weights_fingerprint() != fingerprint_before
    with torch.no_grad():
        after = encoder(names, device=CPU)
        direct = encoder(names, device=CPU, use_cache=False)
    assert encoder.encoder_calls == 4
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, direct, rtol=1e-5, atol=1e-5)
    # A fresh instance with the *old* weights still finds the old entries (they are not wrong,
    # just of other weights), and one with the new weights finds the new ones.
    assert len(os.listdir(tmp_path)) == 2


def test_frozen_text_tower_uses_the_cache_during_training(tmp_path, shapes_root):
    model = tiny_model(tmp_path, "MODEL.CLIP.TEXT_TRAINABLE", "none").train()
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 8, (64, 64))}]
    for _ in range(2):
        model(batch)["loss_sem_seg"].backward()
    assert model.text_encoder.encoder_calls == 1
    fresh = tiny_model(tmp_path, "MODEL.CLIP.TEXT_TRAINABLE", "none").train()
    fresh(batch)["loss_sem_seg"].backward()
    assert fresh.text_encoder.encoder_calls == 0


def test_weights_are_hashed_once_per_weight_version(tmp_path, shapes_root, monkeypatch):
    calls = []
    real = text_encoder_module.text_weights_fingerprint
    monkeypatch.setattr(text_encoder_module, "text_weights_fingerprint", lambda params: calls.append(1) or real(params))
    model = tiny_model(tmp_path)
    with torch.no_grad():
        for vocabulary in (["red circle"], ["green triangle"], ["red circle", "purple star"]):
            model.text_encoder(vocabulary, device=CPU)
        assert len(calls) == 1
        model.backbone.clip.token_embedding.weight.mul_(1.5)  # an in-place change: a new version
        model.text_encoder(["red circle"], device=CPU)
    assert len(calls) == 2
    assert model.text_encoder.encoder_calls == 4


def test_cache_directory_setting(tmp_path, monkeypatch, shapes_root):
    assert resolve_cache_directory("") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_directory("auto") == str(tmp_path / "xdg" / "ovseg_d2" / "text_embeddings")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_directory("auto") == os.path.join(os.path.expanduser("~"), ".cache", "ovseg_d2", "text_embeddings")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    torch.manual_seed(0)
    model = build_model(quickstart_cfg(BASELINE)).eval()  # default "auto"
    with torch.no_grad():
        model.text_encoder(["red circle"], device=CPU)
    assert len(entry_files(tmp_path / "xdg" / "ovseg_d2" / "text_embeddings")) == 1
    off = tiny_model("")
    assert off.text_encoder.disk_cache is None


def test_unwritable_cache_directory_warns_and_keeps_working(tmp_path, shapes_root, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    model = tiny_model(blocker / "cache")
    with torch.no_grad():
        first = model.text_encoder(["red circle"], device=CPU)
        second = model.text_encoder(["green triangle"], device=CPU)
    assert first.shape[0] == 1 and second.shape[0] == 1
    assert not model.text_encoder.disk_cache.enabled
    assert "text-embedding cache turned off" in caplog.text
