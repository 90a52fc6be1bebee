"""Lacewing's built-in sample application and load client (`lacewing sample-app serve|load`).

Local-mode pods run the sample app instead of container images; tests and `lacewing demo`
drive it with the load client. The parts, from policy to I/O:

- `units`     — durations, fractions, rates and status codes from flag and header text
- `identity`  — who the server says it is (flags, else the POD_* / NODE_NAME environment)
- `behaviour` — sans-IO: what to do with one request (answer, fail, delay, drop) and the JSON
- `server`    — the threaded HTTP/1.1 server that carries a plan out, with a graceful stop
- `report`    — counting the load client's outcomes; the stable JSON report
- `load`      — the load client's threads and connections (`run_load`)

The command line (`lacewing/commands/sample_app.py`) is a thin layer over these.
"""

from lacewing.sample_app.behaviour import Behaviour
from lacewing.sample_app.identity import Identity, resolve_identity
from lacewing.sample_app.load import run_load
from lacewing.sample_app.report import LoadReport
from lacewing.sample_app.server import SampleServer

__all__ = ["Behaviour", "Identity", "LoadReport", "SampleServer", "resolve_identity", "run_load"]
