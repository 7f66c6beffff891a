"""The published figures shown beside our runs are those of the same weights, with their
source: SigLIP B/16 is open_clip's 224 px row, not its 512 px one."""

from __future__ import annotations

from search.evaluation.references import PUBLISHED_TEXT_TO_IMAGE, published_for


def test_siglip_b16_is_open_clips_224_px_row() -> None:
    siglip = published_for("siglip-base-patch16-224")
    assert siglip is not None
    assert siglip.figures() == "74.7 / 92.3 / 95.6"
    assert "ViT-B-16-SigLIP / webli" in siglip.source


def test_every_figure_names_its_source() -> None:
    assert all(result.source for result in PUBLISHED_TEXT_TO_IMAGE)
