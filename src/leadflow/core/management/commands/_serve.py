"""Serving LeadFlow's WSGI app with gunicorn, from inside a management command."""

from __future__ import annotations

import os

from gunicorn.app.base import BaseApplication


class LeadFlowServer(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        from leadflow.wsgi import application

        return application


def serve(*, host: str, port: int, workers: int, threads: int) -> None:
    LeadFlowServer({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": "-" if os.environ.get("LEADFLOW_ACCESS_LOG") else None,
        "errorlog": "-",
        "loglevel": os.environ.get("LEADFLOW_LOG_LEVEL", "info").lower(),
        "proc_name": "leadflow-web",
        "limit_request_line": 8190,
    }).run()


def add_server_arguments(parser) -> None:
    parser.add_argument("--host", default=os.environ.get("LEADFLOW_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; LEADFLOW_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LEADFLOW_PORT", "8000")),
                        help="port to listen on (default 8000; LEADFLOW_PORT)")
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("LEADFLOW_WEB_WORKERS", str(min(4, (os.cpu_count() or 1) + 1)))),
                        help="web worker processes (default: cores + 1, at most 4)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LEADFLOW_WEB_THREADS", "4")),
                        help="threads per web worker (default 4)")
