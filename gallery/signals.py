"""Signals gallery sends to the apps above it, which it never imports."""

from __future__ import annotations

from django.dispatch import Signal

# New images were stored, inside the transaction that stores them: ``image_ids`` names them,
# or is None for a bulk import (too many to name: the receiver finds every image it lacks).
# The embedding index (workers/) creates their jobs in the same transaction and queues them
# once it commits. A receiver returns what it queued: batches per model.
images_added = Signal()
