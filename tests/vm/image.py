"""The VM test's machine image: a Debian bookworm root file system made by
``debootstrap``, with every package ``deploy/install.sh --offline`` expects
installed through ``chroot`` before it ever boots.

The image is cached outside the repository (``$PRICEPIPE_VM_CACHE``, default
``/var/cache/pricepipe-vm``) under a key computed from what goes in it (suite,
mirrors, package list, recipe version), so a second run reuses it and a change
of any input builds a new one beside the old. Runs never boot the cached tree
itself: :func:`fresh_copy` gives each run its own copy.

Building needs root, ``debootstrap`` and the Debian mirror (about 3-6 minutes);
every later step of the test is offline.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("PRICEPIPE_VM_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("PRICEPIPE_VM_SECURITY_MIRROR",
                                 "http://deb.debian.org/debian-security")
#: What install.sh --offline verifies (python3 ... postgresql-client), plus an init
#: system to boot and the tools the test drives the machine with.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd",
    "python3", "python3-venv", "python3-pip", "nginx", "redis-server",
    "postgresql", "postgresql-client", "curl", "procps", "iproute2",
)
#: Bump when the build steps below change in a way the other inputs do not show.
RECIPE = 2
#: Marks a finished build: a tree without it is a crashed build and is rebuilt.
COMPLETE = ".pricepipe-vm-image"
#: Cached images and wheel sets of other keys unused this long are removed.
UNUSED_S = 7 * 86400

Log = Callable[[str], None]


def cache_dir() -> Path:
    return Path(os.environ.get("PRICEPIPE_VM_CACHE", "/var/cache/pricepipe-vm"))


def image_key() -> str:
    """Short digest of every input of the image."""
    inputs = {"suite": SUITE, "mirror": MIRROR, "security": SECURITY_MIRROR,
              "variant": "minbase", "packages": sorted(PACKAGES), "recipe": RECIPE}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def sources_list() -> str:
    return (f"deb {MIRROR} {SUITE} main\n"
            f"deb {MIRROR} {SUITE}-updates main\n"
            f"deb {SECURITY_MIRROR} {SUITE}-security main\n")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so concurrent runs build one image, not two."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], log: Log, *, timeout_s: float) -> None:
    log("+ " + " ".join(argv))
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}")


def _chroot(root: Path, script: str, log: Log, *, timeout_s: float,
            network: bool = True) -> None:
    """Run a shell script inside ``root`` with /proc, /sys and /dev mounted in a
    private mount namespace: nothing stays mounted on the host, even on a crash.
    ``network=False``: in a network namespace of its own too (loopback only)."""
    inner = ('mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
             'mount --rbind /dev "$0/dev" && '
             'exec chroot "$0" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 '
             'DEBIAN_FRONTEND=noninteractive sh -ec "$1"')
    _run(["unshare", "--mount", "--propagation", "private", "--fork",
          *([] if network else ["--net"]), "sh", "-ec", inner, str(root), script],
         log, timeout_s=timeout_s)


def _build(root: Path, log: Log) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
    _run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR], log,
         timeout_s=1200)
    (root / "etc/apt/sources.list").write_text(sources_list())
    # Packages' maintainer scripts must not start services in the chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    install = f"apt-get install -y -qq --no-install-recommends {' '.join(PACKAGES)}"
    _chroot(root, f"apt-get update -qq && {install} --download-only >/dev/null",
            log, timeout_s=1800)
    # Installed without the build host's network: the maintainer scripts must see the
    # machine's own ports, all free (PostgreSQL's first cluster takes the first free
    # port from 5432: with a server on the build host it would get 5433).
    # LANG=C.UTF-8 (in _chroot): that cluster gets UTF8, not SQL_ASCII.
    _chroot(root, f"{install} >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*",
            log, timeout_s=1800, network=False)
    policy.unlink()
    # A persistent journal: the test reads the warnings of every boot of a run.
    (root / "var/log/journal").mkdir(exist_ok=True)
    # Every copy gets its own machine ID (fresh_copy); the image has none.
    (root / "etc/machine-id").write_text("")
    (root / COMPLETE).write_text(json.dumps({"key": image_key(), "built": time.time()}))


def ensure_image(log: Log) -> Path:
    """The cached root file system for :func:`image_key`, built if missing."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = image_key()
    root = cache / f"rootfs-{SUITE}-{key}"
    with _locked(cache / f"rootfs-{key}.lock"):
        if (root / COMPLETE).exists():
            log(f"image: cached {root}")
            os.utime(root / COMPLETE)  # in use (see prune)
            prune(cache, keep={root.name}, log=log)
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        log(f"image: building {root} (debootstrap {SUITE} from {MIRROR})")
        _build(partial, log)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        log(f"image: built in {time.monotonic() - started:.0f} s")
    prune(cache, keep={root.name}, log=log)
    return root


def prune(cache: Path, *, keep: set[str], log: Log) -> None:
    """Remove the images and wheel sets of other keys that no run used for
    :data:`UNUSED_S` (inputs changed long ago; a branch still using one keeps it)."""
    now = time.time()
    for entry in [*cache.glob(f"rootfs-{SUITE}-*"), *cache.glob("wheels-*")]:
        if entry.name in keep or not entry.is_dir():
            continue
        stamp = entry / COMPLETE if entry.name.startswith("rootfs-") else entry
        try:
            idle_s = now - stamp.stat().st_mtime
        except OSError:
            idle_s = now - entry.stat().st_mtime  # a crashed build
        if idle_s > UNUSED_S:
            log(f"cache: removing {entry}, unused for {idle_s / 86400:.0f} days")
            shutil.rmtree(entry, ignore_errors=True)


def marker_environment(root: Path, log: Log) -> dict[str, str]:
    """The PEP 508 marker environment of the image's ``python3`` (its pip vendors
    ``packaging``): what decides which dependencies pip installs there."""
    script = ("python3 -c 'import json; from pip._vendor.packaging.markers import "
              "default_environment as e; print(json.dumps(e()))' > /tmp/markers.json")
    _chroot(root, script, log, timeout_s=120)
    path = root / "tmp/markers.json"
    try:
        return dict(json.loads(path.read_text()))
    finally:
        path.unlink()


def fresh_copy(image: Path, target: Path, log: Log, *, hostname: str) -> None:
    """Copy the image to ``target`` (reflinks where the file system has them), with a
    machine ID and host name of its own, so runs share nothing."""
    started = time.monotonic()
    _run(["cp", "-a", "--reflink=auto", str(image), str(target)], log, timeout_s=600)
    (target / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    # debootstrap copied the build host's names.
    (target / "etc/hostname").write_text(hostname + "\n")
    (target / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n"
                                      "::1 localhost ip6-localhost ip6-loopback\n")
    log(f"image: copied to {target} in {time.monotonic() - started:.0f} s")
