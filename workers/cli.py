"""What the management commands that work on one model share: its ``--model`` argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.management.base import CommandError, CommandParser

from encoders import EncoderError, model_spec


def model_argument_add(parser: CommandParser, *, help_text: str = "a registered model id") -> None:
    """Add the required ``--model M`` argument to a command's parser."""
    parser.add_argument("--model", required=True, help=help_text)


def model_option(options: Mapping[str, Any]) -> str:
    """The command's ``--model``, a registered model id; a ``CommandError`` saying why (and which
    ids are registered) when it is not one."""
    model_id = str(options["model"])
    try:
        model_spec(model_id)
    except EncoderError as exc:
        raise CommandError(str(exc)) from exc
    return model_id
