"""The server's settings: from the CLI, a job spec's [serve] table, or the environment of a worker."""

from __future__ import annotations

import base64
import os
import pickle
import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..runtime import PipelineRecipe

CONFIG_ENV = "LAKEINFER_SERVE_CONFIG"
# the longest a caller refused with 503 is asked to wait (Retry-After), within half the timeout
RETRY_SECONDS = 1.0
# a model's name is a URL path segment: letters, digits, '_', '-', '.', not starting with a dot
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def default_name(path: str) -> str:
    """A model's name from its file: ``models/rf.onnx`` is ``rf``."""
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "model"


@dataclass
class ModelConfig:
    """One served model: its name in URLs, its pipeline, and its batcher's settings (None: the server's)."""

    name: str
    recipe: PipelineRecipe
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    max_queue: int | None = None


@dataclass
class ServeConfig:
    """The server's own options and its ``models``; ``recipe`` (with ``name``) is the one-model shorthand."""

    recipe: PipelineRecipe | None = None
    name: str | None = None
    models: list[ModelConfig] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = None
    workers: int | None = None  # None: as the batch engine chooses for the flavor (see default_workers)
    max_batch_size: int = 256
    max_wait_ms: float = 2.0
    max_queue: int = 256
    timeout_ms: float = 30_000.0
    max_body_bytes: int = 16 << 20
    api_key_env: str | None = None
    access_log: bool = False
    # fast model calls on the event loop even under load (dataplane.INLINE_CALL_SECONDS): a Ray
    # Serve replica's one core is shared with Ray's own threads, and hand-offs to a model thread
    # cost it a third of its answers (bench/serve_ray.py)
    inline_calls: bool = False
    state_dir: str | None = None
    ledger: str | None = None  # the prediction ledger's table (iceberg:NS.TABLE or delta:PATH); see docs/ledger.md
    ledger_wal: str | None = None  # where its rows wait to be shipped (default .lakeinfer-ledger/<table>)
    ledger_interval: float = 5.0  # seconds between the ledger's commits
    ledger_fsync: bool = False  # a 200 waits for fdatasync of its WAL rows too (survives a power cut)
    catalog: str | None = None  # the pyiceberg catalog of an iceberg: ledger (default: default)

    def __post_init__(self) -> None:
        if self.recipe is not None:
            if self.models:
                raise ConfigError("serve: give one model (recipe) or several (models), not both")
            self.models = [ModelConfig(self.name or default_name(self.recipe.model_path), self.recipe)]
        elif self.name and len(self.models) > 1:
            raise ConfigError("serve: name is for a server of one model; several models are named each")
        if not self.models:
            raise ConfigError("serve needs a model")
        for key in ("workers", "max_batch_size", "max_queue", "max_body_bytes"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 1:
                raise ConfigError(f"serve: {key} must be at least 1, not {getattr(self, key)}")
        seen: set[str] = set()
        for model in self.models:
            if not MODEL_NAME.fullmatch(model.name):
                raise ConfigError(f"serve: model name {model.name!r} is not a URL path segment "
                                  "(letters, digits, '_', '-', '.')")
            if model.name in seen:
                raise ConfigError(f"serve: two models are named {model.name!r}; each needs a name of its own")
            seen.add(model.name)
            # a model's own batcher settings, else the server's
            for key in ("max_batch_size", "max_wait_ms", "max_queue"):
                if getattr(model, key) is None:
                    setattr(model, key, getattr(self, key))
            assert model.max_batch_size is not None and model.max_queue is not None and model.max_wait_ms is not None
            if model.max_batch_size < 1 or model.max_queue < 1 or model.max_wait_ms < 0:
                raise ConfigError(f"serve: model {model.name!r}: max_batch_size and max_queue must be at least 1, "
                                  "max_wait_ms not negative")
        if len(self.models) == 1:
            self.name = self.models[0].name
        if self.grpc_port is not None:
            if not 0 < int(self.grpc_port) < 65536:
                raise ConfigError(f"serve: grpc_port must be a port number (1-65535), not {self.grpc_port}")
            if int(self.grpc_port) == int(self.port):
                raise ConfigError(f"serve: grpc_port and port are both {self.port}; gRPC needs a port of its own")
        if self.timeout_ms <= 0 or self.max_wait_ms < 0:
            raise ConfigError("serve: timeout_ms must be positive and max_wait_ms not negative")

    @property
    def retry_s(self) -> float:
        """The retry window of a refusal: a caller that comes back sooner waits in line up to it."""
        return min(RETRY_SECONDS, self.timeout_ms / 2000.0)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env names {self.api_key_env}, which is not set")
        return key

    def to_env(self) -> str:
        # the recipe may hold Transformer objects: pickled for this server's own worker processes
        return base64.b64encode(pickle.dumps(self)).decode()

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise ConfigError(f"{CONFIG_ENV} is not set; start the server with `lakeinfer serve`")
        config = pickle.loads(base64.b64decode(raw))  # written by this server's parent process
        if not isinstance(config, cls):
            raise ConfigError(f"{CONFIG_ENV} does not hold a server configuration")
        return config
