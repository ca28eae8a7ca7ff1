"""Network safety for the examples run as scripts: Ray on 127.0.0.1, no usage report, HTTP kept on loopback.
Called before Ray or odibi_ray is imported (environment variables are read at import and start-up)."""

from __future__ import annotations

import os


def keep_on_loopback() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to the internet
    os.environ.setdefault("RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/")  # nor that it is disabled
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1
    for var in ("HTTP_PROXY", "HTTPS_PROXY"):  # Ray's dashboard probes cloud metadata: keep HTTP on loopback
        os.environ.setdefault(var, "http://127.0.0.1:9")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,127.0.0.0/8,::1")
