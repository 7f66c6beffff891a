"""Published zero-shot Flickr30k 1K-test text->image figures, each with where it comes from and
which of our models, if any, runs the same weights (only those are like for like)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    system: str
    r1: float
    r5: float | None
    r10: float | None
    source: str
    # The registered model with these weights; "" when none of ours is that model.
    model_id: str = ""

    def figures(self) -> str:
        return " / ".join("-" if v is None else f"{v:.1f}" for v in (self.r1, self.r5, self.r10))


_OPEN_CLIP = "open_clip's retrieval results table (its own measurement)"

PUBLISHED_TEXT_TO_IMAGE: tuple[PublishedResult, ...] = (
    PublishedResult(
        "CLIP ViT-B/32 (OpenAI weights)", 58.8, 83.6, 90.0, _OPEN_CLIP, "clip-vit-base-patch32"
    ),
    PublishedResult(
        "CLIP ViT-L/14 (OpenAI weights)", 65.0, 87.2, 92.0, _OPEN_CLIP, "clip-vit-large-patch14"
    ),
    # The CLIP paper reports Flickr30k for its best model only, at 336 px: no model of ours
    # (clip-vit-large-patch14 is the 224 px one).
    PublishedResult(
        "CLIP ViT-L/14@336px",
        68.7,
        90.6,
        95.2,
        "CLIP paper (Radford et al. 2021), zero-shot Flickr30k table",
    ),
    # open_clip's row ViT-B-16-SigLIP (webli), the 224 px weights; its 79.1 R@1 is
    # ViT-B-16-SigLIP-512, the 512 px model, which we do not ship.
    PublishedResult(
        "SigLIP ViT-B/16, 224 px (WebLI)",
        74.7,
        92.3,
        95.6,
        f"{_OPEN_CLIP}, docs/openclip_retrieval_results.csv row ViT-B-16-SigLIP / webli",
        "siglip-base-patch16-224",
    ),
    # ALIGN's paper model is EfficientNet-L2 + BERT-Large trained on 1.8B pairs; align-base is
    # Kakao Brain's EfficientNet-B7 + BERT-base trained on COYO-700M: not the same model.
    PublishedResult(
        "ALIGN EfficientNet-L2 + BERT-Large",
        75.7,
        93.8,
        96.8,
        "ALIGN paper (Jia et al. 2021), zero-shot Flickr30k table",
    ),
    PublishedResult(
        "original project CLIP",
        60.08,
        84.10,
        90.96,
        "the university project this app grew out of (protocol not stated)",
    ),
    PublishedResult(
        "original project ALIGN",
        77.46,
        93.57,
        96.78,
        "the university project this app grew out of (protocol not stated)",
    ),
)


def published_for(model_id: str) -> PublishedResult | None:
    """The published figure measured with ``model_id``'s weights, if there is one."""
    return next((p for p in PUBLISHED_TEXT_TO_IMAGE if p.model_id == model_id), None)
