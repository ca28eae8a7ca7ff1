"""What the multi-node CLI tests share: whether this machine can make loopback-only namespaces, reading a
script's RESULT line, and finding leftover processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


def namespace_unavailable(not_root_reason: str) -> str | None:
    """Why these tests cannot run here (not root, no unshare/ip, namespaces refused), or None."""
    if os.geteuid() != 0:
        return not_root_reason
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (util-linux / iproute2), not found on PATH"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"this kernel/container refuses new namespaces: {probe.stderr.strip()[:200]}"
    return None


def processes_mentioning(text: str) -> list[str]:
    """Processes (other than this one) whose command line contains ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline[:120]}")
    return found


def script_result(proc: subprocess.CompletedProcess, stdout_tail: int = 3000) -> dict:
    """The JSON of a script's single ``RESULT {...}`` line; fails the test with its output otherwise."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, \
        f"script failed (exit {proc.returncode}):\n{proc.stdout[-stdout_tail:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[0][len("RESULT "):])
