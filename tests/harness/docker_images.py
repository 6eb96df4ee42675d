"""Images for the Docker tests on an engine that cannot pull anything (no registry reachable).

The base is made here from Debian's packages: `debootstrap` of bookworm (Python 3.11, as in
`python:3.11-slim`) from the mirror this machine's apt uses, imported with `docker import` and
cached in the engine under a tag that encodes its recipe, so only the first run pays for it. The
appservice image is then built from the repository's Dockerfile on that base with the legacy
builder (`DOCKER_BUILDKIT=0`), the one old engines and docker-compose 1.x use.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from tests.harness.docker_engine import docker, image_id, run

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPOSITORY = "letta-appservice-test-base"
APPSERVICE_TAG = "letta-appservice:test"
BUILDER_TAG = "letta-appservice:test-builder"
# Bump when build_base changes what goes into the image while the recipe's inputs stay the same.
RECIPE_REVISION = 1
APT_DIR = Path("/etc/apt")
# Debian's place for CAs the administrator added. This machine may reach PyPI only through a
# TLS-inspecting proxy that only those CAs vouch for; the base trusts what the host trusts, so
# `pip install` in the build works wherever pip on the host does.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LEGACY_BUILDER = {"DOCKER_BUILDKIT": "0"}
BUILD_TIMEOUT = 1800.0  # two busy cores: generous, never asserted on


class ImageError(RuntimeError):
    """A test image could not be made; the message says what to do."""


# --- where Debian comes from ------------------------------------------------------------------


@attrs.frozen
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


_ONE_LINE = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$")


def _one_line_sources(text: str) -> list[AptSource]:
    sources = []
    for line in text.splitlines():
        match = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if match:
            uri, suite, components = match.groups()
            sources.append(AptSource(uri, (suite,), tuple(components.split())))
    return sources


def _deb822_sources(text: str) -> list[AptSource]:
    sources = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # continuation of a multi-line field
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites, components = tuple(fields.get("suites", "").split()), fields.get("components", "")
        for uri in fields.get("uris", "").split():
            sources.append(AptSource(uri, suites, tuple(components.split())))
    return sources


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """The `deb` sources apt reads: sources.list, then sources.list.d (*.list, *.sources)."""
    sources = []
    if (apt_dir / "sources.list").is_file():
        sources += _one_line_sources((apt_dir / "sources.list").read_text())
    for path in sorted((apt_dir / "sources.list.d").glob("*")):
        if path.suffix == ".list":
            sources += _one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            sources += _deb822_sources(path.read_text())
    return sources


def _host_codename() -> str:
    with_codename = re.search(r"^VERSION_CODENAME=(\S+)", _read("/etc/os-release"), re.M)
    return with_codename.group(1).strip('"') if with_codename else ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def debian_mirror(suite: str = SUITE, apt_dir: Path = APT_DIR) -> str:
    """The mirror apt is configured with: one serving `suite`'s main, else the host release's
    (any Debian mirror carries every current release)."""
    sources = [s for s in apt_sources(apt_dir) if "main" in s.components]
    for wanted in (suite, _host_codename()):
        for source in sources:
            if wanted and wanted in source.suites:
                return source.uri.rstrip("/")
    raise ImageError(
        f"no Debian mirror for {suite} main in {apt_dir}/sources.list(.d); the Docker tests make "
        "their base image from it with debootstrap"
    )


# --- the base image ---------------------------------------------------------------------------


@attrs.frozen
class BaseRecipe:
    """Everything that decides the base image's content; its hash is part of the tag."""

    suite: str
    mirror: str
    packages: tuple[str, ...]
    local_cas: tuple[tuple[str, str], ...]  # (path below LOCAL_CAS, sha256 of the file)

    @property
    def tag(self) -> str:
        recipe = json.dumps([RECIPE_REVISION, attrs.asdict(self)], sort_keys=True)
        return f"{BASE_REPOSITORY}:{self.suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"

    def debootstrap_args(self, rootfs: Path) -> list[str]:
        return [
            "--variant=minbase",
            f"--include={','.join(self.packages)}",
            self.suite,
            str(rootfs),
            self.mirror,
        ]


def base_recipe() -> BaseRecipe:
    cas = tuple(
        (str(path.relative_to(LOCAL_CAS)), hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(LOCAL_CAS.rglob("*.crt"))
    )
    return BaseRecipe(SUITE, debian_mirror(), PACKAGES, cas)


def _debootstrap() -> str:
    found = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(found).exists():
        raise ImageError(
            "debootstrap is not installed: `apt-get install debootstrap` (./test.sh does this "
            "when run as root). The Docker tests make their base image with it."
        )
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to make the Docker tests' base image")
    return found


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys in the target; a failed run may leave them there, and
    deleting the rootfs must never reach into them."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in _read("/proc/self/mounts").splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


async def build_base(recipe: BaseRecipe, workdir: Path) -> None:
    """debootstrap a minimal rootfs, trust the host's local CAs, import it as `recipe.tag`."""
    debootstrap = _debootstrap()
    rootfs, tarball = workdir / "rootfs", workdir / "rootfs.tar"
    try:
        result = await run(
            debootstrap, *recipe.debootstrap_args(rootfs), timeout=BUILD_TIMEOUT, check=False
        )
        if result.returncode != 0:
            raise ImageError(f"debootstrap failed:\n{result.describe()}")
        if recipe.local_cas:
            for relative, _ in recipe.local_cas:
                target = rootfs / LOCAL_CAS.relative_to("/") / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(LOCAL_CAS / relative, target)
            await run("chroot", str(rootfs), "update-ca-certificates")
        # apt's downloads and lists are a third of the tree and useless in the image.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        await run("tar", "-C", str(rootfs), "-cf", str(tarball), ".", timeout=BUILD_TIMEOUT)
        await docker(
            "import",
            "--change",
            f"ENV PATH={IMAGE_PATH}",
            "--change",
            'CMD ["python3"]',
            "--message",
            f"debootstrap {' '.join(recipe.debootstrap_args(Path('rootfs')))}",
            str(tarball),
            recipe.tag,
            timeout=BUILD_TIMEOUT,
        )
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)
        tarball.unlink(missing_ok=True)


@asynccontextmanager
async def _machine_lock(name: str) -> AsyncIterator[None]:
    # Two test sessions on one machine (two worktrees) must not debootstrap the same base twice.
    with open(Path(tempfile.gettempdir()) / name, "w") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def ensure_base_image(workdir: Path) -> str:
    """The base image's tag: reused when the engine has it, else made (a few minutes)."""
    recipe = base_recipe()
    if await image_id(recipe.tag) is None:
        async with _machine_lock("letta-appservice-test-base.lock"):
            if await image_id(recipe.tag) is None:
                await build_base(recipe, workdir)
    return recipe.tag


# --- the appservice image ---------------------------------------------------------------------


def build_command(
    base: str, context: Path, tag: str, iidfile: Path, target: str | None = None
) -> list[str]:
    """`docker build` as the tests run it (with DOCKER_BUILDKIT=0 in the environment)."""
    return [
        "build",
        *(["--target", target] if target else []),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--iidfile",
        str(iidfile),
        "--tag",
        tag,
        str(context),
    ]


async def _build(
    base: str, context: Path, tag: str, iidfile: Path, target: str | None = None
) -> str:
    previous = await image_id(tag)
    command = build_command(base, context, tag, iidfile, target)
    result = await docker(*command, env=LEGACY_BUILDER, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        raise ImageError(f"the appservice image did not build:\n{result.describe(80)}")
    built = iidfile.read_text().strip()
    if previous and previous != built:
        # The layer cache stays with the new image; the replaced one would only pile up.
        await docker("image", "rm", previous, check=False)
    return built


async def build_appservice_image(base: str, context: Path, workdir: Path) -> str:
    """Build the Dockerfile in `context` on `base`; returns the image id (tests run that id,
    so another session re-tagging APPSERVICE_TAG meanwhile changes nothing for this one)."""
    # The builder stage first, under its own tag: the legacy builder leaves it untagged
    # otherwise, and every change to the package would leave another one behind.
    await _build(base, context, BUILDER_TAG, workdir / "builder.iid", target="builder")
    return await _build(base, context, APPSERVICE_TAG, workdir / "appservice.iid")
