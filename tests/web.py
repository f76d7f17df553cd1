"""The web service as the tests drive it: the laptop's deployment (cpu-basic defaults and any
LUNE_MAX_* variable), with the real registry, or one serving a model the test hands in."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from lune_deploy.config import load_deploy_config
from lune_web.context import WebContext
from lune_web.jobs import Jobs
from lune_web.registry import ModelRegistry
from lune_web.service import Service


def service(**kwargs) -> Service:
    return Service(WebContext(limits=load_deploy_config().limits.with_env()), **kwargs)


def use_models(S: Service, monkeypatch, loader=None, copy_loader=None, limits=None) -> ModelRegistry:
    """Give `S` a fresh registry (and jobs on it) for one test: `loader(model_id, quantize)` serves the
    models, the real loader by default; `copy_loader(model_id)` the full fine-tuning copies."""
    registry = ModelRegistry(loader=loader or S._load)
    if limits is not None:
        monkeypatch.setattr(S, "limits", limits)
    jobs = Jobs(registry, S.limits, **({"copy_loader": copy_loader} if copy_loader else {}))
    monkeypatch.setattr(S, "models", registry)
    monkeypatch.setattr(S, "jobs", jobs)
    return registry


@contextmanager
def tiny_model_folder(S: Service, tmp_path_factory):
    """A tiny Llama saved under an allowed model root, and `S` with a fresh registry to load it (in
    4-bit, like any visitor's model): yields (its folder, the monkeypatch that undoes both)."""
    from tests.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("models")
    folder = save_tiny_model(root / "tiny-llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUNE_MODEL_ROOTS", str(root))
        use_models(S, mp)
        yield str(folder), mp
