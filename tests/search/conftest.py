"""Fixtures of the search tests."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.factories import CaptionFactory, ImageFactory


@pytest.fixture
def fresh_embedding_files(db) -> None:
    """An embedding table, and HNSW indexes, whose files hold no earlier test's rows.

    A rolled-back test leaves its rows dead in the table and in the HNSW graphs (only a VACUUM
    removes them), so a test that judges the index itself (recall, the planner's choice) would
    depend on which tests ran before it: dead entries crowd the candidates, and the planner
    prices the bloated files. TRUNCATE gives the table and its indexes new, empty files for
    the rest of the test (rolled back with it).
    """
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE search_imageembedding")


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
