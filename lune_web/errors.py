"""What the visitor reads when something fails: a short line; internals stay in the server log."""
from __future__ import annotations

import logging
import traceback

import torch

from lune_core.facts import FactError
from lune_core.memory import free_memory
from lune_core.errors import ModelLoadError
from lune_core.hub import redact_token, short_message

log = logging.getLogger("lune.web")


class UserError(Exception):
    """Something the visitor can fix; the message is shown in the page as is."""


def user_message(err: BaseException) -> str:
    if isinstance(err, (UserError, FactError, ModelLoadError)):
        return short_message(str(err))
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        free_memory()
        return "out of memory: try fewer facts, fewer general questions, a lower LoRA rank or a smaller model"
    log.error("unexpected error\n%s", redact_token("".join(traceback.format_exception(err))))
    return "something went wrong on the server (it is logged); your facts and results are kept"
