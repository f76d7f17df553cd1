"""The web service as the tests drive it: the laptop's deployment (cpu-basic defaults and any
LUNE_MAX_* variable), with the real registry, or one serving a model the test hands in."""
from __future__ import annotations

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
