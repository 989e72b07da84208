"""Log lines carry their syslog priority when stderr is the journal, so that
``journalctl -p warning`` shows a unit's warnings (found by the VM test)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pricepipe.logs import JournalPrefix, stderr_is_journal

SCRIPT = """
import logging
from pricepipe.logs import setup_logging
setup_logging("DEBUG", json={json})
log = logging.getLogger("pricepipe.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
"""


def _run(tmp_path: Path, *, journal: bool, json: bool) -> list[str]:
    out = tmp_path / f"stderr-{journal}-{json}.log"
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    with out.open("wb") as stderr:
        if journal:  # as systemd sets it: the device and inode of the unit's stderr
            status = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT.format(json=json)], env=env,
                       stderr=stderr, check=True, timeout=60)
    return out.read_text().splitlines()


def test_lines_are_prefixed_with_their_priority_only_on_the_journal(tmp_path: Path) -> None:
    for json in (False, True):
        lines = _run(tmp_path, journal=True, json=json)
        prefixes = [line[:3] for line in lines]
        assert prefixes[:4] == ["<7>", "<6>", "<4>", "<3>"], lines
        # A traceback's every line keeps the error's priority.
        assert all(p == "<3>" for p in prefixes[4:]) and len(prefixes) > (5 if not json else 4)
        plain = _run(tmp_path, journal=False, json=json)
        assert not any(line.startswith("<") for line in plain), plain


def test_journal_detection_and_custom_levels(tmp_path: Path) -> None:
    assert not stderr_is_journal({})
    assert not stderr_is_journal({"JOURNAL_STREAM": "not:numbers"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "1:2"})
    record = logging.LogRecord("x", 25, __file__, 1, "between info and warning", None, None)
    assert JournalPrefix(logging.Formatter("%(message)s")).format(record) == \
        "<6>between info and warning"
