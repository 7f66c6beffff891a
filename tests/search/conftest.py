"""Fixtures of the search tests."""

from __future__ import annotations

import pytest

from tests.factories import CaptionFactory, ImageFactory


@pytest.fixture
def flickr_test_split():
    """4 test images with 5 captions each and 2 train images, real JPEG files."""
    test_images = ImageFactory.create_batch(4, dataset=True, split="test")
    train_images = ImageFactory.create_batch(2, dataset=True, split="train")
    words = ["a red car", "the blue tree", "a dog on the beach", "a cat", "photo of a tree"]
    for n, image in enumerate(test_images + train_images):
        for position in range(5):
            CaptionFactory(image=image, position=position, text=f"{words[(n + position) % 5]} {n}")
    return test_images, train_images
