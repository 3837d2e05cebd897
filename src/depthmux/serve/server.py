"""``depthmux serve``: options, loading the models, running uvicorn (SPEC 5b).

::

    cfg = ServeConfig(model="smollm2", classifiers={"sst2-n2": "runs/mux/n2/best"}, port=8000)
    run_server(cfg)            # blocks; or build_serving(cfg) -> Serving for another host

Everything a user gives is checked before any model loads: the host is loopback unless asked
otherwise, the port and limits are in range, classifier names are unique and their folders exist.
"""

from __future__ import annotations

import gc
import socket
from dataclasses import dataclass, field
from pathlib import Path

from depthmux.errors import DepthmuxError, require
from depthmux.serve.early_exit import AsyncEarlyExitLLM, early_exit_policy
from depthmux.serve.handlers import ServedClassifier, Serving
from depthmux.serve.http import DEFAULT_MAX_BODY_BYTES, build_app
from depthmux.utils.checks import check_device, check_float, check_int

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Options of ``depthmux serve``.

    Attributes:
        model: "smollm2", a model folder, a run or checkpoint folder (anything ``AsyncLLM.from_pretrained``
            loads), or None for a classification-only server.
        model_name: the name clients use for it (default: ``model`` as given, a folder's name).
        classifiers: name -> RevMUX (or teacher) checkpoint folder.
        host, port: where to listen (loopback unless ``allow_remote``).
        max_queued: waiting generation requests / classification inputs per classifier before 503.
        max_batch: most classification inputs per forward; max_wait_ms: how long an input waits for
            its group of N to fill.
        max_num_seqs: generation requests the engine runs at once.
        engine_kwargs: further keyword arguments of ``AsyncLLM`` (e.g. ``kv_budget_bytes``).
        exit_threshold: an early-exit ``model`` decodes with FREE's exit at this threshold in [0, 1].
        speculative: ... or self-speculatively with this many draft tokens K >= 1 (the output is deep
            greedy's); neither: an early-exit model is served as its deep model.
        max_body_bytes: larger request bodies get 413.
        device: where the models run.
    """

    model: str | None = None
    model_name: str | None = None
    classifiers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    max_queued: int = 256
    max_batch: int = 64
    max_wait_ms: float = 10.0
    max_num_seqs: int = 64
    engine_kwargs: dict = field(default_factory=dict)
    exit_threshold: float | None = None
    speculative: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_remote: bool = False
    device: str = "cpu"

    def validate(self) -> ServeConfig:
        require(
            self.model is not None or self.classifiers,
            "nothing to serve: give --model (a language model) and/or --classifier NAME=DIR",
        )
        require(
            self.allow_remote or self.host in LOOPBACK,
            f"--host {self.host} is not loopback: the server has no authentication; pass --allow-remote to do it",
        )
        check_int("--port", self.port, 1)
        require(self.port <= 65535, f"--port must be <= 65535, got {self.port}")
        check_int("--max-queued", self.max_queued, 1)
        check_int("--max-batch", self.max_batch, 1)
        check_float("--max-wait-ms", self.max_wait_ms, 0.0, 60_000.0)
        check_int("--max-num-seqs", self.max_num_seqs, 1)
        check_int("--max-body-bytes", self.max_body_bytes, 1024)
        check_device("--device", self.device)
        for name, folder in self.classifiers.items():
            require(name.strip() and name == name.strip(), f"--classifier name {name!r} must be a non-blank word")
            require(Path(folder).is_dir(), f"--classifier {name}={folder}: no such folder")
        early_exit_policy(self.model, self.exit_threshold, self.speculative)
        names = [*self.classifiers, self.served_model_name] if self.model is not None else list(self.classifiers)
        require(len(set(names)) == len(names), f"model names repeat: {names}")
        return self

    @property
    def served_model_name(self) -> str | None:
        if self.model is None:
            return None
        return self.model_name or (Path(self.model).name if Path(self.model).is_dir() else self.model)


def parse_classifiers(values: list[str]) -> dict[str, str]:
    """``["a=runs/x", "b=runs/y"]`` -> ``{"a": "runs/x", "b": "runs/y"}``; one line for a bad item."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        require(sep == "=" and name.strip() and folder.strip(), f"--classifier takes NAME=DIR, got {v!r}")
        require(name.strip() not in out, f"--classifier name {name.strip()!r} given twice")
        out[name.strip()] = folder.strip()
    return out


def check_port(host: str, port: int) -> None:
    """One line if ``host:port`` cannot be bound (taken, or not an address of this machine), before loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise DepthmuxError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def build_serving(cfg: ServeConfig) -> Serving:
    """Load every model of ``cfg`` (validated first) into a :class:`Serving`."""
    cfg.validate()
    from depthmux.multiplexing import load_classifier

    classifiers = {}
    for name, folder in cfg.classifiers.items():
        model = load_classifier(folder).place(cfg.device)
        model.eval()
        classifiers[name] = ServedClassifier(name, model)
    llm = None
    if cfg.model is not None:
        from depthmux.engine import AsyncLLM

        policy = early_exit_policy(cfg.model, cfg.exit_threshold, cfg.speculative)
        kwargs = {"device": cfg.device, "max_num_seqs": cfg.max_num_seqs, **cfg.engine_kwargs}
        if policy is None:
            llm = AsyncLLM.from_pretrained(cfg.model, **kwargs)
        else:
            llm = AsyncEarlyExitLLM.from_pretrained(cfg.model, policy=policy, **kwargs)
    return Serving(
        llm,
        cfg.served_model_name,
        classifiers,
        max_queued=cfg.max_queued,
        max_running=cfg.max_num_seqs,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
    )


def run_server(cfg: ServeConfig, on_ready=None) -> None:
    """Load the models, then serve until interrupted (uvicorn; one worker: the models live in this process)."""
    import uvicorn

    cfg.validate()
    check_port(cfg.host, cfg.port)
    serving = build_serving(cfg)
    app = build_app(serving, cfg.max_body_bytes)
    # the models' objects live as long as the server: keep the garbage collector from scanning them again
    # and again under load (a full collection walks every object of torch/transformers)
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(serving)
    server.run()
