"""docker-compose.yml and the Dockerfile agree with the code and with their base images: real settings, real
commands, pinned bases, a Python that requires-python allows, the venv first on PATH, the right extras."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import BaseModel

from pulse.cli import build_parser
from pulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PULSE_SERVICES = {
    name: body for name, body in COMPOSE["services"].items() if "pulse" in str(body.get("command", ""))
}


def _is_setting(variable: str) -> bool:
    model: type[BaseModel] = Settings
    parts = variable.lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _environment(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else dict(env)


def test_the_stack_has_kafka_redis_topic_init_and_the_stages() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "redis", "topics", "ingest", "inference", "streams", "api", "notify"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for name in ("kafka", "redis", "ingest", "inference", "streams", "api", "notify"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_inference_reserves_a_gpu() -> None:
    devices = COMPOSE["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


@pytest.mark.parametrize("name", sorted(PULSE_SERVICES))
def test_every_environment_variable_is_a_real_setting(name: str) -> None:
    for variable in _environment(PULSE_SERVICES[name]):
        assert _is_setting(variable), f"{name}: {variable} is not a Social Pulse setting"


@pytest.mark.parametrize("name", sorted(PULSE_SERVICES))
def test_every_command_exists(name: str) -> None:
    command = PULSE_SERVICES[name]["command"]
    assert command[0] == "pulse"
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or option


def test_dockerfile_env_variables_are_real_settings() -> None:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    block = re.search(r"^ENV TOPICS__.*?(?=^\S)", text, re.S | re.M)
    assert block is not None
    variables = re.findall(r"([A-Z][A-Z0-9_]+)=", block.group(0))
    assert variables
    for variable in variables:
        assert _is_setting(variable), f"Dockerfile: {variable} is not a setting"


def test_setting_check_rejects_typos() -> None:
    assert _is_setting("INFERENCE__BATCH_SIZE")
    assert not _is_setting("INFERENCE__BATCHSIZE")
    assert not _is_setting("KAFKA__BOOTSTRAP_SERVERS__X")


# --- The image: what can be checked without a Docker engine ------------------------------------------
#
# infra/Dockerfile is parsed (ARG defaults, FROM lines, ENV, the RUN commands) once per build that
# docker-compose.yml asks for, with that build's args, and checked against pyproject.toml and the two
# tables below. Each check returns its problems, so a test can show it failing on a broken input.

DOCKERFILE = (ROOT / "infra" / "Dockerfile").read_text()
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The python3 that infra/Dockerfile ends up with on each known base image: the image's own where it has
# one (python:*), else the distribution's default python3 from apt (the CUDA images carry no Python).
# An unknown base fails the checks: extend this table deliberately, with the fact each entry rests on.
BASE_PYTHON: dict[str, str] = {
    # Name the Debian release: python:3.11-slim moved from bookworm to trixie under the same tag.
    "python:3.11-slim-bookworm": "3.11",  # the official CPython 3.11 build on Debian 12
    "python:3.12-slim-bookworm": "3.12",
    "nvidia/cuda:*-ubuntu24.04": "3.12",  # Ubuntu 24.04: python3 is 3.12, and there is no python3.11
    "nvidia/cuda:*-ubuntu22.04": "3.10",  # Ubuntu 22.04: python3 is 3.10
}

# onnxruntime-gpu releases on PyPI and the CUDA major each is built for (`cuda_version` in the cp312
# manylinux wheels' onnxruntime/capi/build_and_package_info.py: 1.21.1 to 1.23.2 '12.2', 1.24.4 to
# 1.26.0 '12.8', 1.27.0 to 1.31.1 '13.0'; cuDNN 9 for all). pip installs the newest release the `gpu`
# extra allows, and its CUDA libraries come from the base image, so the CUDA majors must agree.
# Add releases as they appear (`pip index versions onnxruntime-gpu`).
ONNXRUNTIME_GPU_CUDA: dict[str, int] = {
    "1.20.0": 12,
    "1.20.2": 12,
    "1.21.0": 12,
    "1.21.1": 12,
    "1.22.0": 12,
    "1.23.0": 12,
    "1.23.2": 12,
    "1.24.1": 12,
    "1.24.4": 12,
    "1.25.0": 12,
    "1.25.1": 12,
    "1.26.0": 12,
    "1.27.0": 13,
    "1.28.0": 13,
    "1.29.0": 13,
    "1.30.0": 13,
    "1.31.0": 13,
    "1.31.1": 13,
}
# The ONNX Runtime CUDA provider needs cuBLAS, cuFFT, cuRAND (the `runtime` images) and cuDNN 9 (`cudnn`;
# CUDA 12.4 and later images, the ones tagged `cudnn8` before that carry cuDNN 8).
CUDA_BASE = re.compile(r"nvidia/cuda:(?P<major>\d+)\.\d+(?:\.\d+)?-cudnn-(?:runtime|devel)-ubuntu\d\d\.\d\d")
PROJECT_EXTRAS = {"cpu", "gpu"}  # one ONNX Runtime build each; never train, dev or local in an image

Problems = list[str]
Check = Callable[["Image"], Problems]


@dataclass
class Stage:
    index: int
    name: str | None
    base: str  # the FROM image (build args substituted) or an earlier stage's name
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def runs(self) -> list[list[str]]:
        """Every simple command of every RUN, as shell words."""
        return [
            command for keyword, rest in self.instructions if keyword == "RUN" for command in _commands(rest)
        ]


@dataclass
class Image:
    stages: list[Stage]
    build_args: dict[str, str]
    pyproject: dict[str, Any]

    def chain(self, stage: Stage) -> list[Stage]:
        """The stage and the earlier stages it is built FROM, root first."""
        names = {s.name: s for s in self.stages[: stage.index] if s.name}
        chain = [stage]
        while chain[0].base in names:
            chain.insert(0, names[chain[0].base])
        return chain

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def base(self) -> str:
        """The image the final stage (the one that runs) starts from."""
        return self.chain(self.final)[0].base


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions with their continuation lines joined; comment lines dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _commands(run: str) -> list[list[str]]:
    """A shell command line split into simple commands (at &&, ||, ;, |, parentheses), as words."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set("();<>|&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # the legacy form: ENV KEY value
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _image(dockerfile: str, build_args: dict[str, str], pyproject: dict[str, Any] = PYPROJECT) -> Image:
    """The Dockerfile's stages as `docker build` with these build args sees them."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in _instructions(dockerfile):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(len(stages), name, _substitute(words[0], global_args)))
            parent = next((s for s in stages[:-1] if s.name == stages[-1].base), None)
            if parent is not None:
                stages[-1].env = dict(parent.env)
            continue
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            scope = stages[-1].args if stages else global_args
            fallback = default.strip("\"'") if has_default else global_args.get(name, "")
            scope[name] = build_args.get(name, fallback)
            continue
        if not stages:
            raise AssertionError(f"{keyword} before the first FROM")
        stage = stages[-1]
        rest = _substitute(rest, {**stage.args, **stage.env})
        stage.instructions.append((keyword, rest))
        if keyword == "ENV":
            stage.env.update(_env_pairs(rest))
    return Image(stages, build_args, pyproject)


def _venv(image: Image) -> tuple[Stage, str, str] | None:
    """(stage, interpreter, directory) of the `python -m venv DIR` that makes the image's venv."""
    for stage in image.stages:
        for words in stage.runs():
            for i in range(1, len(words) - 2):
                if words[i : i + 2] == ["-m", "venv"]:
                    target = next(w for w in words[i + 2 :] if not w.startswith("-"))
                    return stage, words[i - 1], target.rstrip("/")
    return None


def _pip_installs(image: Image) -> list[tuple[str, list[str]]]:
    """(how pip is run, the words after `install`) for every `pip install` in every stage."""
    installs = []
    for stage in image.stages:
        for words in stage.runs():
            for i, word in enumerate(words[:-1]):
                if word == "-m" and i > 0 and words[i + 1] == "pip" and words[i + 2 : i + 3] == ["install"]:
                    installs.append((f"{words[i - 1]} -m pip", words[i + 3 :]))
                elif (
                    re.fullmatch(r"pip[0-9.]*", Path(word).name)
                    and words[i + 1] == "install"
                    and words[i - 1 : i] != ["-m"]
                ):
                    installs.append((word, words[i + 2 :]))
    return installs


def _pinned(reference: str) -> str | None:
    """Why an image reference is not pinned, or None."""
    if "$" in reference:
        return f"{reference!r} has an unresolved variable"
    if "@sha256:" in reference:
        return None
    name = reference.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"{reference!r} has no tag (that is :latest)"
    if name.rsplit(":", 1)[1] == "latest":
        return f"{reference!r} is :latest"
    return None


def _base_python(base: str) -> str | None:
    return next((v for pattern, v in BASE_PYTHON.items() if fnmatch.fnmatchcase(base, pattern)), None)


def check_pinned(image: Image) -> Problems:
    """Every FROM, and so every BASE, names a pinned tag (or a digest), never latest."""
    names = {stage.name for stage in image.stages if stage.name}
    return [f"FROM {why}" for s in image.stages if s.base not in names and (why := _pinned(s.base))]


def check_python(image: Image) -> Problems:
    """The interpreter the image's venv runs on is one that base has, and requires-python allows it."""
    base = image.base
    version = _base_python(base)
    if version is None:
        return [f"unknown base image {base!r}: add the python3 it gives the Dockerfile to BASE_PYTHON"]
    problems = []
    requires = SpecifierSet(image.pyproject["project"]["requires-python"])
    if not requires.contains(version):
        problems.append(f"{base} gives Python {version}, which requires-python {requires} excludes")
    roots = {image.chain(stage)[0].base for stage in image.stages}
    if roots != {base}:
        problems.append(f"the stages start from {sorted(roots)}: a venv copied between them loses its python")
    venv = _venv(image)
    wanted = [venv[1]] if venv else []
    for stage in image.stages:
        for words in stage.runs():
            if words[:1] in (["apt-get"], ["apt"]) and "install" in words:
                wanted += [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
    for word in wanted:
        named = re.match(r"(?:.*/)?python(3\.\d+)", word)
        if named and named[1] != version:
            problems.append(f"{word!r}: the Python on {base} is {version}, not {named[1]}")
    return problems


def check_venv_on_path(image: Image) -> Problems:
    """The image has a venv, and its bin directory comes first on the final stage's PATH."""
    venv = _venv(image)
    if venv is None:
        return ["no `python3 -m venv` creates a virtual environment"]
    made_in, _, directory = venv
    problems = []
    chain = image.chain(image.final)
    copies = [
        shlex.split(rest)
        for stage in chain
        for keyword, rest in stage.instructions
        if keyword == "COPY" and rest.startswith("--from=")
    ]
    copied = any(
        w[1:] == [directory, directory] or w[1:] == [directory + "/", directory + "/"] for w in copies
    )
    if made_in not in chain and not copied:
        problems.append(f"{directory} is made in stage {made_in.index} and not copied into the final stage")
    path = image.final.env.get("PATH")
    if path is None:
        problems.append("the final stage sets no PATH (ENV does not carry across FROM)")
    else:
        entries = path.split(":")
        if entries[0].rstrip("/") != f"{directory}/bin":
            problems.append(f"PATH={path}: {directory}/bin is not first")
        if not {"$PATH", "${PATH}"} & set(entries):
            problems.append(f"PATH={path} drops the base image's PATH")
    return problems


def check_pip(image: Image) -> Problems:
    """pip runs from the venv, and installs the project with exactly the build's ONNX Runtime extra."""
    venv = _venv(image)
    directory = venv[2] if venv else "<no venv>"
    extras_arg = next((s.args["EXTRAS"] for s in image.stages if "EXTRAS" in s.args), None)
    problems = []
    installs = _pip_installs(image)
    projects = []
    for how, words in installs:
        if not how.startswith(f"{directory}/bin/"):
            problems.append(f"{how} install: not the venv's pip ({directory}/bin/python -m pip)")
        bad = [
            w
            for w in words
            if w.split("=")[0] in {"--user", "--break-system-packages", "--target", "--prefix"}
        ]
        if bad:
            problems.append(f"pip install {' '.join(bad)}: installs outside the venv")
        for word in words:
            if word.startswith("-"):
                continue
            project = re.fullmatch(r"\.(?:\[([^\]]*)\])?", word)
            if project is None:
                problems.append(f"pip install {word}: only the project (.[extra]) belongs in the image")
            else:
                projects.append({e.strip() for e in (project[1] or "").split(",") if e.strip()})
    if len(projects) != 1:
        return [*problems, f"the project is installed {len(projects)} times, not once"]
    extras = projects[0]
    declared = set(image.pyproject["project"].get("optional-dependencies", {}))
    if len(extras) != 1 or not extras <= PROJECT_EXTRAS:
        problems.append(
            f"extras {sorted(extras)}: exactly one of {sorted(PROJECT_EXTRAS)}, never train/dev/local"
        )
    if not extras <= declared:
        problems.append(f"extras {sorted(extras - declared)} are not in pyproject's optional-dependencies")
    if extras_arg is not None and extras != {extras_arg}:
        problems.append(f"EXTRAS={extras_arg} but the install line gives {sorted(extras)}")
    return problems


def _onnxruntime_gpu(pyproject: dict[str, Any]) -> Version | None:
    """The onnxruntime-gpu release pip picks for the `gpu` extra: the newest one it allows."""
    requirements = [Requirement(r) for r in pyproject["project"]["optional-dependencies"].get("gpu", [])]
    spec = next((r.specifier for r in requirements if r.name == "onnxruntime-gpu"), None)
    allowed = [Version(v) for v in ONNXRUNTIME_GPU_CUDA if spec is not None and spec.contains(v)]
    return max(allowed, default=None)


def check_cuda(image: Image) -> Problems:
    """A gpu build runs on a CUDA + cuDNN 9 image of the CUDA major its onnxruntime-gpu is built for."""
    installs = [w for _, words in _pip_installs(image) for w in words]
    gpu = any(re.fullmatch(r"\.\[.*\bgpu\b.*\]", w) for w in installs)
    cuda = CUDA_BASE.fullmatch(image.base)
    if not gpu:
        return [f"{image.base} is a CUDA image but the build installs no gpu extra"] if cuda else []
    if cuda is None:
        return [f"{image.base}: onnxruntime-gpu needs an nvidia/cuda:X.Y.Z-cudnn-runtime-ubuntuNN.NN base"]
    release = _onnxruntime_gpu(image.pyproject)
    if release is None:
        return ["no known onnxruntime-gpu release satisfies the gpu extra: extend ONNXRUNTIME_GPU_CUDA"]
    wanted = ONNXRUNTIME_GPU_CUDA[str(release)]
    if int(cuda["major"]) != wanted:
        return [
            f"{image.base} has CUDA {cuda['major']} but pip installs onnxruntime-gpu {release}, built for"
            f" CUDA {wanted}: use nvidia/cuda:{wanted}.x.y-cudnn-runtime-ubuntu24.04 or bound onnxruntime-gpu"
        ]
    return []


CHECKS = (check_pinned, check_python, check_venv_on_path, check_pip, check_cuda)


def _build_args(body: dict[str, Any]) -> dict[str, str]:
    build = body["build"]
    args = {} if isinstance(build, str) else build.get("args", {})
    return (
        dict(a.split("=", 1) for a in args)
        if isinstance(args, list)
        else {k: str(v) for k, v in args.items()}
    )


# Each image docker-compose.yml builds (by service), and the plain `docker build -f infra/Dockerfile .`.
BUILDS = {"(default)": {}} | {
    name: _build_args(body) for name, body in COMPOSE["services"].items() if "build" in body
}
GPU_ARGS = {"BASE": "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04", "EXTRAS": "gpu"}


def test_compose_builds_the_dockerfile_with_args_it_declares() -> None:
    declared = {rest.partition("=")[0] for keyword, rest in _instructions(DOCKERFILE) if keyword == "ARG"}
    assert {"BASE", "EXTRAS"} <= declared
    for name, body in COMPOSE["services"].items():
        if "build" in body:
            assert body["build"]["dockerfile"] == "infra/Dockerfile", name
            assert set(_build_args(body)) <= declared, f"{name}: a build arg the Dockerfile ignores"
    assert BUILDS["inference"]["EXTRAS"] == "gpu"
    assert _image(DOCKERFILE, BUILDS["ingest"]).base == _image(DOCKERFILE, {}).base  # the CPU default


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_the_image_compose_builds(build: str, check: Check) -> None:
    assert check(_image(DOCKERFILE, BUILDS[build])) == []


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_gpu_image_on_a_cuda_13_base(check: Check) -> None:
    assert check(_image(DOCKERFILE, GPU_ARGS)) == []


def test_third_party_images_are_pinned() -> None:
    for name, body in COMPOSE["services"].items():
        if "build" not in body:
            assert _pinned(body["image"]) is None, name


def test_the_dockerfile_parses_as_expected() -> None:
    image = _image(DOCKERFILE, {})
    assert image.base == "python:3.11-slim-bookworm"
    venv = _venv(image)
    assert venv is not None and venv[1:] == ("python3", "/opt/venv")
    assert _pip_installs(image) == [("/opt/venv/bin/python -m pip", ["--no-cache-dir", ".[cpu]"])]
    gpu = _image(DOCKERFILE, BUILDS["inference"])
    assert {s.base for s in gpu.stages} == {BUILDS["inference"]["BASE"]}
    assert _pip_installs(gpu)[0][1] == ["--no-cache-dir", ".[gpu]"]
    assert image.final.env["PATH"] == "/opt/venv/bin:$PATH"


def _edit(old: str, new: str) -> str:
    if not old:
        return DOCKERFILE
    assert DOCKERFILE.count(old) == 1, f"the test edits {old!r}, which is not once in the Dockerfile"
    return DOCKERFILE.replace(old, new)


def _pyproject(**changes: Any) -> dict[str, Any]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for key, value in changes.items():
        if key == "gpu":
            pyproject["project"]["optional-dependencies"]["gpu"] = value
        else:
            pyproject["project"][key.replace("_", "-")] = value
    return pyproject


# A broken input (an edit of the Dockerfile, build args, pyproject), the check that must catch it, and what
# the check says about it.
def _case(
    name: str,
    check: Check,
    says: str,
    edit: tuple[str, str] = ("", ""),
    args: dict[str, str] | None = None,
    pyproject: dict[str, Any] = PYPROJECT,
) -> Any:
    return pytest.param(edit, args or {}, pyproject, check, says, id=name)


BROKEN = [
    _case(
        "base latest",
        check_pinned,
        ":latest",
        edit=("ARG BASE=python:3.11-slim-bookworm", "ARG BASE=python:latest"),
    ),
    _case("base without a tag", check_pinned, "no tag", args={"BASE": "ubuntu"}),
    _case("floating python tag", check_python, "unknown base", args={"BASE": "python:3.11-slim"}),
    _case("unknown base", check_python, "unknown base", args={"BASE": "debian:bookworm-slim"}),
    _case(
        "ubuntu 22.04",
        check_python,
        "3.10",
        args={**GPU_ARGS, "BASE": "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04"},
    ),
    _case("python 3.13 only", check_python, "excludes", pyproject=_pyproject(requires_python=">=3.13")),
    _case(
        "apt python3.11 on 24.04",
        check_python,
        "not 3.11",
        edit=("python3 python3-venv", "python3.11 python3.11-venv"),
        args=GPU_ARGS,
    ),
    _case(
        "stages on two bases",
        check_python,
        "loses its python",
        edit=("\nFROM ${BASE}\n", "\nFROM python:3.12-slim-bookworm\n"),
    ),
    _case(
        "no venv",
        check_venv_on_path,
        "no `python3 -m venv`",
        edit=("python3 -m venv /opt/venv", "true"),
    ),
    _case(
        "venv last on PATH",
        check_venv_on_path,
        "is not first",
        edit=("VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH", "PATH=$PATH:/opt/venv/bin"),
    ),
    _case(
        "PATH set in the build stage only",
        check_venv_on_path,
        "sets no PATH",
        edit=("ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH\n", ""),
    ),
    _case(
        "base PATH dropped",
        check_venv_on_path,
        "drops",
        edit=("PATH=/opt/venv/bin:$PATH\nWORKDIR /app", "PATH=/opt/venv/bin:/usr/bin:/bin\nWORKDIR /app"),
    ),
    _case(
        "venv not copied",
        check_venv_on_path,
        "not copied",
        edit=("COPY --from=build /opt/venv /opt/venv\n", ""),
    ),
    _case(
        "system pip",
        check_pip,
        "not the venv's pip",
        edit=("/opt/venv/bin/python -m pip install", "python3 -m pip install"),
    ),
    _case(
        "break system packages",
        check_pip,
        "outside the venv",
        edit=("pip install --no-cache-dir", "pip install --break-system-packages"),
    ),
    _case(
        "dev extra",
        check_pip,
        "never train/dev/local",
        edit=('".[${EXTRAS}]"', '".[${EXTRAS},dev]"'),
    ),
    _case("EXTRAS=train", check_pip, "never train/dev/local", args={"EXTRAS": "train"}),
    _case("EXTRAS=local", check_pip, "never train/dev/local", args={"EXTRAS": "local"}),
    _case("no extra", check_pip, "exactly one", edit=('".[${EXTRAS}]"', ".")),
    _case(
        "another package",
        check_pip,
        "only the project",
        edit=('".[${EXTRAS}]"', '".[${EXTRAS}]" torch'),
    ),
    _case("gpu on a python base", check_cuda, "needs an nvidia/cuda", args={"EXTRAS": "gpu"}),
    _case("cpu on a cuda base", check_cuda, "no gpu extra", args={**GPU_ARGS, "EXTRAS": "cpu"}),
    _case(
        "cuda without cudnn",
        check_cuda,
        "cudnn-runtime",
        args={**GPU_ARGS, "BASE": "nvidia/cuda:13.0.2-runtime-ubuntu24.04"},
    ),
    _case(
        "cuda 12 base, cuda 13 onnxruntime",
        check_cuda,
        "built for CUDA 13",
        args={**GPU_ARGS, "BASE": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"},
    ),
    _case(
        "cuda 13 base, cuda 12 onnxruntime",
        check_cuda,
        "built for CUDA 12",
        args=GPU_ARGS,
        pyproject=_pyproject(gpu=["onnxruntime-gpu>=1.20,<1.27"]),
    ),
]


@pytest.mark.parametrize(("edit", "build_args", "pyproject", "check", "says"), BROKEN)
def test_each_check_fails_on_a_broken_input(
    edit: tuple[str, str], build_args: dict[str, str], pyproject: dict[str, Any], check: Check, says: str
) -> None:
    problems = check(_image(_edit(*edit), build_args, pyproject))
    assert any(says in problem for problem in problems), problems
