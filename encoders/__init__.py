"""Image/text embedding models behind one small interface (no Django in this package).

Importing the package is cheap: torch and transformers load only when ``load_encoder`` runs.
"""

from .base import (
    Encoder,
    EncoderError,
    ImageDecodeError,
    ModelSpec,
    UnknownModelError,
    WeightsUnavailableError,
)
from .images import DEFAULT_MAX_PIXELS, DecodedPicture, decode_image, open_image, to_rgb
from .registry import (
    MODELS,
    clear_encoder_cache,
    device_resolve,
    load_encoder,
    loaded_model_ids,
    model_spec,
    weights_on_disk,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODELS",
    "Encoder",
    "EncoderError",
    "DecodedPicture",
    "ImageDecodeError",
    "ModelSpec",
    "UnknownModelError",
    "WeightsUnavailableError",
    "clear_encoder_cache",
    "device_resolve",
    "load_encoder",
    "loaded_model_ids",
    "model_spec",
    "decode_image",
    "open_image",
    "to_rgb",
    "weights_on_disk",
]
