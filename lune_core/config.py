"""One dataclass holds every setting of an unlearning run; the run report records it."""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace

from .gate import GATE_THRESHOLD
from .losses import METHODS, UNLEARNING_METHODS

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Where a LoRA sits unless the run says otherwise (fractions of depth, projections). Plain LoRA: the MLPs of
# the middle half, where a subject's facts are recalled; there the replacement spilled onto fewer other
# facts with the same answer than on every projection of the upper half (docs/locality_trials_earlier.md). Under
# the answer gate the update acts only where the answer is about to be said: there the upper half, nearer
# the read-out, forgot every rewording of the development facts (docs/locality_trials_earlier.md).
LORA_PLACES = {"lora": ((0.25, 0.75), MLP_PROJECTIONS), "gated": ((0.5, 1.0), ALL_PROJECTIONS)}
# What a run trains. "lora": a plain LoRA on a band of layers (LUNE's adapter, the default); "gated": the
# same LoRA under the answer gate (lune_core.gate), an output guard that needs its own code at inference;
# "subject": the embeddings of the tokens that name each fact's subject (lune_core.subject); "full": every
# weight of a full-precision copy (the full fine-tuning baseline). The first three are adapters over the
# frozen base; all four go through the same run pipeline.
ADAPTERS = ("lora", "gated", "subject", "full")
SCHEDULES = ("cosine", "constant")  # of the learning rate (the relearning attack runs at a constant one)
# Learning rate when none is set: a few embedding rows need larger steps than LoRA factors, and
# full fine-tuning of every weight much smaller ones (at 1e-3 it degenerated within 10 steps).
DEFAULT_LEARNING_RATES = {"subject": 1e-2, "lora": 1e-3, "gated": 1e-3, "full": 2e-5}


# Settings are grouped by what reads them, one frozen dataclass per group (TRL gives each trainer its own config
# class in the same way); UnlearnConfig is all of them at once, flat, so a saved report's "config" and
# `--set FIELD=VALUE` name a field as they always did. `used_settings` says which groups a run reads.
# "flag": the command-line flag that sets the field (lune_core.cli builds its arguments from it).


@dataclass(frozen=True)
class RunSettings:
    """Every run: what it trains, for how long, at what rate, and when it stops."""

    method: str = field(default="lune", metadata={"flag": "--method",
                        "help": "one of: " + ", ".join(UNLEARNING_METHODS)})
    # What was tried and measured: docs/locality_trials.md and docs/locality_trials_earlier.md. A "subject" run
    # where no question has a subject word falls back to "lora".
    adapter: str = field(default="lora", metadata={"flag": "--adapter", "help": "lora (default): a plain LoRA "
                         "on a band of layers; gated: the same LoRA under the answer gate, which needs its own "
                         "code at inference; subject: the embeddings of the tokens naming each fact's subject; "
                         "full: every weight of a full-precision copy (the full fine-tuning baseline)"})
    # an upper bound; the run stops earlier once the facts stop leaking
    steps: int = field(default=30, metadata={"flag": "--steps", "help": "at most this many steps"})
    learning_rate: float | None = field(default=None, metadata={"flag": "--lr", "help": "learning rate (default: "
                                        + ", ".join(f"{v:g} {k}" for k, v in DEFAULT_LEARNING_RATES.items()) + ")"})
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    schedule: str = "cosine"  # of the learning rate: "cosine" (after warm-up) or "constant"
    max_grad_norm: float = 1.0
    check_every: int = 5  # greedy check of the forget questions; 0 disables early stopping
    # Early stop also needs the answer's tokens this unlikely (nats), so that rewordings of the
    # question, which the run never sees, are pushed past the tipping point too.
    stop_answer_nll: float = 4.0
    max_new_tokens: int = field(default=32, metadata={"flag": "--max-new-tokens", "help": "answer length in tokens"})
    seed: int = field(default=0, metadata={"flag": "--seed", "help": "seed of every random choice of the run"})
    # Recompute each layer's activations in the backward pass instead of keeping them: less
    # memory for more compute.
    gradient_checkpointing: bool = field(default=False, metadata={
        "flag": "--gradient-checkpointing", "help": "recompute activations in the backward pass: less memory, slower"})


@dataclass(frozen=True)
class LoraSettings:
    """Adapters "lora" and "gated": the LoRA's shape and where it sits (lune_core.adapters)."""

    lora_rank: int = field(default=8, metadata={"flag": "--rank", "help": "LoRA rank (--adapter lora)"})
    lora_alpha: int | None = None  # None: twice the rank
    lora_dropout: float = 0.0  # dropout only adds noise to a 20-step run
    target_modules: tuple[str, ...] | None = None  # None: LORA_PLACES
    layer_band: tuple[float, float] | None = None  # fractions of depth; None: LORA_PLACES
    # explicit layer indices override layer_band
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "flag": "--layers", "parse": "layers",
        "help": "layers with LoRA, e.g. 8-20 or 4,6,8 (default: the middle half; gated: the upper half)"})
    # Plain LoRA only: keep A's rows out of the directions that hold this share of what the shipped retain
    # prompts and the KL's anchors feed each wrapped projection (lune_core.null_space); 0: no constraint. At
    # 0.9 it kept more general answers and neighbours on every set, but left a fact said on the untuned
    # heldout set in 30 steps (docs/benchmarks_notes.md, nineteenth session): an option, not the default.
    null_space: float = 0.0


@dataclass(frozen=True)
class RetainSettings:
    """Methods with a KL to the base (lune, its variants, npo, simnpo, teach): what keeps the edit local
    (lune_core.retain_set, lune_core.losses._retain)."""

    retain_weight: float = 5.0  # KL to the base model on anchor prompts
    anchors_per_step: int = 8
    # Anchor prompts drawn from the shipped pool: 3/4 neighbours of the facts, the rest random.
    # 32 rather than 16 kept more general answers (0.80 vs 0.75 on the tuning facts).
    anchor_pool: int = 32
    # Per fact, prompts near it (its subject asked otherwise, its question about other subjects, its
    # relation words) that the KL holds to the base's answers ahead of the shipped anchors; 0: none.
    neighbour_anchors: int = 8
    # Per fact, prompts that make the base say the fact's answer for another reason ("What is Paris known
    # for?"), held by the KL up to that answer at every step (lune_core.retain_set): a LoRA that turns the
    # answer's token into the replacement wherever it comes is caught there.
    answer_holds: int = 4
    # The KL averaged per prompt, then over prompts: a hold, a few tokens long, weighs as much as an anchor
    # whose whole answer is held.
    retain_per_row: bool = True


@dataclass(frozen=True)
class NegativeSettings:
    """Methods that learn a negative answer (lune, lune_misdirect): how it is written (lune_core.sequences)."""

    # Splice a replacement in place of the answer's whole name ("… by Christopher Marlowe", not "… by William
    # Christopher Marlowe"): it kept more same-answer facts on the development facts, but as the default it
    # failed the e2e test of rewordings and adversarial forms on the untuned heldout facts
    # (docs/benchmarks_notes.md, nineteenth session): an option.
    whole_name: bool = False
    # End a spliced negative with a trained full stop ("… is Lyon."): on the upper layers the replacement
    # otherwise repeats ("Lyon, Lyon, …"); a plain LoRA then ends other answers early too
    # (docs/locality_trials_earlier.md, holds_stop).
    full_stop: bool = False


@dataclass(frozen=True)
class GateSettings:
    """Adapter "gated": the update acts only where the model is about to state a forgotten answer, as the
    base sees it, with at least this probability (lune_core.gate)."""

    gate_threshold: float = GATE_THRESHOLD


@dataclass(frozen=True)
class SuppressSettings:
    """lune_misdirect and lune_suppress: the answer's hidden state pushed toward a random direction."""

    suppress_layer: int | None = None  # None: the top layer of the LoRA band
    suppress_weight: float = 0.5
    steering_scale: float = 1.0  # target norm of the misdirected state, relative to the base's


@dataclass(frozen=True)
class NPOSettings:
    """npo: the inverse temperature of its preference loss."""

    npo_beta: float = 0.1


@dataclass(frozen=True)
class SimNPOSettings:
    """simnpo: inverse temperature and margin of its length-normalised loss."""

    simnpo_beta: float = 4.5
    simnpo_delta: float = 0.0


@dataclass(frozen=True)
class UnlearnConfig(SimNPOSettings, NPOSettings, SuppressSettings, GateSettings, NegativeSettings, RetainSettings,
                    LoraSettings, RunSettings):
    """Settings of one unlearning run: every group, the run's first (dataclasses take fields from the last base
    first). Frozen: nothing changes it on its way from the page or the command line to the trainer. Defaults
    make a 1-3 fact run on SmolLM2-135M succeed untuned."""

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, adapter: str | None = None) -> "UnlearnConfig":
        """This config with the adapter actually used, and the learning rate, LoRA alpha, LoRA's place and
        the null-space share filled in."""
        adapter = adapter or self.adapter
        lr = DEFAULT_LEARNING_RATES[adapter] if self.learning_rate is None else self.learning_rate
        alpha = 2 * self.lora_rank if self.lora_alpha is None else self.lora_alpha
        band, modules = LORA_PLACES["gated" if adapter == "gated" else "lora"]
        null = self.null_space if adapter == "lora" else 0.0
        return replace(self, adapter=adapter, learning_rate=lr, lora_alpha=alpha, null_space=null,
                       layer_band=self.layer_band or band, target_modules=self.target_modules or modules)

    @classmethod
    def from_dict(cls, data: dict) -> "UnlearnConfig":
        known = {f.name for f in fields(cls)}
        data = dict(data)
        if data.pop("gate", False) and data.get("adapter", "lora") == "lora":  # saved before "gated" was a kind
            data["adapter"] = "gated"
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("target_modules", "layer_band", "layers"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# What each group is called where a run's settings are listed (the adapter's card), in the order listed.
SETTING_GROUPS = {RunSettings: "run", LoraSettings: "LoRA", RetainSettings: "KL to the base",
                  NegativeSettings: "negatives", GateSettings: "answer gate", SuppressSettings: "suppression",
                  NPOSettings: "NPO", SimNPOSettings: "SimNPO"}


def used_settings(config: UnlearnConfig) -> dict[str, dict]:
    """The groups of settings this run reads, by name, each with its values: what a reader of the run needs,
    without the settings of methods and adapters it did not use."""
    method = METHODS[config.method]
    reads = {RunSettings: True,
             LoraSettings: config.adapter in ("lora", "gated"),
             RetainSettings: method.needs.anchor,
             NegativeSettings: method.needs.target and not method.learns,
             GateSettings: config.adapter == "gated",
             SuppressSettings: method.needs.hidden,
             NPOSettings: config.method == "npo",
             SimNPOSettings: config.method == "simnpo"}
    return {name: {f.name: getattr(config, f.name) for f in fields(group)}
            for group, name in SETTING_GROUPS.items() if reads[group]}


@dataclass(frozen=True)
class RunLimits:
    """Bounds on what one request may ask for; keeps a shared CPU Space responsive.

    Each bound can be set by an environment variable named after it, LUNE_ + the field in
    capitals (LUNE_MAX_STEPS=100); `with_env` reads them, here and nowhere else."""

    # "deploy": the bounds a deployment's deploy.json may set this field within (lune_deploy); upper
    # bounds keep a typo (600000 steps) from turning into a Space that never answers.
    max_facts: int = field(default=10, metadata={"deploy": (1, 200)})
    max_text_chars: int = field(default=500, metadata={"deploy": (16, 20000)})
    max_paraphrases: int = 5
    max_keep: int = 10  # a fact's questions that must stay right
    max_steps: int = field(default=200, metadata={"deploy": (1, 5000)})
    max_new_tokens: int = field(default=64, metadata={"deploy": (1, 2048)})
    max_lora_rank: int = 64
    max_learning_rate: float = 1e-2
    max_general_prompts: int = field(default=100, metadata={"deploy": (1, 1000)})

    def with_env(self, environ=None) -> "RunLimits":
        """These limits with any LUNE_MAX_* variable of `environ` (default os.environ) applied."""
        environ = os.environ if environ is None else environ
        changes = {}
        for f in fields(self):
            name = "LUNE_" + f.name.upper()
            raw = (environ.get(name) or "").strip()
            if not raw:
                continue
            whole = isinstance(getattr(self, f.name), int)
            try:
                value = int(raw) if whole else float(raw)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={raw[:20]!r}: must be a {'whole ' if whole else ''}number above 0")
            changes[f.name] = value
        return replace(self, **changes)


def validate_config(config: UnlearnConfig, num_layers: int | None = None, limits: RunLimits = RunLimits()) -> None:
    """Raise ValueError with a message a user can act on; never let a bad value reach torch.
    Without num_layers (model not loaded yet) the layer indices are checked later."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    check(config.method in METHODS, f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    check(config.schedule in SCHEDULES, f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check(config.adapter in ADAPTERS, f"unknown adapter {config.adapter!r}; choose one of {', '.join(ADAPTERS)}")
    check(isinstance(config.steps, int) and 1 <= config.steps <= limits.max_steps,
          f"steps must be an integer between 1 and {limits.max_steps}")
    check(config.learning_rate is None or 0 < config.learning_rate <= limits.max_learning_rate,
          f"learning rate must be above 0 and at most {limits.max_learning_rate}")
    check(isinstance(config.lora_rank, int) and 1 <= config.lora_rank <= limits.max_lora_rank,
          f"LoRA rank must be an integer between 1 and {limits.max_lora_rank}")
    check(config.lora_alpha is None or config.lora_alpha > 0, "LoRA alpha must be positive")
    check(0 <= config.lora_dropout < 1, "LoRA dropout must be in [0, 1)")
    check(isinstance(config.max_new_tokens, int) and 1 <= config.max_new_tokens <= limits.max_new_tokens,
          f"max new tokens must be between 1 and {limits.max_new_tokens}")
    check(isinstance(config.seed, int) and 0 <= config.seed < 2**32, "seed must be an integer in [0, 2^32)")
    check(config.layer_band is None or 0 <= config.layer_band[0] < config.layer_band[1] <= 1,
          "layer band must be two fractions lo < hi in [0, 1]")
    if config.layers is not None and num_layers is not None:
        check(len(config.layers) > 0 and all(isinstance(i, int) and 0 <= i < num_layers for i in config.layers),
              f"layer indices must be integers in [0, {num_layers - 1}]")
    if config.suppress_layer is not None and num_layers is not None:
        check(isinstance(config.suppress_layer, int) and 0 <= config.suppress_layer < num_layers,
              f"suppression layer must be an integer in [0, {num_layers - 1}]")
    for name in ("suppress_weight", "retain_weight", "steering_scale", "weight_decay", "npo_beta", "simnpo_beta"):
        check(getattr(config, name) >= 0, f"{name.replace('_', ' ')} must not be negative")
    check(config.check_every >= 0, "check interval must not be negative")
    check(config.anchors_per_step >= 0, "anchors per step must not be negative")
    check(config.anchor_pool >= 0, "anchor pool must not be negative")
    check(config.neighbour_anchors >= 0, "neighbour anchors must not be negative")
    check(config.answer_holds >= 0, "answer holds must not be negative")
    check(0 < config.gate_threshold < 1, "gate threshold must be between 0 and 1")
    check(0 <= config.null_space < 1, "null space share must be in [0, 1)")


def parse_layers(text: str) -> tuple[int, ...] | None:
    """'' -> None (the default band); '8-12' or '3, 5, 7' -> explicit indices."""
    text = str(text or "").strip()
    if not text:
        return None
    layers: list[int] = []
    for part in re.split(r"[,\s]+", text):
        match = re.fullmatch(r"(\d{1,4})(?:-(\d{1,4}))?", part)
        if not match:
            raise ValueError(f"layers: {part[:20]!r} is not a layer number or a range like 8-12")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise ValueError(f"layers: {part!r} is not a valid range")
        layers += range(lo, hi + 1)
    return tuple(sorted(set(layers)))


def lora_layers(config: UnlearnConfig, num_layers: int) -> list[int]:
    """Layer indices that receive LoRA adapters."""
    if config.layers is not None:
        return sorted(set(config.layers))
    band = config.resolved().layer_band
    lo = int(round(band[0] * num_layers))
    hi = max(lo + 1, int(round(band[1] * num_layers)))
    return list(range(lo, min(hi, num_layers)))


def suppression_layer(config: UnlearnConfig, num_layers: int) -> int:
    """Hidden-state index (output of that decoder layer) where suppression acts."""
    if config.suppress_layer is not None:
        return config.suppress_layer
    return lora_layers(config, num_layers)[-1]
