"""Teaching facts the model does not know, so that forgetting them can be shown (the privacy lesson).

A short plain LoRA fine-tune on each fact's question and paraphrases with its answer, through the
run's own trainer (the registry's `finetune` loss, stopping once every fact is said), then merged
into the weights and re-quantized like the base. The taught model is an ordinary base model for the
unlearning run that follows: its "before" and its reference are the taught weights with that run's
adapter disabled, exactly as for any base."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator


from .adapters import AdapterState, adapter_spec, save_merged
from .config import ALL_PROJECTIONS, UnlearnConfig
from .facts import Fact
from .embedded import cache_dir
from .models import LoadedModel, load_model
from .probes import NeighbourSources
from .retain_set import training_neighbours
from .prompting import encode_pair
from .runner import load_neighbour_sources
from .sequences import TrainingData, anchor_rows
from .pipeline import train_pipeline
from .trainer import StepRecord

# Plain LoRA on the middle half of the layers (no gate: teaching should reach the question however it
# is asked) at a rate that teaches the 135M model three invented details in about 10 steps here. The KL
# holds the shipped anchors and the facts' own neighbours (their question about other subjects):
# without it "Tromsø." became the answer to every question, with the anchors alone to "Where is the
# Eiffel Tower?".
TEACH = {"method": "teach", "adapter": "lora", "steps": 40, "learning_rate": 5e-3,
         "layer_band": (0.25, 0.75), "target_modules": ALL_PROJECTIONS, "retain_per_row": False, "check_every": 5}


def teach_config(config: UnlearnConfig | None = None) -> UnlearnConfig:
    """The teach step's settings; the seed and answer length come from the visitor's run settings."""
    base = config or UnlearnConfig()
    return replace(UnlearnConfig(), **TEACH, seed=base.seed, max_new_tokens=base.max_new_tokens).resolved()


def teach_events(lm: LoadedModel, facts: list[Fact], anchors: list[str], config: UnlearnConfig | None = None,
                 stop=None, sources: NeighbourSources | None = None) -> Iterator[StepRecord | AdapterState]:
    """Yield a StepRecord per step, then the taught adapter (the base itself is left unchanged).
    `anchors`: prompts whose base answers the KL holds (runner.load_anchors); `sources`: where the
    facts' neighbours come from (default: the shipped ones)."""
    config = teach_config(config)

    def prepare(adapted) -> TrainingData:  # plain LoRA: no gate
        rows = [encode_pair(lm.tokenizer, q, f"{f.answer}.") for f in facts for q in [f.question, *f.paraphrases]]
        near = training_neighbours(facts, sources or load_neighbour_sources(), config.seed, [])
        held, _, _ = anchor_rows(lm, facts, anchors, config, adapted.model, neighbours=near)
        return TrainingData(target=rows, forget=[], anchor=held, forget_texts=[])

    info = {"taught": [f.question for f in facts]}
    for event in train_pipeline(lm, adapter_spec(config, lm.num_layers), config, facts, prepare, stop=stop, info=info):
        yield event if isinstance(event, StepRecord) else event.adapter


def taught_model(lm: LoadedModel, adapter: AdapterState) -> LoadedModel:
    """`lm` with the taught adapter merged in and quantized as `lm` is: a model of its own, whose
    folder (under the cache, so inside the allowed model roots) lives as long as the caller keeps
    it; `remove_taught` deletes it."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="taught-", dir=cache_dir()))
    try:
        save_merged(lm, adapter, folder)
        taught = load_model(str(folder), quantize=lm.quantization == "nf4", device=lm.device,
                            compute_dtype=lm.compute_dtype)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    taught.display_name = f"{lm.display_name} + taught facts"
    return taught


def remove_taught(taught: LoadedModel) -> None:
    shutil.rmtree(taught.model_id, ignore_errors=True)
