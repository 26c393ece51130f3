"""Sliding-window helpers against hand-computed layouts and a per-pixel reference."""
import pytest
import torch

from ovseg_d2.modeling.sliding_window import crop_windows, sliding_window_predict, stitch_windows, window_boxes, window_starts


def test_window_starts_by_hand():
    assert window_starts(640, 384, 256) == [0, 256]  # CAT-Seg: 2 x 2 windows on 640 x 640
    assert window_starts(448, 448, 224) == [0]
    assert window_starts(700, 448, 224) == [0, 224, 252]  # last window flush with the border
    assert window_starts(300, 448, 224) == [0]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)


def test_catseg_window_order_matches_unfold():
    boxes = window_boxes(640, 640, 384, 256)
    assert boxes == [(0, 0, 384, 384), (0, 256, 384, 640), (256, 0, 640, 384), (256, 256, 640, 640)]
    image = torch.arange(2 * 3 * 640 * 640, dtype=torch.float32).view(2, 3, 640, 640)
    unfolded = torch.nn.functional.unfold(image, kernel_size=384, stride=256)  # B x (C*384*384) x 4
    reference = unfolded.transpose(1, 2).reshape(2 * 4, 3, 384, 384)
    assert torch.equal(crop_windows(image, boxes), reference)


def test_stitch_averages_overlaps_like_fold():
    torch.manual_seed(0)
    boxes = window_boxes(640, 640, 384, 256)
    windows = torch.rand(2 * 4, 5, 384, 384)
    got = stitch_windows(windows, boxes, 640, 640)
    folded = torch.nn.functional.fold(windows.view(2, 4, -1).transpose(1, 2), output_size=640, kernel_size=384, stride=256)
    counts = torch.nn.functional.fold(torch.ones(1, 384 * 384, 4), output_size=640, kernel_size=384, stride=256)
    torch.testing.assert_close(got, folded / counts)
    assert counts[0, 0, 300, 300] == 4 and counts[0, 0, 300, 10] == 2 and counts[0, 0, 10, 10] == 1


def test_sliding_window_predict_per_pixel_reference():
    torch.manual_seed(1)
    images = torch.rand(1, 2, 20, 30)
    predict = lambda x: torch.cat([x.sum(1, keepdim=True), x.mean((1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])], dim=1)  # noqa: E731
    got = sliding_window_predict(images, predict, window=12, stride=8)
    boxes = window_boxes(20, 30, 12, 8)
    for y in (0, 9, 19):
        for x in (0, 13, 29):
            covering = [(t, l, b, r) for t, l, b, r in boxes if t <= y < b and l <= x < r]
            means = [images[0, :, t:b, l:r].mean().item() for t, l, b, r in covering]
            assert got[0, 0, y, x].item() == pytest.approx(images[0, :, y, x].sum().item(), abs=1e-5)
            assert got[0, 1, y, x].item() == pytest.approx(sum(means) / len(means), abs=1e-5)
