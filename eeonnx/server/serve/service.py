"""Start the service: scan the paths, start (or join) Ray, run the Serve application over HTTP.

Binds 127.0.0.1 unless told otherwise; every path is checked (catalog.scan)
before Ray starts, so a directory with client files never gets served.
"""
from __future__ import annotations

import logging

from eeonnx.server.serve.app import APP_NAME, Options, build
from eeonnx.server.serve.catalog import scan

log = logging.getLogger("eeonnx.serve")


def start(paths, *, host: str = "127.0.0.1", port: int = 8000, options: Options | None = None,
          address: str | None = None, num_cpus: int | None = None) -> dict:
    """Start serving ``paths``; returns the catalog (artifact id -> Entry). Ray stays up until
    ``stop()``. ``address``: an existing Ray cluster ("auto", "ray://host:10001"); None starts a
    local one."""
    import ray
    from ray import serve

    entries = scan(paths)
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kw)
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(build(entries, options), name=APP_NAME, route_prefix="/")
    return entries


def stop(timeout_s: float = 60.0) -> None:
    """Shut the Serve application and Ray down; a Serve shutdown that hangs (its processes already
    killed) is abandoned after ``timeout_s`` and Ray is shut down anyway."""
    import threading

    import ray
    from ray import serve

    t = threading.Thread(target=serve.shutdown, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("serve.shutdown did not finish in %.0f s; shutting Ray down", timeout_s)
    ray.shutdown()


def serve_forever(paths, *, host: str, port: int, options: Options, address: str | None = None,
                  echo=print) -> None:
    """``eeonnx serve``: start, list what is served, block until interrupted, stop."""
    import signal
    import time

    def interrupt(*_):
        raise KeyboardInterrupt

    entries = start(paths, host=host, port=port, options=options, address=address)
    signal.signal(signal.SIGTERM, interrupt)  # after ray.init, which installs its own: a plain kill stops Ray too
    echo(f"serving {len(entries)} model(s) at http://{host}:{port}/v2 "
         f"({options.replicas} replica(s), up to {options.max_sessions} sessions each, TTL {options.session_ttl:g} s)")
    for aid, e in entries.items():
        echo(f"  {aid}  {e.path}{f'  ({len(e.state)} state tensors)' if e.state else ''}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        echo("stopping")
    finally:
        stop()
