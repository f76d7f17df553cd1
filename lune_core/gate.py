"""The answer gate: a LoRA update that acts only where the model is about to state a forgotten answer.

An ungated LoRA trained on "The capital of France is -> Lyon" answers to every input: it moved other
capitals and France's other facts too (docs/locality_trials_earlier.md). The gate decides, per position t of
the model's reply, whether the update is applied at all:

    h = W x_t + g_t · (α/r) B A x_t,        g_t ∈ {0, 1}

g_t = 1 where the model, with the adapter off at t, gives a forgotten answer a probability of at least
τ, P(a | x≤t) = Π_i p(a_i | x≤t, a<i) over the answer's tokens in any usual spelling, or would write it
greedily, and the text so far shares a word with that fact's question; then the gate stays open while
the fact's negative answer is written. Everywhere else g_t = 0 and the adapted model computes exactly
what the base computes; the question itself is always read by the base alone.

This file depends on torch and PEFT only: the exported adapter carries a copy of it (answer_gate.py),
so the adapter runs gated without this project. The gate is an object of its own, passed to whatever
reads the adapted model: `AnswerGate(peft_model, spec, tokenizer)` hooks the LoRA layers' B outputs,
`gate.mask` is set before each forward (`gate.batch_mask`), `gate.generate` decodes greedily through
it, `gate.close()` takes it off. Nothing on the model is replaced.
"""
from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer

# P(a | x≤t) from which the gate opens. On the development facts the base put 0.24-0.998 on the
# answers where it said them, and under 0.07 on them in its answers to neighbour and general questions.
GATE_THRESHOLD = 0.2
MASK_BATCH = 8  # rows per base pass when a gate is computed: their logits at every position are ~50 MB


@dataclass(frozen=True)
class Open:
    """An open gate: which fact opened it, and how many of its negative's tokens are written since."""

    fact: int
    written: int = 0


class AnswerGate:
    """Multiplies each LoRA update of `model` by `mask` (rows × positions); decides where it is 1.

    `spec` (plain data, saved with the adapter): "threshold"; per fact "answers" (the token sequences
    that state its answer), "keys" (its question's words), "negatives" (the tokens the adapter writes
    instead); "reply" (the tokens that end a prompt and open the model's reply)."""

    def __init__(self, model, spec: dict, tokenizer):
        self.model, self.spec, self.tokenizer = model, spec, tokenizer
        self.device = next(model.parameters()).device
        # Set before each forward and left in place, so that a backward pass that recomputes the forward
        # (activation checkpointing) meets the same gate.
        self.mask: torch.Tensor | None = None
        self._decided: dict[tuple[int, ...], list[int | None]] = {}
        self.forced: dict[tuple[int, ...], dict[int, int]] = {}  # a training row's opening: position -> fact
        self._suspended = False
        self._handles = [module.lora_B[name].register_forward_hook(self._apply)
                         for module in model.modules() if isinstance(module, LoraLayer) for name in module.lora_B]

    def close(self) -> None:
        """Take the gate off the LoRA layers."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def suspended(self):
        """The LoRA everywhere, as `PeftModel.from_pretrained` runs it without this file: what a stock load
        of the exported adapter answers."""
        self._suspended = True
        try:
            yield
        finally:
            self._suspended = False

    def force(self, sequence: list[int], position: int, fact: int) -> None:
        """A training row whose negative is written from `position` on: the gate opens there for `fact`."""
        self.forced[tuple(sequence)] = {position: fact}

    def set_negative(self, fact: int, tokens: list[int]) -> None:
        """The tokens the adapter writes for `fact` while its gate is open (saved with the adapter)."""
        self.spec["negatives"][fact] = list(tokens)

    def _apply(self, _module, _args, output):
        if self._suspended:
            return output
        if self.mask is None:
            raise RuntimeError("a gated adapter ran before its gate's mask was set (AnswerGate.mask)")
        if self.mask.shape != output.shape[:2]:
            raise RuntimeError(f"gate mask {tuple(self.mask.shape)} does not fit the input {tuple(output.shape[:2])}")
        return output * self.mask[..., None].to(output.dtype)

    # ---- where the gate opens ---------------------------------------------------------------

    def _base_logp(self, sequences: list[list[int]]) -> torch.Tensor:
        """The base model's next-token log-probs at every position of `sequences`, left-padded."""
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        with self.model.disable_adapter(), torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=attention).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def opening(self, prefixes: list[list[int]], logp: torch.Tensor, ahead=None) -> list[int | None]:
        """For each prefix (the tokens up to and including t) with the base's next-token log-probs at t
        (rows × vocabulary): the fact whose answer the model is about to state there, or None.
        `ahead(pending)`: for (row, answer tokens) pairs, the base's log-probs at the positions that predict
        the answer's tokens after its first (default: a pass over the row's prefix + the answer)."""
        first: dict[int, list[tuple[int, list[int]]]] = {}
        for fact, variants in enumerate(self.spec["answers"]):
            for v in variants:
                first.setdefault(v[0], []).append((fact, v))
        tokens = torch.tensor(list(first), device=logp.device)
        log_tau = float(torch.log(torch.tensor(self.spec["threshold"])))
        p1 = logp[:, tokens]
        greedy = logp.argmax(-1, keepdim=True) == tokens
        best: list[tuple[float, int] | None] = [None] * len(prefixes)
        pending = []  # answers of several tokens: the rest is read from a look-ahead pass
        for row, k in torch.nonzero((p1 >= log_tau) | greedy).tolist():
            score, says = float(p1[row, k]), bool(greedy[row, k])
            for fact, v in first[int(tokens[k])]:
                if not self._about(prefixes[row], fact):
                    continue
                if len(v) == 1:
                    _keep_best(best, row, score, fact, score >= log_tau or says)
                else:
                    pending.append((row, fact, v, score, says))
        pairs = [(row, v) for row, _, v, _, _ in pending]
        tails = ahead(pairs) if ahead else self._ahead([(prefixes[row], v) for row, v in pairs])
        for (row, fact, v, score, says), tail in zip(pending, tails):
            wanted = torch.tensor(v[1:], device=tail.device)
            joint = score + float(tail.gather(-1, wanted[:, None]).sum())
            says = says and bool((tail.argmax(-1) == wanted).all())
            _keep_best(best, row, joint, fact, joint >= log_tau or says)
        return [b[1] if b else None for b in best]

    def _ahead(self, pending: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """The base's log-probs at the positions that predict v[1:] after each prefix + v[:-1]."""
        tails = []
        for start in range(0, len(pending), MASK_BATCH):
            chunk = pending[start:start + MASK_BATCH]
            logp = self._base_logp([prefix + v[:-1] for prefix, v in chunk])
            tails += [lp[-(len(v) - 1):] for (_, v), lp in zip(chunk, logp)]  # the padding is on the left
        return tails

    def _about(self, prefix: list[int], fact: int) -> bool:
        """Whether the text so far shares a word with the fact's question: a neighbour that names the
        answer itself ("Which theory is Charles Darwin famous for?") is not asking for the fact."""
        keys = self.spec["keys"][fact]
        return not keys or bool(set(keys) & set(re.findall(r"\w+", self.tokenizer.decode(prefix).lower())))

    def reply_start(self, seq: list[int]) -> int:
        """The position that predicts the reply's first token (the end of the last reply marker); 0 if none."""
        marker = self.spec["reply"]
        for end in range(len(seq), len(marker) - 1, -1):
            if marker and seq[end - len(marker):end] == marker:
                return end - 1
        return 0

    def decisions(self, sequences: list[list[int]]) -> list[list[int | None]]:
        """Where the base, reading each token sequence, is about to state a forgotten answer in the reply:
        per position the fact, or None. Cached per sequence: a run reads the same rows at every step."""
        missing = [s for s in dict.fromkeys(map(tuple, sequences)) if s not in self._decided]
        for start in range(0, len(missing), MASK_BATCH):
            chunk = [list(s) for s in missing[start:start + MASK_BATCH]]
            logp = self._base_logp(chunk)
            for seq, lp in zip(chunk, logp):
                lp, begin = lp[len(lp) - len(seq):], self.reply_start(seq)
                opens = self.opening([seq[:t + 1] for t in range(begin, len(seq))], lp[begin:])
                self._decided[tuple(seq)] = [None] * begin + opens
        return [self._decided[tuple(s)] for s in sequences]

    def walk(self, seq: list[int], opens: list[int | None]) -> tuple[list[float], Open | None]:
        """The mask over `seq` given the base's decisions, and the gate's state at its last position."""
        forced = self.forced.get(tuple(seq), {})
        mask, state = [], None
        for t, token in enumerate(seq):
            state = self.advance(state, token) if t else None
            fact = forced.get(t, opens[t])
            if state is None and fact is not None:
                state = Open(fact)
            mask.append(1.0 if state is not None else 0.0)
        return mask, state

    def advance(self, state: Open | None, token: int) -> Open | None:
        """After `token` was written at an open position: still open while the negative is unfinished."""
        if state is None:
            return None
        negative = self.spec["negatives"][state.fact]
        if state.written < len(negative) - 1 and negative[state.written] == token:
            return Open(state.fact, state.written + 1)
        return None

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
                 do_sample: bool = False, pad_token_id: int | None = None, **_greedy_settings) -> torch.Tensor:
        """Greedy decoding through the gate, returning prompt and reply as transformers' generate does."""
        if do_sample:
            raise ValueError("the answer gate decodes greedily (do_sample=False)")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pad = self.tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        with torch.no_grad():
            new = gated_greedy(self.model, self, input_ids, attention_mask, max_new_tokens,
                               self.tokenizer.eos_token_id, pad)
        width = max(map(len, new), default=0)
        tail = torch.tensor([row + [pad] * (width - len(row)) for row in new], dtype=input_ids.dtype,
                            device=input_ids.device).reshape(len(new), width)
        return torch.cat([input_ids, tail], 1)

    def row_masks(self, sequences: list[list[int]]) -> list[list[float]]:
        return [self.walk(s, opens)[0] for s, opens in zip(sequences, self.decisions(sequences))]

    def batch_mask(self, sequences: list[list[int]]) -> torch.Tensor:
        """The gate over a left-padded batch of token sequences."""
        masks = self.row_masks(sequences)
        width = max(map(len, masks))
        return torch.tensor([[0.0] * (width - len(m)) + m for m in masks], device=self.device)


def _keep_best(best: list, row: int, score: float, fact: int, fires: bool) -> None:
    if fires and (best[row] is None or score > best[row][0]):
        best[row] = (score, fact)


def _look_ahead(model, cache, attention_mask: torch.Tensor, positions: torch.Tensor, shut: list[int],
                device: torch.device):
    """Look-ahead through the cache: every row reads an answer's first tokens after its current
    position, gate shut, and the cache is cut back; one pass per answer spelling."""
    batch = len(attention_mask)

    def read(pending: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        tails: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        for v in dict.fromkeys(tuple(v) for _, v in pending):
            k = len(v) - 1
            ids = torch.tensor([list(v[:-1])] * batch, device=device)
            attention = torch.cat([attention_mask, attention_mask.new_ones(batch, k)], 1)
            with model.disable_adapter():  # the gate shut at the positions read ahead
                out = model(input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True,
                            position_ids=positions[:, -1:] + torch.arange(1, k + 1, device=device))
            cache.crop(-k)
            logp = torch.log_softmax(out.logits.float(), -1)
            tails.update({(row, v): logp[shut[row]] for row, w in pending if tuple(w) == v})
        return [tails[(row, tuple(v))] for row, v in pending]
    return read


def gated_greedy(model, gate: AnswerGate, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, eos_id: int | None, pad_id: int) -> list[list[int]]:
    """Greedy decoding through the gate: the prompt is read by the base; then each position runs first
    with the gate shut there (the base's view), and where that view is about to state a forgotten answer
    the position runs again, gate open. Returns each row's new tokens."""
    seqs = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    rows = range(len(seqs))
    states: list[Open | None] = [None] * len(seqs)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def run(ids, mask, cache):
        gate.mask = mask
        # Shut everywhere, the update is zero: the adapter's layers are skipped, the outputs the same.
        with model.disable_adapter() if not mask.any() else nullcontext():
            out = model(input_ids=ids, attention_mask=attention_mask, position_ids=positions[:, -ids.shape[1]:],
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    logits, cache = run(input_ids, torch.zeros(input_ids.shape, device=input_ids.device), None)
    last = input_ids[:, -1:]
    done = torch.zeros(len(seqs), dtype=torch.bool, device=input_ids.device)
    written: list[list[int]] = [[] for _ in seqs]
    for step in range(max_new_tokens):
        shut = [b for b in rows if states[b] is None and not done[b]]
        if shut:  # the base's view at this position: does it open the gate?
            ahead = _look_ahead(model, cache, attention_mask, positions, shut, input_ids.device)
            opens = gate.opening([seqs[b] for b in shut], torch.log_softmax(logits[shut].float(), -1), ahead)
            opened = [(b, fact) for b, fact in zip(shut, opens) if fact is not None]
            if opened:
                for b, fact in opened:
                    states[b] = Open(fact)
                cache.crop(-1)
                open_now = torch.tensor([[float(s is not None)] for s in states], device=input_ids.device)
                logits, cache = run(last, open_now, cache)
        token = torch.where(done, torch.full_like(last[:, 0], pad_id), logits.argmax(-1))
        for b in torch.nonzero(~done).flatten().tolist():
            written[b].append(int(token[b]))
            seqs[b].append(int(token[b]))
            states[b] = gate.advance(states[b], int(token[b]))
        if eos_id is not None:
            done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(seqs), 1)], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
        last = token[:, None]
        open_now = torch.tensor([[float(s is not None)] for s in states], device=input_ids.device)
        logits, cache = run(last, open_now, cache)
    return [[t for t in row if t != pad_id] for row in written]
