"""The VM test runs only when asked (``PRICEPIPE_VM_TEST=1``, as the VM stage
of ``.ci/run`` does): it needs root, ``debootstrap`` and ``systemd-nspawn``,
and takes minutes. Otherwise every test marked ``vm`` is skipped, saying how
to run it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator

import pytest

ENABLE = "PRICEPIPE_VM_TEST"
#: Host commands the test drives (Debian packages in brackets for the message).
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
         "nsenter": "util-linux", "unshare": "util-linux", "git": "git"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE) == "1":
        return
    skip = pytest.mark.skip(reason=f"boots a Debian machine for minutes, as root: {ENABLE}=1 "
                                   "runs it (deploy/README.md, 'The VM test')")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vm_host() -> None:
    """Fail (not skip: the test was asked for) when the host cannot run it."""
    if os.geteuid() != 0:
        pytest.fail("the VM test needs root (debootstrap, chroot, systemd-nspawn)")
    missing = [f"{tool} (apt-get install {package})" for tool, package in TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        pytest.fail("missing on this host: " + ", ".join(missing))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures know whether the test passed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
