"""Settings of a worker process told to use a GPU (the test settings with EMBEDDING_DEVICE
"cuda"), for tests of a worker that cannot load its models on a machine without one."""

from config.settings.test import *  # noqa: F403

EMBEDDING_DEVICE = "cuda"
