"""The server's settings: from the CLI, a job spec's [serve] table, or the environment of a worker."""

from __future__ import annotations

import base64
import os
import pickle
from dataclasses import dataclass

from ..errors import ConfigError
from ..runtime import PipelineRecipe

CONFIG_ENV = "LAKEINFER_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """The server's own options; the model and its pipeline are the embedded ``recipe``."""

    recipe: PipelineRecipe
    name: str | None = None
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
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = os.path.splitext(os.path.basename(self.recipe.model_path.rstrip("/")))[0] or "model"
        for key in ("workers", "max_batch_size", "max_queue", "max_body_bytes"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 1:
                raise ConfigError(f"serve: {key} must be at least 1, not {getattr(self, key)}")
        if self.grpc_port is not None:
            if not 0 < int(self.grpc_port) < 65536:
                raise ConfigError(f"serve: grpc_port must be a port number (1-65535), not {self.grpc_port}")
            if int(self.grpc_port) == int(self.port):
                raise ConfigError(f"serve: grpc_port and port are both {self.port}; gRPC needs a port of its own")
        if self.timeout_ms <= 0 or self.max_wait_ms < 0:
            raise ConfigError("serve: timeout_ms must be positive and max_wait_ms not negative")

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
