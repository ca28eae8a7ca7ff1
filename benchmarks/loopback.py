"""Network safety for the benchmarks, applied by importing this module BEFORE ray: no usage stats, a
loopback-only local cluster, and a dead proxy for everything that is not loopback (Ray's dashboard agent
probes cloud metadata addresses otherwise)."""

from __future__ import annotations

import os

_LOOPBACK = "127.0.0.1,localhost,127.0.0.0/8,::1"
for _name, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
                      ("AWS_EC2_METADATA_DISABLED", "true"),
                      ("HTTP_PROXY", "http://127.0.0.1:9"), ("HTTPS_PROXY", "http://127.0.0.1:9"),
                      ("http_proxy", "http://127.0.0.1:9"), ("https_proxy", "http://127.0.0.1:9"),
                      ("NO_PROXY", _LOOPBACK), ("no_proxy", _LOOPBACK)):
    os.environ[_name] = _value
