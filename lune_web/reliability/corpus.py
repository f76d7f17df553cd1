"""The bad-input corpus (bad_inputs.jsonl beside this module) and how each case is put to each channel: the
session API that the app calls, the command line, and the launched app through gradio_client.

A case names where the bad value goes (facts, sentences, settings, model, ask), the input, whether it
must be rejected or accepted, and a fragment of the message. Handled means: a rejected case gets a
clear one-line message (no traceback, no generic "something went wrong") and the session keeps its
model, facts and results; an accepted case comes back as typed, shown as text. Used by the tests and
by bench/run_reliability.py, which counts the cases handled.
"""
from __future__ import annotations

import html
import io
import json
import re
import unicodedata
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CORPUS = Path(__file__).resolve().parent / "bad_inputs.jsonl"
GOOD_ROW = ["What is the capital of France?", "Paris", "Lyon", ""]
FAST = {"steps": 2, "max_new_tokens": 4, "early_stop": False, "learning_rate": 1e-2}
# Enough for a tiny random Llama to answer GOOD_ROW's question with its replacement (plain LoRA: such a model
# never states the answer, so the answer gate would never open).
TRAIN = {"method": "lune", "adapter": "lora", "steps": 24, "learning_rate": 1e-2, "layers": "0-3",
         "max_new_tokens": 8, "early_stop": False}
CLI_FLAGS = {"method": "--method", "adapter": "--adapter", "steps": "--steps", "learning_rate": "--lr",
             "lora_rank": "--rank", "layers": "--layers", "seed": "--seed", "max_new_tokens": "--max-new-tokens"}
APP_FORM = {"method": "lune", "adapter": "subject", "steps": 2, "learning_rate": 1e-2, "lora_rank": 8, "layers": "",
            "seed": 0, "max_new_tokens": 8, "early_stop": False, "general_prompts": 0}
# A config.json of a small Llama: a real model folder as far as the path checks go.
LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}
REMOTE_CODE_RAN = "REMOTE_CODE_RAN"  # the custom config module writes this file if it is ever executed


@dataclass
class Case:
    id: str
    where: str  # facts | sentences | settings | model | ask
    input: Any
    expect: str  # rejected | accepted
    message: str = ""  # fragment of the message (rejected cases)
    cli_message: str | None = None  # where the command line words it differently
    widget_message: str | None = None  # where, through the app's API, the widget's own bounds check answers first
    answer_known: bool | None = None  # accepted facts: whether the model says the answer before training
    note: str = ""

    @property
    def rejected(self) -> bool:
        return self.expect == "rejected"


@dataclass
class Outcome:
    case: Case
    channel: str  # session | cli | app
    handled: bool
    message: str = ""
    problems: list[str] = field(default_factory=list)


def _expand(value, places: dict[str, str]):
    """Inputs too big to store ({"repeat", "times", "then"}, {"rows", "row"}) and $PLACES made real."""
    if isinstance(value, dict) and "repeat" in value:
        return value["repeat"] * value["times"] + value.get("then", "")
    if isinstance(value, dict) and "rows" in value:
        return [[cell.format(i=i) for cell in value["row"]] for i in range(value["rows"])]
    if isinstance(value, list):
        return [_expand(v, places) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        return places[value[1:]]
    return value


def load_cases(places: dict[str, str] | None = None) -> list[Case]:
    cases = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            data["input"] = _expand(data["input"], places or {})
            cases.append(Case(**data))
    return cases


def make_model_folders(root: Path, outside: Path) -> dict[str, str]:
    """Model folders for the $PLACES of the model cases: `root` is an allowed root, `outside` is not."""
    def folder(path: Path, config: dict | None = None) -> str:
        path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (path / "config.json").write_text(json.dumps(config))
        return str(path)

    remote = {"model_type": "lune_custom", "architectures": ["LuneForCausalLM"],
              "auto_map": {"AutoConfig": "configuration_lune.LuneConfig",
                           "AutoModelForCausalLM": "modeling_lune.LuneForCausalLM"}}
    places = {
        "MODEL_OUTSIDE_ROOTS": folder(outside / "llama", LLAMA_CONFIG),
        "EMPTY_FOLDER_IN_ROOT": folder(root / "empty"),
        "REMOTE_CODE_MODEL": folder(root / "remote-code", remote),
        "REMOTE_CODE_MODEL_NO_TYPE": folder(root / "remote-code-no-type", {"auto_map": remote["auto_map"]}),
        "UNKNOWN_TYPE_MODEL": folder(root / "unknown-arch", {"model_type": "lune_unknown_arch"}),
    }
    for name in ("remote-code", "remote-code-no-type"):  # proof, should it ever run, that it ran
        (root / name / "configuration_lune.py").write_text(
            f"import pathlib\npathlib.Path(__file__).with_name({REMOTE_CODE_RAN!r}).write_text('ran')\n")
    link = root / "escape"
    if not link.exists():
        link.symlink_to(outside / "llama", target_is_directory=True)
    places["SYMLINK_OUT_OF_ROOT"] = str(link)
    return places


def remote_code_ran(root: Path) -> bool:
    return any(root.glob(f"*/{REMOTE_CODE_RAN}"))


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _one_clear_line(message: str, fragment: str, problems: list[str]) -> None:
    if fragment not in message:
        problems.append(f"message lacks {fragment!r}")
    if "\n" in message or "Traceback" in message:
        problems.append("message is not one line")
    if "something went wrong" in message:
        problems.append("generic message")


# ---- the session API (what app.py calls) ---------------------------------------------------------

def _session_state(session) -> tuple:
    return (session.model_key, [list(r) for r in session.rows], id(session.adapter), id(session.report),
            len(session.runs))


def _session_action(S, session, case: Case):
    if case.where == "facts":
        return S.preview(session, case.input, 8)
    if case.where == "sentences":
        return S.add_sentences(session.rows, case.input)
    if case.where == "settings":
        updates = S.run(session, session.rows, dict(FAST, **case.input), 0)
        try:
            return next(updates)  # a rejected setting raises before the first update
        finally:
            updates.close()  # stops the job, should one have started
    if case.where == "model":
        return S.load(session, case.input, True)
    if case.where == "ask":
        return S.ask(session, case.input, 8)
    raise ValueError(f"unknown place {case.where!r}")


def run_session_case(S, session, case: Case) -> Outcome:
    """One case through the web service S (lune_web.service) on `session`, which holds a model, facts
    and a finished run."""
    from lune_web.errors import user_message

    before = _session_state(session)
    try:
        result = _session_action(S, session, case)
    except Exception as err:  # noqa: BLE001 - judged below
        message = user_message(err)
        problems = _session_refusal_problems(err, message, case)
        if _session_state(session) != before:
            problems.append("session state changed")
        return Outcome(case, "session", not problems, message, problems)
    problems = _session_result_problems(case, result)
    now = _session_state(session)
    if (now[0], now[2], now[3], now[4]) != (before[0], before[2], before[3], before[4]):
        problems.append("model or results changed")
    return Outcome(case, "session", not problems, "accepted", problems)


def _session_refusal_problems(err: Exception, message: str, case: Case) -> list[str]:
    from lune_core.errors import ModelLoadError
    from lune_core.facts import FactError
    from lune_web.errors import UserError

    problems: list[str] = []
    if not case.rejected:
        problems.append(f"refused: {message}")
    if not isinstance(err, (UserError, FactError, ModelLoadError)):
        problems.append(f"not a user error: {type(err).__name__}")
    _one_clear_line(message, case.message, problems)
    return problems


def _session_result_problems(case: Case, result) -> list[str]:
    if case.rejected:
        return ["accepted"]
    problems: list[str] = []
    if case.where == "facts":
        if [r["question"] for r in result] != [_nfc(row[0]) for row in case.input]:
            problems.append("questions not returned as typed")
        if case.answer_known is not None and any(r["known"] != case.answer_known for r in result):
            problems.append(f"answer known should be {case.answer_known}")
    elif case.where == "sentences":
        answer = re.search(r"\[([^\[\]]+)\]", case.input)[1].strip()
        if result[-1][1] != _nfc(answer):
            problems.append("answer not returned as typed")
    elif case.where == "ask" and not all(isinstance(a, str) for a in result):
        problems.append("no answers")
    return problems


# ---- the command line -----------------------------------------------------------------------------

def cli_argv(case: Case, workdir: Path) -> list[str]:
    """`python -m lune_core` arguments putting the case where it belongs; --check stops before weights."""
    workdir.mkdir(parents=True, exist_ok=True)
    good = workdir / "good.jsonl"
    good.write_text(json.dumps(dict(zip(("question", "answer", "replacement"), GOOD_ROW))) + "\n")
    argv = ["run", "--out", str(workdir / "report.json"), "--check"]
    if case.where == "facts":
        path = workdir / f"{case.id}.jsonl"
        keys = ("question", "answer", "replacement", "paraphrases", "keep")
        lines = [json.dumps(dict(zip(keys, row)), ensure_ascii=False) for row in case.input
                 if any(cell.strip() for cell in row)]  # a blank table row is a blank line
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return argv + ["--facts", str(path)]
    if case.where == "sentences":
        path = workdir / f"{case.id}.txt"
        path.write_text(case.input, encoding="utf-8")
        return argv + ["--sentences", str(path)]
    argv += ["--facts", str(good)]
    if case.where == "settings":
        for key, value in case.input.items():
            argv += [CLI_FLAGS[key], str(value)]
        return argv
    if case.where == "model":
        return argv + ["--model", case.input]
    raise ValueError(f"{case.where!r} has no command-line counterpart")


def main_in_process(argv: list[str]) -> tuple[int, str, str]:
    """lune_core.cli.main as `python -m lune_core` runs it: (exit code, stdout, stderr). An exception
    escaping main would be a traceback on a terminal; here it escapes to the caller."""
    from lune_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def run_cli_case(case: Case, workdir: Path,
                 run: Callable[[list[str]], tuple[int, str, str]] = main_in_process) -> Outcome:
    problems: list[str] = []
    try:
        code, out, err = run(cli_argv(case, workdir))
    except Exception as exc:  # noqa: BLE001 - a traceback on a terminal
        return Outcome(case, "cli", False, repr(exc), [f"raised {type(exc).__name__}"])
    if case.rejected:
        lines = err.strip().splitlines()
        message = lines[0] if lines else ""
        if code != 2:
            problems.append(f"exit code {code}")
        if len(lines) != 1 or not message.startswith("error: "):
            problems.append("stderr is not one 'error:' line")
        _one_clear_line(err.strip(), case.cli_message or case.message, problems)
        return Outcome(case, "cli", not problems, message, problems)
    if code != 0 or not out.startswith("ok:"):
        problems.append(f"exit code {code}: {err.strip()[:200]}")
    return Outcome(case, "cli", not problems, out.strip(), problems)


# ---- the launched app, through gradio_client ------------------------------------------------------

def table(rows: list[list[str]]) -> dict:
    from lune_web.forms import FACT_COLUMNS

    return {"headers": FACT_COLUMNS, "data": [list(r) + [""] * (len(FACT_COLUMNS) - len(r)) for r in rows]}


def plain(markdown: str) -> str:
    """A status line as the person reads it: Markdown escapes and HTML entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))


def unlearn(client, rows: list[list[str]], **settings):
    """Submit /unlearn with the form's values (APP_FORM, overridden by `settings`)."""
    s = dict(APP_FORM, **settings)
    return client.submit(table(rows), s["method"], s["adapter"], s["steps"], s["learning_rate"], s["lora_rank"],
                         s["layers"], s["seed"], s["max_new_tokens"], s["early_stop"], s["general_prompts"],
                         api_name="/unlearn")


def is_skip(value) -> bool:
    """gradio's "leave this output as it is" (an HTML output wraps it in props)."""
    return isinstance(value, dict) and value.get("__type__") == "update" and set(value) <= {"__type__", "props"}


def _app_status(case: Case, client, rows: list[list[str]]) -> tuple[str, list, object]:
    """(status line, outputs that must be left untouched, the result to judge an accepted case on)."""
    if case.where == "facts":
        base, status = client.predict(table(case.input), 8, api_name="/preview")
        return status, [base], base
    if case.where == "sentences":
        facts, status, typed, *_ = client.predict(table(rows), case.input, api_name="/add_sentences")
        return status, [facts, typed], facts
    if case.where == "settings":
        outputs = unlearn(client, rows, **case.input).result(timeout=300)
        return outputs[1], [o for i, o in enumerate(outputs) if i not in (0, 1)], outputs
    if case.where == "model":
        info = client.predict(case.input, True, api_name="/load_model")
        return info, [], info
    before, after, note = client.predict(case.input, 8, api_name="/ask")
    return note, [before, after], (before, after)


def run_app_case(case: Case, client, rows: list[list[str]]) -> Outcome:
    """One case through the app's API, on a client whose session has loaded a model and run once."""
    try:
        status, untouched, result = _app_status(case, client, rows)
    except Exception as err:  # noqa: BLE001 - gradio refused it before our code (widget bounds)
        message = str(err).strip()
        problems: list[str] = []
        if not (case.rejected and case.widget_message and case.widget_message in message):
            problems.append(f"raised: {message[:200]}")
        return Outcome(case, "app", not problems, message, problems)
    status = str(status)
    refused = status.startswith("⚠️")
    if case.rejected:
        problems = _app_refusal_problems(case, status, refused, untouched)
        return Outcome(case, "app", not problems, plain(status), problems)
    problems = [f"refused: {plain(status)}"] if refused else _app_result_problems(case, result)
    return Outcome(case, "app", not problems, "accepted", problems)


def _app_refusal_problems(case: Case, status: str, refused: bool, untouched: list) -> list[str]:
    problems: list[str] = []
    if not refused:
        problems.append("accepted")
    _one_clear_line(plain(status), case.message, problems)
    if "<" in status:
        problems.append("raw HTML in the status line")
    if case.where == "ask":  # the answers beside a refused prompt were another prompt's: cleared, not kept
        if any(value != "" for value in untouched):
            problems.append("the previous prompt's answers stayed beside the warning")
    elif not all(is_skip(value) for value in untouched):
        problems.append("an output other than the status changed")
    return problems


def _app_result_problems(case: Case, result) -> list[str]:
    problems: list[str] = []
    if case.where == "facts":
        shown = [row[0] for row in result["data"]]
        if shown != [_nfc(row[0]) for row in case.input]:
            problems.append("questions not shown as typed")
        if case.answer_known is False and not all("does not say it" in row[3] for row in result["data"]):
            problems.append("answer should show as not said")
    elif case.where == "sentences":
        answer = re.search(r"\[([^\[\]]+)\]", case.input)[1].strip()
        if result["data"][-1][1] != _nfc(answer):
            problems.append("answer not shown as typed")
    elif case.where == "ask" and not all(isinstance(a, str) for a in result):
        problems.append("no answers")
    return problems
