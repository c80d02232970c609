from __future__ import annotations

import pytest
import torch

from glaclip.model.windows import Window, inner_edges, stitch, window_grid


def coverage(windows: list[Window], height: int, width: int) -> torch.Tensor:
    """How many windows cover each pixel, counted here."""
    count = torch.zeros(height, width)
    for w in windows:
        count[w.y1 : w.y2, w.x1 : w.x2] += 1
    return count


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [
        (224, 224, (1, 1)),
        (336, 448, (2, 3)),
        (336, 500, (2, 4)),  # (500 - 224 + 111) // 112 + 1 = 4
        (560, 1120, (4, 9)),
        (1024, 1024, (9, 9)),
        (225, 224, (2, 1)),
        (100, 300, (1, 2)),  # a side shorter than the crop gives one row
    ],
)
def test_grid_counts(h: int, w: int, expected: tuple[int, int]) -> None:
    wins = window_grid(h, w)
    rows, cols = len({(v.y1, v.y2) for v in wins}), len({(v.x1, v.x2) for v in wins})
    assert (rows, cols) == expected and len(wins) == rows * cols


def test_windows_cover_everything_and_stay_inside() -> None:
    for h, w in [(336, 448), (336, 500), (561, 1121), (224, 2048), (250, 230)]:
        wins = window_grid(h, w)
        cov = coverage(wins, h, w)
        assert cov.min().item() >= 1, (h, w)
        for win in wins:
            assert 0 <= win.y1 < win.y2 <= h and 0 <= win.x1 < win.x2 <= w
            assert win.y2 - win.y1 == min(224, h) and win.x2 - win.x1 == min(224, w)


def test_window_positions_row_major_and_last_shifted_back() -> None:
    wins = window_grid(336, 500)
    assert [(w.y1, w.x1) for w in wins[:4]] == [(0, 0), (0, 112), (0, 224), (0, 276)]
    assert wins[4].y1 == 112 and wins[4].x1 == 0
    assert wins[-1] == (112, 336, 276, 500)


def test_exact_coverage_counts() -> None:
    cov = coverage(window_grid(336, 448), 336, 448)
    # columns: [0,224) [112,336) [224,448); rows: [0,224) [112,336)
    assert cov[0, 0] == 1 and cov[0, 120] == 2 and cov[120, 120] == 4 and cov[335, 447] == 1
    assert cov.sum().item() == 6 * 224 * 224


def test_stitch_averages_overlaps() -> None:
    wins = window_grid(224, 336)  # two windows: x 0..224 and 112..336
    logits = torch.stack([torch.full((2, 14, 14), 1.0), torch.full((2, 14, 14), 3.0)])
    canvas = stitch(logits, wins, 224, 224, 336)
    assert canvas.shape == (2, 224, 336)
    assert canvas[0, 0, 0] == 1.0 and canvas[0, 0, 200] == 2.0 and canvas[1, 100, 335] == 3.0


def test_stitch_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="window maps"):
        stitch(torch.zeros(3, 1, 14, 14), window_grid(224, 336), 224, 224, 336)


def test_inner_edges() -> None:
    xs, ys = inner_edges(window_grid(336, 500), 336, 500)
    assert xs == [112, 224, 276, 336, 448]
    assert ys == [112, 224]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        window_grid(0, 10)
