"""Random-weight CLIP checkpoints built here (no weights can be downloaded where benches and
tests run), tiny and full size, with the made-up tokenizer they share.

``build_full_size_clip`` gives the full-size ViT-B/32 architecture with seeded random weights:
speed depends on the architecture, not on the values. ``build_tiny_clip`` gives a model of a few
thousand weights that loads and runs in milliseconds. Both are saved with ``save_pretrained``,
so the product's ``load_encoder(..., source=dir)`` loads them as it loads a hub checkpoint.

The benchmarks and the tests both use these: ``tests/tiny_models.py`` imports them, and builds
its ALIGN and SigLIP models on the same sizes and words. Nothing in the product imports this
module.
"""

from __future__ import annotations

import string
from pathlib import Path

from encoders.registry import MODELS

# Shared size of every tiny transformer: large enough to exercise every layer type, small enough
# that a forward pass over a batch takes milliseconds on one CPU thread.
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 37
IMAGE_SIZE = 32
PATCH = 8
SEED = 0


# Words the made-up tokenizers know as whole tokens; anything else falls back to single
# characters. Bench query texts built from these tokenise to about as many tokens as real CLIP
# BPE would give a caption of the same words.
TOKENIZER_WORDS = [
    "a", "photo", "of", "the", "cat", "dog", "car", "red", "blue", "on", "beach", "tree",
]  # fmt: skip


def clip_tokenizer(model_max_length: int):
    """A CLIP byte-level BPE tokenizer over a made-up vocabulary (see ``TOKENIZER_WORDS``)."""
    from transformers import CLIPTokenizer

    # Every lowercase letter/digit both as a word piece and as a word end ("</w>"), plus merges
    # that build the common words, then the special tokens. Specials go last (as in the real
    # CLIP vocab) so they are the largest ids.
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TOKENIZER_WORDS:
        if len(word) < 2:
            continue
        # Merge left to right: "c a", "ca t</w>" -> "cat</w>".
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tiny_clip(directory: str | Path) -> Path:
    """Save a tiny CLIP model + processor into ``directory`` and return it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    directory = Path(directory)
    tokenizer = clip_tokenizer(model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
        # The published dimension, so embeddings fit the model's pgvector index.
        projection_dim=MODELS["clip-vit-base-patch32"].dim,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_full_size_clip(directory: str | Path) -> Path:
    """Save a randomly initialised ViT-B/32 CLIP + processor once; later runs reuse it."""
    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer(model_max_length=77)
    # Architecture defaults (ViT-B/32 vision, 12-layer text, 512-d projection, 49408 vocab);
    # only the special token ids follow the made-up tokenizer, so text pooling finds EOS.
    config = CLIPConfig(
        text_config={
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
