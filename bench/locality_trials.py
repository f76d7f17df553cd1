"""What was tried to make LoRA local: each variant of the method on the development facts (the ones
settings may be tuned on), a few seeds, the figures that decide. Writes docs/locality_trials.md.

    python bench/locality_trials.py --variants band neighbours --seeds 0 1 2
    python bench/locality_trials.py --table-only      # rewrite the table from the saved runs

Every run is one `python -m lune_core run` subprocess with the variant's flags; outputs are kept in
bench/out/trials/ (one JSON per variant, set, size and seed) and the table is made from them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from run_bench import fact_set  # noqa: E402

sys.path.insert(0, str(ROOT))
from lune_core.evaluation import compute_metrics  # noqa: E402

OUT = ROOT / "bench" / "out" / "trials"


def settings(*pairs: str) -> list[str]:
    """`--set FIELD=VALUE` for each pair."""
    return [arg for pair in pairs for arg in ("--set", pair)]


# name -> (what it changes, CLI arguments on top of `--method lune --adapter lora`)
VARIANTS = {
    "gate": ("the answer gate (lune_core.gate, the default since the sixteenth session): LoRA r8 on every projection "
             "of the upper half of the layers (15-29 of 30), its update applied only at reply positions where the "
             "base model, read without it there, gives a forgotten answer p >= 0.2 or would say it, in a text "
             "sharing a word with the fact's question, and while the negative is written; the negative ends the "
             "answer ('… is Lyon.' and the end of the turn); no KL rows (zero wherever the gate is shut)", []),
    "gate_middle": ("gate on the middle half of the layers (0.25-0.75), where the earlier LoRA sat: paraphrases "
                    "and adversarial forms much less forgotten", settings("layer_band=0.25,0.75")),
    "gate_top": ("gate on the top third of the layers (0.67-1): the same figures as the upper half",
                 settings("layer_band=0.67,1")),
    "ungated": ("the default's LoRA without its gate (gate=false): the upper half, a KL on 8 neighbours a fact and "
                "the anchors, the negative spliced without an end", settings("gate=false")),
}

REMOVED = {  # variants whose mechanism is gone, kept with their figures; above gate_first: the focused LoRA
    "band": "LoRA r8 on every projection of the middle half of the layers (the earlier LoRA setting), KL on shipped "
            "anchors, with misdirection (then `lune`, now `lune_misdirect`)",
    "neighbours": "band + KL on 8 automatically built neighbours per fact",
    "mlp_early": "neighbours + LoRA on the MLPs of layers 4-12 only",
    "replace": "neighbours, replacement NLL + KL only (no misdirection of hidden states)",
    "replace_kl": "replace + KL weight 20 on 16 prompts a step",
    "pool96": "replace_kl with every shipped anchor in the KL pool (96) instead of 32",
    "focus": "replace + neighbours, A set to the forget-vs-keep input directions and frozen (ridge 0.01), KL pool 32 "
             "from anchors + retain set, C_k over the pool as one group (since split in two)",
    "focus_near": "focus, the neighbours' inputs weighing as much as the anchors' in C_k",
    "focus_near_r10": "focus_near with ridge 0.1 (a looser gate)",
    "focus_near_lr": "focus_near at lr 3e-4",
    "focus_r100": "focus_near with ridge 1 (looser still)",
    "focus_r10_kl": "focus_near_r10 + KL weight 20 on 16 prompts a step",
    "focus_answer": "focus_near_r10 (the default) with C_f taken only at the positions that predict a trained answer "
                    "token (the state just before 'Paris'), not at every token of the forget rows (`--set "
                    "focus_positions=answer`): neighbours 0.92 instead of 0.69, but paraphrases and adversarial forms"
                    " far less forgotten; a setting, not the default. Its first try diverged: repeated forget rows "
                    "left zero eigenvalues that the n × n route divided by (fixed)",
    "answer_nll8": "focus_answer trained on until the answer's tokens are 8 nats unlikely instead of 4, so rewordings"
                   " the run never sees are pushed further: paraphrase unchanged (0.44)",
    "answer_r100": "focus_answer with ridge 1 (a looser gate around the answer states)",
    "answer_r1000": "focus_answer with ridge 10 (looser again: toward the answer states' leading directions)",
    "answer_r100_rank16": "answer_r100 at LoRA rank 16: more answer-state directions a layer may act along (stopped "
                          "after one seed: neighbour 0.83, general 0.87)",
    "default_nll8": "focus_near_r10 (the default) trained on until the answer's tokens are 8 nats unlikely instead of"
                    " 4: the default's figures again (its runs stop on the leak check first)",
    "answer_upper": "focus_answer with the LoRA on the upper half of the layers (0.5-1) instead of the middle half, "
                    "where the state about to say the answer carries the answer more than the wording",
    "default_upper": "focus_near_r10 (the default) on the upper half of the layers (0.5-1): the forget answer itself "
                     "turned to a loop ('Lyon, Lyon, Lyon, …'); on three seeds paraphrase 0.96, neighbours 0.83, but "
                     "the replacement loops on 1 to 3 forget-side probes a seed",
    "answer_upper_r100": "answer_upper with ridge 1: on the dev facts neighbours 0.92 and general 0.94 beside the "
                         "default's paraphrase (0.67); on the held-out facts (run once, after it was picked) "
                         "paraphrase 1.00 but adversarial 0.52 against 0.75, neighbours no better (0.85) and "
                         "degenerate answers 0.06: not the default",
    "answer_wide_r100": "answer_upper_r100 on layers 0.35-1, reaching down to where subject and relation meet: "
                        "adversarial no better (0.50, one seed)",
    "check10": "focus_near_r10 (the default) asking the forget questions first after 10 steps instead of 5, so a run "
               "trains at least 10 steps (`--set check_every=10`)",
    "upper_dot": "default_upper with the spliced negative ending in a full stop that carries loss too ('… is Lyon.'),"
                 " so the replacement is said once instead of repeated (`--set full_stop=true`): on the held-out "
                 "facts (run once after dev) paraphrase 0.89 and adversarial 0.87 meet their targets, but neighbours "
                 "0.79 and general 0.86 against the default's 0.87 and 0.96: a setting for forgetting harder, not the"
                 " default",
    "upper_dot_kl10": "upper_dot with the KL weighing 10 instead of 5, to hold the neighbours the upper band loses: "
                      "dev neighbours 0.89, but on the held-out facts (run once) 0.82, general 0.86: not the default",
    "wide_dot": "upper_dot on layers 0.4-1 (12-29 of 30), reaching down toward the middle band that keeps more "
                "neighbours: dev_b neighbours 0.75 and degenerate answers 0.06 (base 0.02), worse than upper_dot; "
                "stopped after two dev seeds",
    "default_dot": "focus_near_r10 (the default, middle half of the layers) with only the full stop after the "
                   "replacement trained as in upper_dot: adversarial 0.92 on dev, but below the default on dev_b "
                   "(paraphrase 0.48, general 0.92), so not run on the held-out facts",
    "rank4": "focus_near_r10 (the default) at LoRA rank 4 instead of 8: fewer directions a layer may act along; "
             "paraphrase fell to 0.56, no other figure moved up",
    "paper": "the paper's recipe: r16, alpha 16, dropout 0.05, every projection of every layer, lr 2e-4, NLL on the "
             "negatives only",
    "gate_first": "the first answer gate: the middle half of the layers, the negative spliced without its end, the "
                  "gate open on prompt positions too, no key words: neighbours and general answers all kept, "
                  "paraphrase 0.78, adversarial 0.50 (one seed)",
    "gate_upper_noend": "the first answer gate on the upper half (0.5-1): where the base went on trying to say the "
                        "answer the replacement looped ('Lyon is Lyon is Lyon …', 'Ag, Ag, Ag …'), and a neighbour "
                        "that names the answer itself lost its reply ('Charles Alfred Wallace Wallace …'); ending the"
                        " negative and the key words (gate) fixed both",
    "gate_all_noend": "gate_upper_noend on every layer (0-1): adversarial 0.70 against 0.90 on the same seed",
    "subject_gate": "focus_near_r10 (the default) with C_f from the answer states and the subject's own tokens "
                    "('Hamlet', 'France'), not the question's relation words ('wrote', 'capital') that every "
                    "same-relation prompt shares (focus_positions=subject): paraphrase 0.44, neighbours 0.72; the "
                    "relation words carry the paraphrases and the neighbours are lost anyway (mechanism removed)",
    "hold_prefix": "focus_near_r10 (the default) keeping the KL prompts whose base answer states a forgotten answer, "
                   "held up to the words before it ('Hamlet is a classic Western European tragedy by'), instead of "
                   "leaving them out (hold_to_leak): the default's figures, general 0.88 (mechanism removed)",
    "keep_prompts": "focus_near_r10 (the default) with a third group in C_k: every shipped anchor prompt (294, prompt"
                    " tokens only, no generation), so the gate is shut on more of what ordinary questions carry "
                    "(focus_keep_prompts): the default's figures (mechanism removed)",
    "upper_end": "default_upper with the spliced negative ending there: '… is Lyon.' and the end of the turn carry "
                 "loss (target_end=turn): dev 1.00 / 1.00 / 0.86 / 0.91, but on the held-out facts (run once) "
                 "neighbours 0.82 and general 0.84, and some general answers learn to stop early ('… the pyramids of "
                 "Giza.'); the full stop alone is upper_dot (setting removed)",
    "upper_end_r100": "upper_end with ridge 1: general 0.84 on dev (setting removed)",
    "default_end": "focus_near_r10 (the default, middle half of the layers) with the negative ending as in upper_end:"
                   " adversarial 1.00 but paraphrase 0.67 and general 0.88 (setting removed)",
    "focus_both": "focus_near_r10 (the default) with C_f the mean of the all-token and the answer-position "
                  "covariances (focus_positions=both): paraphrase and adversarial below both parents (mechanism "
                  "removed)",
    "both_nll8": "focus_both trained on until the answer's tokens are 8 nats unlikely instead of 4 (mechanism "
                 "removed)",
    "both_upper": "focus_both on the upper half of the layers (0.5-1) (mechanism removed)",
    "answer_contexts": "focus_answer with C_f also from the answer states of 3 other phrasings of each question where"
                       " the base states the answer ('Do you know what …', 'Please answer: …'; never trained on, "
                       "never a scored form): paraphrase unchanged at 0.44 (mechanism removed)",
    "answer_contexts_r100": "answer_contexts with ridge 1 (mechanism removed)",
    "default_contexts": "focus_near_r10 (the default) with C_f also from the 3 other phrasings' rows, every position "
                        "(mechanism removed)",
    "split": "LoRA on layers 0.25-1; below half depth C_f from every position of the forget rows (as the default), "
             "from half depth on from the answer positions only (as answer_upper): the lower layers' gate lost the "
             "same neighbours as the default (mechanism removed)",
    "split_r100": "split with ridge 1 (mechanism removed)",
    "null90": "neighbours + AlphaEdit-style null-space projection of A: A <- A(I - UUᵀ), U the directions holding 90 "
              "% of the KL prompts' input energy, after every step (mechanism removed)",
    "phrasings": "focus_near_r10 (the default) + training rows for 3 other phrasings of each question where the base "
                 "states the answer to them ('Do you know what …', 'Do you know the answer to this? …', 'Please "
                 "answer: …'; never a scored form). Paraphrase success fell and training took 4-5x as long (mechanism"
                 " removed)",
    "stack": "focus_near_r10 (the default) with A's rank split: half its rows the every-token directions, half the "
             "answer-state ones (focus_positions=stack), one B trained on both gates under the same KL: paraphrase "
             "0.56, neighbours 0.69 (mechanism removed)",
    "near8": "focus_near_r10 (the default) with 8 of the facts' neighbours in the KL every step on top of the 8 "
             "anchors (neighbours_per_step=8; by default the KL rows go round the pool, neighbours first, so each "
             "neighbour is held once in 7 steps): paraphrase 0.74 and neighbours 0.72 against 0.67 and 0.69, but "
             "clean forgetting 0.89, general 0.89 and 43 s of training (setting removed)",
    "near24": "near8 with 24 neighbours a step, every neighbour of 3 facts at every step: neighbours 0.72, "
              "adversarial 0.70, twice the training time (setting removed)",
    "watch": "focus_near_r10 (the default) with the trained negative's tokens ('Christopher Marlowe', 'Lyon') kept as"
             " their own entries of the KL at every anchor position beside the base's top 64, so a replacement rising"
             " on a neighbour is seen (kl_watch): the default's figures to two decimals (setting removed)",
    "substitutes8": "focus_near_r10 (the default) with the fact's question asked about 8 other subjects instead of 4 "
                    "among its KL neighbours (12 a fact instead of 8), against same-relation spill: the same "
                    "same-relation probes were still lost on every seed (setting removed)",
}
FIGURES = ["forget_success", "forget_clean", "paraphrase_success", "adversarial_success", "neighbour_retention",
           "general_retention", "degenerate_rate", "degenerate_rate_before", "train_seconds"]


def run(name: str, set_name: str, n: int, seed: int, general_limit: int) -> dict:
    out = OUT / f"{name}-{set_name}-{n}-{seed}.json"
    facts = out.with_suffix(".facts.jsonl")
    facts.write_text("".join(json.dumps(f) + "\n" for f in fact_set(n, set_name)), encoding="utf-8")
    args = VARIANTS[name][1]
    cmd = [sys.executable, "-m", "lune_core", "run", "--facts", str(facts), "--out", str(out), "--seed", str(seed),
           "--general-limit", str(general_limit), "--method", "lune", "--adapter", "lora", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())["metrics"]


def earlier_rows(path: Path) -> dict[tuple, str]:
    """The table's rows as written before, by (variant, set, facts): runs whose outputs are gone (bench/out
    is not kept in git) stay in the table until a variant is run again."""
    rows = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 4 + len(FIGURES) and cells[2].isdigit():
                rows[(cells[0], cells[1], int(cells[2]))] = line
    return rows


def table() -> str:
    kept = earlier_rows(ROOT / "docs" / "locality_trials.md")
    rows = {}
    for path in sorted(OUT.glob("*.json")):
        if path.name.endswith(".facts.jsonl"):
            continue
        name, set_name, n, _seed = path.stem.rsplit("-", 3)
        saved = json.loads(path.read_text())
        # every row scored by the current rules, whatever version of them the run was made with
        metrics = dict(saved["metrics"], **compute_metrics(saved["probes"], saved["metrics"].get("answer_logprob_drop")))
        rows.setdefault((name, set_name, int(n)), []).append(metrics)
    lines = ["# What was tried to make LoRA local", "",
             "Generated by `python bench/locality_trials.py`; mean (± spread over seeds), every run scored by "
             "the current rules. Development facts (`bench/run_bench.py` FACT_SETS['dev']: France, gold, "
             "Hamlet; dev_b: Italy, sodium, 'The Origin of Species'; dev_c: the Pope, Germany's currency, Microsoft's "
             "CEO; all three may be tuned on) unless the set says heldout or fresh (a candidate picked on the dev "
             "facts, run there once, never tuned on; fresh: facts no session had run before the answer gate), the "
             "first 48 general questions, `lune` on LoRA unless the variant says otherwise; the benchmark's "
             "figures are in docs/benchmarks.md, the reading in docs/benchmarks_notes.md. Variants whose mechanism "
             "was dropped are kept here with their figures; those from `band` to `substitutes8` were run on the "
             "focused LoRA that the answer gate replaced (the default then was `focus_near_r10`).", "",
             "| variant | set | facts | seeds | " + " | ".join(FIGURES) + " |", "|" + "---|" * (4 + len(FIGURES))]
    order = list(VARIANTS) + list(REMOVED)
    keys = sorted(set(rows) | set(kept), key=lambda k: (k[2], order.index(k[0]) if k[0] in order else 99, k[1]))
    for name, set_name, n in keys:
        runs = rows.get((name, set_name, n))
        if runs is None:
            lines.append(kept[(name, set_name, n)])
            continue
        cells = []
        for key in FIGURES:
            values = [r.get(key) for r in runs if r.get(key) is not None]
            if not values:
                cells.append("n/a")
                continue
            mean = statistics.mean(values)
            spread = statistics.pstdev(values) if len(values) > 1 else 0
            cells.append(f"{mean:.2f}" + (f" ± {spread:.2f}" if spread else ""))
        lines.append(f"| {name} | {set_name} | {n} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | what it changes |", "|---|---|"]
    lines += [f"| {name} | {what} |" for name, (what, _) in VARIANTS.items()]
    lines += [f"| {name} | {what} |" for name, what in REMOVED.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--facts", type=int, default=3)
    parser.add_argument("--set", default="dev")
    parser.add_argument("--general-limit", type=int, default=48)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in args.variants:
            for seed in args.seeds:
                m = run(name, args.set, args.facts, seed, args.general_limit)
                print(f"{name:12s} seed={seed} " + " ".join(f"{k}={m.get(k)}" for k in FIGURES), flush=True)
    (ROOT / "docs" / "locality_trials.md").write_text(table(), encoding="utf-8")


if __name__ == "__main__":
    main()
