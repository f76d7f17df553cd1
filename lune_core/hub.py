"""Reaching the model hub, and keeping its token out of every message."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (HF_ENDPOINT) answers a TCP connection within `timeout` seconds. Without
    this, a hub id on a machine with no network costs ~20 s of retries before its message."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_kwargs(source: str) -> dict:
    """What every from_pretrained of one load is given. A hub id with no hub in reach (asked once per
    load): only the local cache can answer, at once, for the config, the tokenizer and the weights."""
    offline = not Path(source).exists() and not hub_reachable()
    return {"token": os.environ.get("HF_TOKEN") or None, "trust_remote_code": False, "local_files_only": offline}


def redact_token(text: str) -> str:
    """`text` with the hub token blanked out, should a library ever put it in a message."""
    token = os.environ.get("HF_TOKEN", "")
    return text.replace(token, "[HF_TOKEN]") if len(token) >= 8 else text


MAX_MESSAGE_CHARS = 300  # an error line for the page or the terminal, not a dump


def short_message(text: str) -> str:
    """An error message as the page and the CLI show it: token blanked first, then cut short."""
    return redact_token(text)[:MAX_MESSAGE_CHARS]
