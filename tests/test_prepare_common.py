"""The shared converter machinery: resumable atomic jobs, corrupt-input errors, count checks."""
import os

import numpy as np
import pytest
from PIL import Image

from ovseg_d2.data.prepare.common import (
    ConversionJob,
    CorruptInputError,
    PreparationError,
    check_outputs_do_not_touch_inputs,
    read_label,
    read_rgb,
    resize_short_side,
    run_jobs,
    save_label,
    verify_count,
)


def invert_label(job: ConversionJob) -> None:
    """Module-level (picklable) converter used by the tests: out = 255 - in."""
    label = read_label(job.inputs[0])
    save_label((255 - label).astype(np.uint8), job.outputs[0])


def write_then_fail(job: ConversionJob) -> None:
    def half(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    from ovseg_d2.data.prepare.common import atomic_save

    atomic_save(job.outputs[0], half)


def make_jobs(tmp_path, n=6):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    jobs = []
    for i in range(n):
        Image.fromarray(np.full((4, 5), i * 10, np.uint8)).save(raw / f"{i}.png")
        jobs.append(ConversionJob((raw / f"{i}.png",), (out / f"{i}.png",)))
    return raw, out, jobs


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_converts_skips_and_verifies(tmp_path, workers):
    raw, out, jobs = make_jobs(tmp_path)
    stats = run_jobs(jobs, invert_label, description="invert", workers=workers)
    assert (stats.converted, stats.skipped) == (6, 0)
    assert np.array_equal(np.asarray(Image.open(out / "3.png")), np.full((4, 5), 225, np.uint8))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "2.png").unlink()
    stats = run_jobs(jobs, invert_label, description="invert", workers=workers)
    assert (stats.converted, stats.skipped) == (1, 5)
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in out.iterdir() if p.name != "2.png")
    verify_count(out, ".png", 6, "inverted")
    with pytest.raises(PreparationError, match="expected 7 '.png' files.*found 6"):
        verify_count(out, ".png", 7, "inverted")


def test_corrupt_input_is_named_and_others_finish(tmp_path):
    raw, out, jobs = make_jobs(tmp_path)
    (raw / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptInputError, match=r"(?s)1 input\(s\).*4\.png"):
        run_jobs(jobs, invert_label, description="invert", workers=2)
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "3.png", "5.png"]


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path):
    raw, out, jobs = make_jobs(tmp_path, n=1)
    with pytest.raises(CorruptInputError, match="disk full"):
        run_jobs(jobs, write_then_fail, description="fail", workers=1)
    assert list(out.iterdir()) == []  # neither the final file nor a temporary one


def test_stray_temporary_files_are_not_counted(tmp_path):
    raw, out, jobs = make_jobs(tmp_path, n=2)
    run_jobs(jobs, invert_label, description="invert", workers=1)
    (out / ".0.png.abc.tmp").write_bytes(b"left over by a killed run")
    verify_count(out, ".png", 2, "inverted")


def test_outputs_may_not_live_in_raw_folders(tmp_path):
    check_outputs_do_not_touch_inputs([tmp_path / "annotations_detectron2"], [tmp_path / "annotations"])
    with pytest.raises(PreparationError, match="never written to"):
        check_outputs_do_not_touch_inputs([tmp_path / "annotations" / "x"], [tmp_path / "annotations"])


def test_readers_normalise_modes(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert np.array_equal(read_rgb(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    assert read_rgb(tmp_path / "d.png").dtype == np.uint8
    assert read_label(tmp_path / "d.png")[2, 3] == 11000  # 16-bit values survive


def test_resize_short_side():
    label = np.arange(600 * 900, dtype=np.uint32).reshape(600, 900).astype(np.uint16)
    small = resize_short_side(label, 300, nearest=True)
    assert small.shape == (300, 450) and small.dtype == np.uint16
    assert set(np.unique(small)).issubset(set(np.unique(label)))  # nearest: no new values
    assert resize_short_side(label, 700, nearest=True) is label  # never enlarges
