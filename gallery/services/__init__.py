"""The gallery's writes, one module per concept: ``images`` (uploads, thumbnails, the owner's
edits, staff actions), ``collections``, ``accounts`` (API tokens, e-mail, password-reset mail)
and ``flickr30k`` (the data-set imports). Callers import from the concept module; nothing is
re-exported here."""
