"""Signals the embedding index sends to the apps above it, which it never imports."""

from __future__ import annotations

from django.dispatch import Signal

# A model is being forgotten (``model_id``), inside the transaction that deletes its
# embeddings, jobs and state row: apps that keep vectors of their own under the model id
# (search's caption vectors) delete them here, so it all goes or nothing does.
embedding_model_deleting = Signal()
