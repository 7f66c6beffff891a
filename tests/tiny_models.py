"""Randomly initialised CLIP / ALIGN / SigLIP checkpoints, built here for the tests and the
benchmarks (no pretrained weights can be downloaded where they run).

Each builder creates a model from a config, a tokenizer from a vocabulary made up here, and the
family's image processor, then ``save_pretrained``s all of it into a directory.
``from_pretrained(dir)`` (and so the product's ``load_encoder(..., source=dir)``) then loads it
exactly as it would load a hub checkpoint. The ``build_tiny_*`` models have a few thousand
weights and run in milliseconds; ``build_full_size_clip`` is the full-size ViT-B/32 architecture,
for the benchmarks, whose speed depends on the architecture, not on the values.

Models are seeded, so the same builder gives the same weights every run. The benchmarks import
this module from the repository root (``bench/``); nothing in the product does.
"""

from __future__ import annotations

import io
import string
from pathlib import Path

import torch

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


def _bert_tokenizer(model_max_length: int):
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = specials + TOKENIZER_WORDS + chars + ["##" + ch for ch in chars]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def build_tiny_align(directory: str | Path) -> Path:
    """Save a tiny ALIGN model (EfficientNet + BERT) + processor into ``directory``."""
    from transformers import AlignConfig, AlignModel, AlignProcessor, EfficientNetImageProcessorPil

    directory = Path(directory)
    tokenizer = _bert_tokenizer(model_max_length=64)
    # ALIGN has no image projection: the image embedding is the EfficientNet's pooled last
    # stage, so its width (out_channels[-1], with width_coefficient 1.0) must equal the text
    # projection_dim for the two embeddings to live in one space.
    projection_dim = MODELS["align-base"].dim
    config = AlignConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            # With the default std 0.02 a 2-layer BERT's [CLS] output barely depends on the
            # text (every text embeds to cosine ~0.999); wider weights make texts distinct.
            "initializer_range": 0.2,
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "width_coefficient": 1.0,
            "depth_coefficient": 1.0,
            "kernel_sizes": [3, 3],
            "in_channels": [32, 16],  # the stem always emits 32 channels
            "out_channels": [16, projection_dim],
            "strides": [1, 2],
            "num_block_repeats": [1, 1],
            "expand_ratios": [1, 2],
            "hidden_dim": 64,
        },
        projection_dim=projection_dim,
        initializer_range=0.2,
    )
    torch.manual_seed(SEED)
    model = AlignModel(config)
    # The default init (normal, std 0.02) shrinks activations ~1000x per EfficientNet stage, so
    # image embeddings would be ~1e-9 and vanish in float16; He init keeps them near unit scale.
    with torch.no_grad():
        for module in model.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
    image_processor = EfficientNetImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = AlignProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _sentencepiece_model(vocab_size: int) -> bytes:
    import sentencepiece as spm

    # Train a throwaway unigram model on a few generated sentences. Ids follow the real SigLIP
    # vocabulary: <pad>=0, </s>=1, <unk>=2, and no <s>.
    pangrams = ["the quick brown fox jumps over the lazy dog 0123456789", "zebra, yak & vixen!?"]
    sentences = pangrams + [
        f"{a} {b} of the {c}"
        for a in TOKENIZER_WORDS
        for b in TOKENIZER_WORDS
        for c in TOKENIZER_WORDS
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        # A small corpus cannot fill an exact vocabulary size; take what it gives.
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _siglip_tokenizer(directory: Path, model_max_length: int):
    from transformers import SiglipTokenizer

    spm_path = directory / "spiece.model"
    spm_path.write_bytes(_sentencepiece_model(vocab_size=80))
    return SiglipTokenizer(vocab_file=str(spm_path), model_max_length=model_max_length)


def _save_tiny_siglip(directory: Path, tokenizer, *, dim: int, bos_token_id: int | None) -> Path:
    """A tiny ``SiglipModel`` with ``tokenizer``, saved with its processor into ``directory``.

    SigLIP's image embedding is the vision tower's width: it gets the published ``dim`` (still
    only 2 layers on 16 patches) and texts are projected to the same size."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    config = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 64,
            "projection_size": dim,
            "bos_token_id": bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": dim,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
    )
    torch.manual_seed(SEED)
    model = SiglipModel(config)
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: str | Path) -> Path:
    """Save a tiny SigLIP model + processor (sentencepiece tokenizer) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _siglip_tokenizer(directory, model_max_length=64)
    # The real checkpoint has no <s>: keep every special id inside the tiny vocab.
    dim = MODELS["siglip-base-patch16-224"].dim
    return _save_tiny_siglip(directory, tokenizer, dim=dim, bos_token_id=None)


def _gemma_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Gemma-style byte-fallback BPE: the specials at Gemma's ids, every byte as <0xNN> (so any
    # script, e.g. a Vietnamese query, still tokenises), single characters, and merges that
    # build "▁word" for the common words (the normaliser turns spaces into "▁").
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in "▁" + string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TOKENIZER_WORDS:
        left = "▁"
        for ch in word:
            merged = left + ch
            if merged not in vocab:
                merges.append((left, ch))
                vocab[merged] = len(vocab)
            left = merged
    return vocab, merges


def _siglip2_tokenizer(model_max_length: int):
    from transformers import Siglip2Tokenizer

    vocab, merges = _gemma_vocab()
    return Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tiny_siglip2_fixed(directory: str | Path) -> Path:
    """Save a tiny SigLIP 2 as its fixed-resolution checkpoints (siglip2-base-patch16-256) are
    published: a ``SiglipModel`` with Gemma's tokenizer, which does not lowercase (the model was
    trained on lowercased text: the encoder must do it)."""
    from transformers import GemmaTokenizer

    vocab, merges = _gemma_vocab()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=64)
    dim = MODELS["siglip2-base-patch16-256"].dim
    return _save_tiny_siglip(
        Path(directory), tokenizer, dim=dim, bos_token_id=tokenizer.bos_token_id
    )


def build_tiny_siglip2(directory: str | Path) -> Path:
    """Save a tiny SigLIP 2 (``Siglip2Model``, NaFlex patches) + processor into ``directory``."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
    )

    directory = Path(directory)
    tokenizer = _siglip2_tokenizer(model_max_length=64)
    dim = MODELS["siglip2-base-patch16-256"].dim
    config = Siglip2Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 64,
            "projection_size": dim,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        # As in SigLIP, the image embedding is the vision tower's width: the published 768.
        # Patches of 16 px, up to 256 per image, as the real NaFlex checkpoints: Siglip2Processor
        # passes those two values to its image processor whatever it was saved with. The
        # learned 4x4 position grid is resized to each image's own patch grid.
        vision_config={
            "hidden_size": dim,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_patches": 16,
            "patch_size": 16,
        },
    )
    torch.manual_seed(SEED)
    model = Siglip2Model(config)
    image_processor = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256)
    processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
