"""The sandbox image: built offline from Debian packages, or adopted from an image the user names.

`debootstrap --variant=minbase --include=python3 bookworm` makes a ~170 MB root with python3 from the
Debian mirror apt already uses (no image registry needed); the root is tarred reproducibly
(sorted names, fixed mtimes, numeric owners), cached, and `docker import`ed. The tag is the tarball's
content digest (`selfinstruct-sandbox:<sha256[:12]>`) and `:latest` points at it; every Result records
the image id it ran on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker

from executor.config import DEFAULT_IMAGE, IMAGE_REPOSITORY, SANDBOX_UID
from selfinstruct.errors import UserError

IMAGE_LABEL = "selfinstruct.sandbox.image"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOTFS_NAME = f"{SUITE}-minbase-python3.tar"
IMAGE_CHANGES = [
    f"USER {SANDBOX_UID}:{SANDBOX_UID}",
    "WORKDIR /tmp",
    "ENV LANG=C.UTF-8",
    f'LABEL {IMAGE_LABEL}="1"',
    'CMD ["sleep", "infinity"]',
]
# Not needed to run Python, and most of the root's size.
PRUNE = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "selfinstruct"


def connect(timeout: int = 60, pool_size: int = 10) -> docker.DockerClient:
    """A client for a daemon that answers, or a UserError that says how to start one."""
    try:
        client = docker.from_env(timeout=timeout, max_pool_size=pool_size)
        client.ping()
    except docker.errors.DockerException as exc:
        raise UserError(
            f"cannot reach the Docker daemon ({exc.__class__.__name__}): start it "
            "(`sudo dockerd &` or scripts/setup.sh) or set DOCKER_HOST"
        ) from exc
    return client


def resolve_image(client: docker.DockerClient, name: str) -> docker.models.images.Image:
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound as exc:
        hint = (
            "run `selfinstruct sandbox build`"
            if name.startswith(IMAGE_REPOSITORY)
            else f"pull it or run `selfinstruct sandbox build --from-image {name}`"
        )
        raise UserError(f"sandbox image {name!r} not found: {hint}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_rootfs(tarball: Path, mirror: str, log: Callable[[str], None]) -> None:
    """debootstrap a minimal root with python3, add the sandbox user, prune, tar it reproducibly."""
    if shutil.which("debootstrap") is None:
        raise UserError(
            "debootstrap is not installed: `sudo apt-get install debootstrap`, "
            "or use `selfinstruct sandbox build --from-image python:3.11-slim`"
        )
    if os.geteuid() != 0:
        raise UserError(
            "building the image with debootstrap needs root: run it with sudo, "
            "or use `selfinstruct sandbox build --from-image NAME`"
        )
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as work:
        root = Path(work) / "root"
        log(f"debootstrap {SUITE} (minbase + python3) from {mirror}")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), mirror],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise UserError(
                f"debootstrap failed ({' | '.join(tail)}); check the mirror {mirror} or use --from-image NAME"
            )
        with (root / "etc/passwd").open("a") as handle:
            handle.write(f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/usr/sbin/nologin\n")
        with (root / "etc/group").open("a") as handle:
            handle.write(f"sandbox:x:{SANDBOX_UID}:\n")
        for relative in PRUNE:
            target = root / relative
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            [
                "tar",
                "--sort=name",
                "--mtime=@0",
                "--numeric-owner",
                "--xattrs",
                "-C",
                str(root),
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
        )
        partial.rename(tarball)


def _tag_latest(image: docker.models.images.Image, digest_tag: str) -> None:
    image.tag(IMAGE_REPOSITORY, digest_tag)
    image.tag(IMAGE_REPOSITORY, "latest")


def build(
    client: docker.DockerClient,
    *,
    from_image: str | None = None,
    force: bool = False,
    mirror: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Make sure `selfinstruct-sandbox:latest` exists; returns the digest-tagged name. Idempotent."""
    if from_image:
        return _adopt(client, from_image, log)
    if not force:
        try:
            existing = client.images.get(DEFAULT_IMAGE)
            tags = [t for t in existing.tags if t.startswith(IMAGE_REPOSITORY + ":") and t != DEFAULT_IMAGE]
            log(
                f"sandbox image present: {tags[0] if tags else DEFAULT_IMAGE} ({existing.id[:19]}); --force rebuilds it"
            )
            return tags[0] if tags else DEFAULT_IMAGE
        except docker.errors.ImageNotFound:
            pass
    tarball = cache_dir() / ROOTFS_NAME
    if force or not tarball.exists():
        _make_rootfs(tarball, mirror or os.environ.get("SELFINSTRUCT_DEBIAN_MIRROR", DEFAULT_MIRROR), log)
    else:
        log(f"using cached root filesystem {tarball}")
    digest = _sha256(tarball)[:12]
    name = f"{IMAGE_REPOSITORY}:{digest}"
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        log(f"docker import {tarball.name} -> {name}")
        client.api.import_image_from_file(str(tarball), repository=IMAGE_REPOSITORY, tag=digest, changes=IMAGE_CHANGES)
        image = client.images.get(name)
    _tag_latest(image, digest)
    log(f"sandbox image ready: {name} ({image.id[:19]})")
    return name


def _adopt(client: docker.DockerClient, source: str, log: Callable[[str], None]) -> str:
    """Use an existing image (pulled if needed) that has python3, tagged under the sandbox's name."""
    try:
        image = client.images.get(source)
    except docker.errors.ImageNotFound:
        log(f"pulling {source}")
        try:
            image = client.images.pull(source)
        except docker.errors.DockerException as exc:
            raise UserError(
                f"cannot get image {source!r}: {exc.__class__.__name__}; "
                "pull it where a registry is reachable and `docker load` it"
            ) from exc
    try:
        output = client.containers.run(
            image.id,
            ["python3", "-c", "import sys; print(sys.version_info >= (3, 9))"],
            network_mode="none",
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            remove=True,
        )
    except docker.errors.ContainerError as exc:
        raise UserError(f"image {source!r} has no usable python3: {exc}") from exc
    if output.strip() != b"True":
        raise UserError(f"image {source!r} needs python >= 3.9 (got {output.strip()!r})")
    try:  # the pool's idle main process
        client.containers.run(image.id, ["sleep", "0"], network_mode="none", remove=True)
    except docker.errors.ContainerError as exc:
        raise UserError(f"image {source!r} has no `sleep` command (coreutils or busybox): {exc}") from exc
    digest = image.id.split(":")[-1][:12]
    _tag_latest(image, digest)
    name = f"{IMAGE_REPOSITORY}:{digest}"
    log(f"sandbox image ready: {name} (from {source}, {image.id[:19]})")
    return name
