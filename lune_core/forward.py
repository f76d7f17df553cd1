"""The padded forward over the rows a loss needs (one pass, or a few by length, sharing the rows' common
opening), split back into per-group views: the one place that asks the model for logits (and hidden
states) at the positions that carry loss."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .losses import Selected, loss_positions, select_positions
from .prompting import IGNORE, TokenBatch, collate

# Below this many shared opening tokens, a separate pass for them saves less than it costs.
MIN_SHARED_PREFIX = 4
# What one more padded pass costs, in tokens of work (length_buckets): every 4-bit weight unpacked once more.
# A round figure, not tuned; with it the training of 3 heldout facts went from 80 to 61 s (benchmarks_notes).
PASS_TOKENS = 128


class Forward:
    """A padded forward over every group a method needs (one pass, or a few by length), split back into
    Selected views: the one place that asks the model for logits (and the suppression layer's states) at
    loss positions.

    `edited`: the tokens every row opens with (the chat template's system prompt, half of a short row) are
    run once, up to the first of these tokens, and every row continues from their cached keys and values:
    the same outputs and gradients for about a third less compute and activation memory. None: share
    nothing. `opening_trains`: weights the opening passes through train (a LoRA, full fine-tuning), so it
    is run with a graph and its gradient gathers every row's, as in a pass over whole rows; otherwise
    (the subject adapter, whose edited tokens are never in it) it is run without one.

    `gate`: a gated adapter's AnswerGate, told where it is open before each pass."""

    def __init__(self, model, device: str, pad_id: int, layer: int = 0, with_hidden: bool = False,
                 edited: frozenset[int] | None = None, gate=None, opening_trains: bool = False):
        self.model, self.device, self.pad_id, self.layer, self.with_hidden = model, device, pad_id, layer, with_hidden
        self.edited, self.gate, self.opening_trains = edited, gate, opening_trains

    def __call__(self, groups: dict[str, list]) -> dict[str, Selected]:
        names = [n for n, seqs in groups.items() if seqs]
        rows = [s for n in names for s in groups[n]]
        pieces: list = [None] * len(rows)
        for bucket in length_buckets([len(ids) for ids, _ in rows]):
            for i, piece in zip(bucket, self._pass([rows[i] for i in bucket])):
                pieces[i] = piece
        views, start = {}, 0
        for name in names:
            logits, labels, states = zip(*pieces[start:start + len(groups[name])])
            start += len(groups[name])
            views[name] = Selected(
                logits=torch.cat(logits), labels=torch.cat(labels),
                rows=torch.cat([torch.full((len(lab),), j, device=self.device) for j, lab in enumerate(labels)]),
                n_rows=len(labels), hidden=torch.cat(states) if self.with_hidden and name == "forget" else None)
        return views

    def _pass(self, rows: list) -> list[tuple]:
        """One padded pass over `rows`: per row, (logits, labels, suppression-layer states or None) at its loss
        positions, in order."""
        batch: TokenBatch = collate(rows, self.pad_id).to(self.device)
        shared = shared_prefix_length(batch, self.edited) if self.edited is not None else 0
        batch, context = self._after_prefix(batch, shared) if shared else (
            batch, {"attention_mask": batch.attention_mask, "use_cache": False})
        keep = loss_positions(batch.labels)
        # Logits only where loss is carried: the 49 k-wide vocabulary projection (and, for full
        # fine-tuning, its gradient) at every prompt position was a large share of a step's time.
        if self.gate is not None:
            self.gate.mask = self.gate.batch_mask([ids for ids, _ in rows])
        out = self.model(input_ids=batch.input_ids, logits_to_keep=keep, output_hidden_states=self.with_hidden,
                         **context)
        hidden = out.hidden_states[self.layer + 1] if self.with_hidden else None
        sel = select_positions(out.logits, batch.labels, hidden)
        counts = keep.sum(1).tolist()
        states = sel.hidden.split(counts) if hidden is not None else [None] * len(rows)
        return list(zip(sel.logits.split(counts), sel.labels.split(counts), states))

    def _after_prefix(self, batch: TokenBatch, n: int) -> tuple[TokenBatch, dict]:
        """The rows without their shared opening (each keeps its left padding and the tokens after
        its first n), and the model arguments that continue them from the opening's cache."""
        pads = (batch.attention_mask == 0).sum(1)
        cols = torch.arange(batch.input_ids.shape[1] - n, device=self.device)[None]
        source = torch.where(cols < pads[:, None], cols, cols + n)
        tail = TokenBatch(*(t.gather(1, source) for t in (batch.input_ids, batch.attention_mask, batch.labels)))
        with nullcontext() if self.opening_trains else torch.no_grad():
            opening = batch.input_ids[:1, int(pads[0]):int(pads[0]) + n]
            cache = self.model(input_ids=opening, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(batch))
        mask = torch.cat([tail.attention_mask.new_ones(len(tail), n), tail.attention_mask], 1)
        positions = n + (cols - pads[:, None]).clamp(min=0)  # padding's positions are masked out anyway
        return tail, {"attention_mask": mask, "position_ids": positions, "past_key_values": cache, "use_cache": True}


def shared_prefix_length(batch: TokenBatch, edited: frozenset[int]) -> int:
    """How many tokens every row opens with (after its padding): none of them edited, and ending
    before the first position whose logits carry loss. 0 when that is too short to be worth it."""
    rows = []
    for ids, mask, labels in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), batch.labels.tolist()):
        pad = mask.index(1)
        carried = [j for j, label in enumerate(labels[pad:]) if label != IGNORE]
        # the logits at j predict token j + 1, so the opening ends before the first labelled token's predecessor
        rows.append((ids[pad:], (carried[0] if carried else len(ids) - pad) - 1))
    limit = min(end for _, end in rows)
    first = rows[0][0]
    n = 0
    while n < limit and first[n] not in edited and all(r[n] == first[n] for r, _ in rows):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def length_buckets(lengths: list[int], most: int = 3) -> list[list[int]]:
    """Row indices in at most `most` passes by length, each in its original order. Padded to its longest
    row, a pass over rows of 15 and 55 tokens is mostly padding; a pass of its own costs about
    PASS_TOKENS tokens' work (every 4-bit weight is unpacked once per pass). Splits where that saves."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    size = [lengths[i] for i in order]

    def cost(lo: int, hi: int) -> int:  # one pass over order[lo:hi]
        return (hi - lo) * size[hi - 1] + PASS_TOKENS

    # best[k][j]: the least cost of the first j rows in k passes (rows sorted by length, passes contiguous)
    n, inf = len(size), float("inf")
    best = [[inf] * (n + 1) for _ in range(most + 1)]
    cut = [[0] * (n + 1) for _ in range(most + 1)]
    best[0][0] = 0
    for k in range(1, most + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j)
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, most + 1), key=lambda k: best[k][n]) if n else 0
    buckets, j = [], n
    while k:
        i = cut[k][j]
        buckets.append(sorted(order[i:j]))
        j, k = i, k - 1
    return buckets[::-1]
