"""Base models shared by every visitor: each (model id, 4-bit) pair is loaded once per process."""
from __future__ import annotations

import threading
from typing import Callable

from lune_core.ids import canonical_model_id
from lune_core.models import LoadedModel


class ModelRegistry:
    """At most `max_models` stay registered (least recently used goes first), so visitors typing
    many hub ids cannot fill the memory; a session holding an evicted model keeps it alive."""

    def __init__(self, loader: Callable[[str, bool], LoadedModel], max_models: int = 2):
        self._loader = loader
        self._max = max_models
        self._models: dict[tuple[str, bool], LoadedModel] = {}
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str | None, quantize: bool = True) -> LoadedModel:
        key = (canonical_model_id(model_id), bool(quantize))
        with self._lock:
            if key in self._models:
                self._models[key] = self._models.pop(key)  # most recently used last
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # a second visitor asking for the same model waits for the first load
            with self._lock:
                if key in self._models:
                    return self._models[key]
            lm = self._loader(key[0], key[1])
            with self._lock:
                self._models[key] = lm
                self._loading.pop(key, None)
                while len(self._models) > self._max:
                    self._models.pop(next(iter(self._models)))
            return lm

    def loaded(self) -> list[tuple[str, bool]]:
        with self._lock:
            return list(self._models)
