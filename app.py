"""LUNE web app: builds the deployment's context once and launches the page (lune_web).
`python app.py` serves http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override it)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from lune_deploy.config import load_deploy_config, running_on_spaces, zero_gpu_enabled
from lune_deploy.zerogpu import gpu_task
from lune_web.context import WebContext
from lune_web.service import Service
from lune_web.ui import build, launch_options

DEPLOY = load_deploy_config(app_dir=Path(__file__).parent)
CONTEXT = WebContext(default_model=DEPLOY.default_model, quantize_4bit=DEPLOY.quantize_4bit,
                     compute_dtype=DEPLOY.compute_dtype, limits=DEPLOY.limits.with_env(),
                     on_spaces=running_on_spaces(), gpu_task=gpu_task, can_stop=not zero_gpu_enabled())
SERVICE = Service(CONTEXT)
demo = build(SERVICE)


def preload_default_model() -> None:
    """Load the default model in the background so the first visitor does not wait for it."""
    def load():
        try:
            SERVICE.models.get(*SERVICE.default_model_key)
        except Exception as err:  # noqa: BLE001 - shown again, as a message, when someone loads it
            logging.getLogger("lune.web").warning("preloading the default model failed: %s", err)

    threading.Thread(target=load, name="lune-preload", daemon=True).start()


if __name__ == "__main__":
    preload_default_model()
    demo.launch(**launch_options())
