"""Scan the services' captured logs: no API key, upstream key, token or prompt text.

Used by the fault suite and the fuzz suite at the end of their runs, over every log
directory their stacks wrote (`<service>.log`, JSON lines). The fake provider's own
logs are not the gateway's and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Gateway keys look like gw-<urlsafe>; a leaked one would match even if the test did
# not create it itself.
GATEWAY_KEY = re.compile(r"gw-[A-Za-z0-9_\-]{20,}")
BEARER = re.compile(r"Bearer\s+[A-Za-z0-9._\-]{8,}")


@dataclass(slots=True)
class LogScan:
    files: int = 0
    lines: int = 0
    leaks: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.files > 0, "no service log was found to scan"
        assert not self.leaks, "secrets or prompt text in logs:\n  " + "\n  ".join(self.leaks[:20])


def scan_logs(
    dirs: Iterable[Path], *, secrets: Iterable[str], prompt_markers: Iterable[str]
) -> LogScan:
    needles = [s for s in {*secrets, *prompt_markers} if s and len(s) >= 6]
    scan = LogScan()
    for directory in dirs:
        for path in sorted(directory.glob("*.log")):
            if path.name.startswith("fake"):
                continue
            scan.files += 1
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                scan.lines += 1
                where = f"{path.name}:{number}"
                for needle in needles:
                    if needle in line:
                        scan.leaks.append(f"{where}: contains {needle[:12]}…")
                if GATEWAY_KEY.search(line):
                    scan.leaks.append(f"{where}: a gateway API key")
                if BEARER.search(line):
                    scan.leaks.append(f"{where}: a bearer token")
    return scan
