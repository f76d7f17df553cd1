"""Is it still in there? The logit lens on a forgotten answer, layer by layer.

For each fact, the model reads its question and the base model's own answer up to where the answer
stands ("… The capital of France is"); at that position every layer's hidden state is read out
through the model's final norm and output head as if it were the last layer (nostalgebraist's logit
lens). The answer's first token then has a probability and a rank at every layer. Unlearning that
only hides the answer keeps it high in the middle layers and pushes it down near the top; unlearning
that removes it lowers it everywhere. Read with the adapter off (the base) and on (after the run).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .facts import Fact, answer_span
from .prompting import IGNORE, collate, format_prompt

TOP = 10  # "still in there": the answer among the top this-many tokens at a layer


def lens_inputs(tokenizer, fact: Fact, base_answer: str) -> tuple[list[int], int, str]:
    """(token ids of the question and the base's opening, the answer's first token, the opening). With
    no opening (the base did not state the answer, or opened with it) the reply's first position."""
    span = answer_span(base_answer, fact.answer)
    opening = base_answer[: span[0]].rstrip() if span else ""
    context = format_prompt(tokenizer, fact.question) + opening
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    spaced = (" " if opening else "") + fact.answer.strip()
    full = tokenizer(context + spaced, add_special_tokens=False)["input_ids"]
    target = full[len(ids)] if full[: len(ids)] == ids and len(full) > len(ids) else \
        tokenizer(spaced, add_special_tokens=False)["input_ids"][0]
    return ids, target, opening


def _read_out(model):
    """The final norm and the output head, wherever the wrapper keeps them."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.norm, model.get_output_embeddings()


def lens(model, rows: list[list[int]], targets: list[int], device: str, pad_id: int, disable=None,
         gate=None) -> dict:
    """Per row, the target token's probability and rank at the last position, at every layer's output
    (the last layer is the model's own logits). {"prob": [[...layers] per row], "rank": [...]}."""
    batch = collate([(ids, [IGNORE] * len(ids)) for ids in rows], pad_id).to(device)
    with (disable or nullcontext()), torch.no_grad():
        if gate is not None:
            gate.mask = gate.batch_mask(rows)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                    use_cache=False)
        norm, head = _read_out(model)
        layers = [head(norm(h[:, -1])) for h in out.hidden_states[1:-1]] + [out.logits[:, -1]]
    logits = torch.stack(layers, 1).float()  # rows x layers x vocabulary
    index = torch.tensor(targets, device=logits.device)[:, None, None].expand(-1, logits.shape[1], 1)
    chosen = logits.gather(-1, index)
    prob = torch.softmax(logits, -1).gather(-1, index)[..., 0]
    rank = (logits > chosen).sum(-1) + 1
    return {"prob": prob.cpu().tolist(), "rank": rank.cpu().tolist()}


def lens_report(tokenizer, facts: list[Fact], base_answers: list[str], before: dict, after: dict,
                targets: list[int], openings: list[str]) -> list[dict]:
    """One record per fact: what the lens read before and after, and where the answer is top-10."""
    out = []
    for i, fact in enumerate(facts):
        out.append({
            "fact": i, "question": fact.question, "answer": fact.answer, "opening": openings[i],
            "token": tokenizer.decode([targets[i]]), "base_answer": base_answers[i],
            "before": {"prob": [round(p, 6) for p in before["prob"][i]], "rank": before["rank"][i]},
            "after": {"prob": [round(p, 6) for p in after["prob"][i]], "rank": after["rank"][i]},
        })
    return out


def top_layers(ranks: list[int]) -> list[int]:
    """The layers (1-based) where the answer is among the top TOP tokens."""
    return [layer for layer, rank in enumerate(ranks, 1) if rank <= TOP]


def lens_metrics(records: list[dict], forgotten: list[bool]) -> dict:
    """`lens_top10_layers_before/after`: per fact, how many layers put the answer in the top 10 (mean);
    `answer_still_inside`: of the facts no longer said, the share whose answer is still top-10 at some
    layer of the adapted model (hidden, not removed); `lens_final_rank_after`: the median last-layer rank."""
    if not records:
        return {}
    def mean(values):
        return round(sum(values) / len(values), 2)

    hidden = [bool(top_layers(r["after"]["rank"])) for r, gone in zip(records, forgotten) if gone]
    finals = sorted(r["after"]["rank"][-1] for r in records)
    return {
        "lens_layers": len(records[0]["after"]["rank"]),
        "lens_top10_layers_before": mean([len(top_layers(r["before"]["rank"])) for r in records]),
        "lens_top10_layers_after": mean([len(top_layers(r["after"]["rank"])) for r in records]),
        "answer_still_inside": round(sum(hidden) / len(hidden), 4) if hidden else None,
        "known_inside": len(hidden),
        "lens_final_rank_after": finals[len(finals) // 2],
    }
