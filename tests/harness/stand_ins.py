"""Images the compose stack needs that the engine cannot pull (no registry): Tuwunel packaged from
a binary we were given, with the repository's `docker/tuwunel.Dockerfile` (what README tells
operators of old engines to run), and a PostgreSQL stand-in from Debian's packages
(`tests/compose/postgres`). Both are built with the legacy builder on the tests' debootstrapped
base and cached in the engine under tags that encode what went into them."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from tests.harness.docker_engine import docker, image_id
from tests.harness.docker_images import BUILD_TIMEOUT, LEGACY_BUILDER, ImageError

REPO = Path(__file__).resolve().parent.parent.parent
TUWUNEL_DOCKERFILE = REPO / "docker" / "tuwunel.Dockerfile"
POSTGRES_CONTEXT = REPO / "tests" / "compose" / "postgres"
TUWUNEL_REPOSITORY = "letta-appservice-test-tuwunel"
POSTGRES_REPOSITORY = "letta-appservice-test-postgres"


def tuwunel_version(binary: str) -> tuple[int, int, int]:
    """The binary's release (`tuwunel --version` prints e.g. `tuwunel 1.4.6 (…)`)."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise ImageError(f"cannot read a version from `{binary} --version`: {out!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def tuwunel_build_command(base: str, tag: str, context: Path) -> list[str]:
    """README's command for old engines (run with DOCKER_BUILDKIT=0), on the given base."""
    return [
        "build",
        "-f",
        str(TUWUNEL_DOCKERFILE),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        tag,
        str(context),
    ]


async def _build(command: list[str], what: str) -> None:
    result = await docker(*command, env=LEGACY_BUILDER, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        raise ImageError(f"the {what} image did not build:\n{result.describe(80)}")


# The C library and loader: every base image has its own, which must not be replaced.
SYSTEM_LIBRARIES = ("linux-vdso", "libc.so", "libm.so", "ld-linux", "libpthread", "libdl.so")


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries a dynamically linked binary needs besides libc (none for a static one)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    found = [line.split("=>")[1].split()[0] for line in out.splitlines() if "=> /" in line]
    return [Path(p) for p in found if not any(s in Path(p).name for s in SYSTEM_LIBRARIES)]


async def build_tuwunel_image(base: str, binary: Path, workdir: Path) -> str:
    """The binary packaged as README says (`mkdir tuwunel-image && cp … && docker build -f
    docker/tuwunel.Dockerfile …`); its tag, reused while binary, Dockerfile and base are the
    same."""
    recipe = _digest(binary.read_bytes(), TUWUNEL_DOCKERFILE.read_bytes(), base.encode())
    tag = f"{TUWUNEL_REPOSITORY}:{recipe}"
    if await image_id(tag) is None:
        context = workdir / "tuwunel-image"
        context.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, context / "tuwunel")
        for lib in shared_libraries(binary):  # a binary built from source is not static
            (context / "lib").mkdir(exist_ok=True)
            shutil.copy2(lib, context / "lib" / lib.name)
        try:
            await _build(tuwunel_build_command(base, tag, context), "Tuwunel")
        finally:
            shutil.rmtree(context, ignore_errors=True)
    return tag


async def build_postgres_image(base: str) -> str:
    """The PostgreSQL stand-in; its tag, reused while its files and the base are the same."""
    files = sorted(p for p in POSTGRES_CONTEXT.iterdir() if p.is_file())
    recipe = _digest(*(p.name.encode() + p.read_bytes() for p in files), base.encode())
    tag = f"{POSTGRES_REPOSITORY}:{recipe}"
    if await image_id(tag) is None:
        command = ["build", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(POSTGRES_CONTEXT)]
        await _build(command, "PostgreSQL stand-in")
    return tag
