"""The ``lakeinfer`` command line. Every user error ends in one readable line and exit code 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import split as split_command
from ._inspect_text import print_inspect
from ._pipes import broken_pipe, stdout_closed
from ._served_models import named_model, served_models
from ._version import __version__
from .engines import ENGINES
from .errors import LakeinferError
from .job import DEFAULT_BATCH_SIZE
from .pipeline import ON_ERROR

if TYPE_CHECKING:
    from .runtime import PipelineRecipe
    from .serve.config import ServeConfig
    from .spec import JobSpec


def _columns(value: str) -> list[str]:
    names = [c.strip() for c in value.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return names


def _key_value(value: str) -> tuple[str, str]:
    key, sep, setting = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not '{value}'")
    return key, setting


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _model_options(parser: argparse.ArgumentParser, *, required: bool, several: bool = False) -> None:
    if several:
        parser.add_argument("--model", action="append", metavar="[NAME=]PATH",
                            help="model file or directory; NAME=PATH, repeated, serves several models by name")
    else:
        parser.add_argument("--model", required=required, help="model file or directory")
    parser.add_argument("--flavor", help="override flavor detection (onnx, sklearn, skops, xgboost, "
                        "lightgbm, torchscript, torch_export, mlflow)")
    parser.add_argument("--features", type=_columns, help="input columns, in the model's order (comma list)")
    parser.add_argument("--signature", help="a TensorFlow SavedModel's signature (default serving_default)")
    parser.add_argument("--trust-model", action="store_true", default=None,
                        help="allow formats that run code when loaded (pickle, MLflow)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakeinfer", description="Score a data lake, serve an endpoint and feed a Kafka stream with the same "
        "trained model.", epilog="Run 'lakeinfer COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"lakeinfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    batch = commands.add_parser("batch", help="score a data set into Parquet")
    _model_options(batch, required=False)
    batch.add_argument("--input", help="file, folder or glob; local path or s3:// "
                       "(--engine spark reads s3:// as s3a://, which needs hadoop-aws); "
                       "or a table: iceberg:NAMESPACE.TABLE, delta:PATH")
    batch.add_argument("--output", help="output folder for the Parquet parts, or a table (iceberg:NAMESPACE.TABLE, "
                       "delta:PATH) that gets the predictions in one commit")
    batch.add_argument("--input-format", choices=("parquet", "csv", "jsonl"))
    # "extend": a repeated --keep adds its columns to the earlier ones instead of replacing them
    batch.add_argument("--keep", action="extend", type=_columns,
                       help="input columns (ids) to copy beside the predictions (comma list, repeatable)")
    batch.add_argument("--workers", type=_positive, help="worker processes, each loading the model once (default: one per core; one using every core for ONNX, PyTorch, XGBoost, LightGBM)")
    batch.add_argument("--batch-size", type=_positive, help=f"rows per model call (default {DEFAULT_BATCH_SIZE})")
    batch.add_argument("--on-error", choices=ON_ERROR, help="rows with a null feature: fail (default), skip, null")
    batch.add_argument("--engine", choices=tuple(ENGINES), help="execution engine (default local)")
    batch.add_argument("--ray-address", help="--engine ray: the cluster to join (the GCS address `ray start --head` "
                       "prints); default RAY_ADDRESS, else a private local Ray started for the job")
    batch.add_argument("--master", help="Spark master for --engine spark: local[N], spark://HOST:PORT, yarn, k8s://...")
    batch.add_argument("--remote", help="--engine spark on a Spark Connect server: sc://HOST:PORT (default: $SPARK_REMOTE)")
    batch.add_argument("--model-path-on-cluster", help="--engine spark: where every executor reads the same model "
                       "(e.g. a Databricks volume), instead of shipping it with the job")
    batch.add_argument("--spark-io", choices=("auto", "arrow", "spark"),
                       help="--engine spark: who reads and writes the rows: arrow (pyarrow in the Python workers, a "
                       "task per unit), spark (Spark's reader and writer); default auto: arrow for files in and a "
                       "folder out")
    batch.add_argument("--spark-conf", action="append", type=_key_value, metavar="KEY=VALUE",
                       help="a Spark setting for --engine spark (repeatable)")
    batch.add_argument("--partition-by", type=_columns, help="--engine spark: partition the output by these columns")
    batch.add_argument("--catalog", help="the pyiceberg catalog of iceberg: tables (default: default)")
    batch.add_argument("--where", help="an Iceberg input's row filter, e.g. \"region = 'eu' and day >= 20\"")
    batch.add_argument("--snapshot", help="read this snapshot id of an Iceberg input (a version of a Delta input)")
    batch.add_argument("--incremental", action="store_true", default=None,
                       help="score only the input rows appended since the last run recorded in the output table")
    batch.add_argument("--full", action="store_true", default=None,
                       help="score the whole input table and replace the output table's rows")
    batch.add_argument("--staging", help="table outputs: where parts wait for the commit (default: .lakeinfer-staging "
                       "here for Iceberg, a hidden folder beside a Delta table)")
    batch.add_argument("--spec", help="job spec file (TOML or YAML); options given here win")
    batch.add_argument("--overwrite", action="store_true", default=None, help="replace what the output folder holds")
    batch.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")

    serve = commands.add_parser("serve", help="serve the model over HTTP and gRPC (Open Inference Protocol v2)")
    _model_options(serve, required=False, several=True)
    serve.add_argument("--name", help="the model's name in URLs (default: the model file's name; "
                       "several models: each --model NAME=PATH)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--grpc-port", type=int,
                       help="also serve the v2 protocol over gRPC on this port (default: REST only)")
    serve.add_argument("--workers", type=_positive, help="worker processes, each loading the model once (default: "
                       "one per core; one using every core for ONNX, PyTorch, XGBoost, LightGBM)")
    serve.add_argument("--max-batch-size", type=_positive, help="rows per model call (default 256)")
    serve.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill under load (default 2)")
    serve.add_argument("--max-queue", type=_positive, help="waiting requests before 503 (default 256)")
    serve.add_argument("--timeout-ms", type=float, help="per-request timeout, answered 504 (default 30000)")
    serve.add_argument("--max-body-bytes", type=_positive, help="largest request body, else 413 (default 16 MiB)")
    serve.add_argument("--api-key-env", help="environment variable holding the API key clients must send")
    serve.add_argument("--engine", choices=("local", "ray"),
                       help="local (default: uvicorn worker processes) or ray (Ray Serve replicas behind its proxy)")
    serve.add_argument("--replicas", type=_positive, help="--engine ray: Ray Serve replicas (default 1)")
    serve.add_argument("--min-replicas", type=_positive, help="--engine ray: autoscale from this many replicas")
    serve.add_argument("--max-replicas", type=_positive, help="--engine ray: autoscale up to this many replicas")
    serve.add_argument("--ray-address", help="--engine ray: the cluster to join (default RAY_ADDRESS, else a "
                       "private local Ray)")
    serve.add_argument("--access-log", action="store_true", default=None,
                       help="log a line per request to stdout (uvicorn's access log; default off)")
    _ledger_options(serve, "served")
    serve.add_argument("--spec", help="job spec file (TOML or YAML) with [model], [pipeline] and [serve], "
                       "or [[serve.models]] for several models")

    stream = commands.add_parser("stream", help="score a Kafka topic into another, continuously")
    _model_options(stream, required=False)
    stream.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]")
    stream.add_argument("--input-topic", help="topic of JSON records to score")
    stream.add_argument("--output-topic", help="topic for the predictions (JSON, the input's key)")
    stream.add_argument("--group-id", help="consumer group (default lakeinfer)")
    stream.add_argument("--dead-letter-topic", help="topic for messages that cannot be scored, with the reason")
    stream.add_argument("--exactly-once", action="store_true", default=None,
                        help="outputs and offsets in one Kafka transaction (default: at-least-once)")
    stream.add_argument("--transactional-id", help="--exactly-once: the producer's id (distinct per process of a group)")
    stream.add_argument("--keep", action="extend", type=_columns,
                        help="input fields copied into each prediction (comma list, repeatable)")
    stream.add_argument("--max-batch-size", type=_positive, help="messages per model call (default 10000)")
    stream.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill (default 10)")
    stream.add_argument("--commit-interval-ms", type=float,
                        help="while catching up a backlog, one commit per this many ms (default 100); "
                             "at its end, one per batch")
    stream.add_argument("--metrics-interval", type=float, help="seconds between metrics log lines (default 10)")
    stream.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (default: none)")
    stream.add_argument("--max-poll-interval-ms", type=_positive,
                        help="the consumer's max.poll.interval.ms (default 300000); a slow model never overruns it")
    stream.add_argument("--engine", choices=("local", "spark"), help="local (default) or spark (Structured Streaming)")
    stream.add_argument("--master", help="--engine spark: the Spark master (default local[*])")
    stream.add_argument("--remote", help="--engine spark on a Spark Connect server: sc://HOST:PORT (default: $SPARK_REMOTE)")
    stream.add_argument("--checkpoint", help="--engine spark: checkpoint location (required there)")
    stream.add_argument("--trigger", help="--engine spark: processing-time trigger, e.g. '5 seconds' (default: as fast as possible)")
    _ledger_options(stream, "streamed")
    stream.add_argument("--spec", help="job spec file with [model], [pipeline] and [stream]")

    inspect = commands.add_parser("inspect", help="print a model's flavor and signature")
    _model_options(inspect, required=True)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    split_command.add_parser(commands)

    replay = commands.add_parser("replay", help="re-score a prediction ledger's inputs and compare the outputs")
    replay.add_argument("--ledger", required=True, help="the ledger table: iceberg:NS.TABLE or delta:PATH")
    _model_options(replay, required=True)
    replay.add_argument("--where", help="only the ledger rows this filter selects (e.g. \"model = 'rf'\")")
    replay.add_argument("--snapshot", help="the ledger as of this Iceberg snapshot id or Delta version")
    replay.add_argument("--output", help="write every row's logged and new outputs here (folder or table)")
    replay.add_argument("--engine", choices=("local",), default="local", help="batch engine (default local)")
    replay.add_argument("--catalog", help="the pyiceberg catalog of an iceberg: ledger (default: default)")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _ledger_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ledger", help=f"log every {what} prediction to this table, exactly once: "
                        "iceberg:NS.TABLE or delta:PATH (see docs/ledger.md)")
    parser.add_argument("--ledger-interval", type=float, help="seconds between ledger commits (default 5)")
    parser.add_argument("--ledger-wal", help="folder where ledger rows wait for their commit "
                        "(default .lakeinfer-ledger/<table> here)")
    parser.add_argument("--ledger-fsync", action="store_true", default=None,
                        help="also wait for fdatasync of the WAL before answering (rows survive a power cut, "
                        "not only a kill; slower)")
    parser.add_argument("--catalog", help="the pyiceberg catalog of an iceberg: ledger (default: default)")


def _ledger_values(args: argparse.Namespace) -> dict[str, Any]:
    return {"ledger": args.ledger, "ledger_interval": args.ledger_interval, "ledger_wal": args.ledger_wal,
            "ledger_fsync": args.ledger_fsync, "catalog": args.catalog}


def _run(args: argparse.Namespace) -> int:
    from . import _api

    if args.command == "inspect":
        info = _api.inspect_model(args.model, flavor=args.flavor, trust=bool(args.trust_model),
                                  features=args.features, signature=args.signature)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            print_inspect(info)
        return 0
    if args.command == "replay":
        from .ledger.replay import replay
        from .spec import JobSpec

        recipe = _recipe(JobSpec(), args, on_error="fail")
        result = replay(args.ledger, recipe, catalog=args.catalog, where=args.where, snapshot=args.snapshot,
                        output=args.output)
        print(json.dumps(result.to_dict(), default=str) if args.json else result.line())
        return 0
    if args.command == "split":
        return split_command.run(args)
    if args.command == "stream":
        return _stream(args)
    if args.command == "serve":
        config, hosting = _serve_config(args)
        if hosting.pop("engine", "local") == "ray":
            if config.ledger is not None:
                from .errors import ConfigError

                raise ConfigError("--ledger is for --engine local (its committer runs in the server's main process)")
            from .ray.serving import run_serve

            run_serve(config, replicas=hosting.pop("replicas", 1), address=hosting.pop("ray_address", None),
                      min_replicas=hosting.pop("min_replicas", None), max_replicas=hosting.pop("max_replicas", None))
            return 0
        if hosting:
            from .errors import ConfigError

            raise ConfigError(f"--{sorted(hosting)[0].replace('_', '-')} is for --engine ray")
        from .serve.server import run

        run(config)
        return 0
    summary = _api.batch(
        args.input, args.output, model=args.model, flavor=args.flavor, trust=args.trust_model,
        features=args.features, keep=args.keep, workers=args.workers, batch_size=args.batch_size,
        input_format=args.input_format, on_error=args.on_error, overwrite=args.overwrite,
        spec=args.spec, engine=args.engine, progress=not args.quiet, ray_address=args.ray_address, master=args.master, remote=args.remote,
        model_path_on_cluster=args.model_path_on_cluster, spark_io=args.spark_io,
        spark_conf=dict(args.spark_conf or []), partition_by=args.partition_by, catalog=args.catalog,
        where=args.where, snapshot=args.snapshot, incremental=args.incremental, full=args.full,
        staging=args.staging, signature=args.signature,
    )
    if args.json:
        print(json.dumps(summary.to_dict()))
    elif not args.quiet:
        print(summary.line())
    return 0


def _spec(args: argparse.Namespace) -> JobSpec:
    from .spec import JobSpec, load_spec

    return load_spec(args.spec) if args.spec else JobSpec()


def _recipe(job: JobSpec, args: argparse.Namespace, *, on_error: str) -> PipelineRecipe:
    """The recipe from the spec's [model] and [pipeline], the command line winning."""
    from .errors import ConfigError

    if not args.model and job.model.path is None:
        raise ConfigError(f"{args.command} needs a model (--model or [model] path in the spec)")
    return job.recipe(path=args.model, flavor=args.flavor, trust=args.trust_model, features=args.features,
                      signature=args.signature, on_error=on_error)


def _serve_config(args: argparse.Namespace) -> tuple[ServeConfig, dict[str, Any]]:
    """The server's configuration, and where it runs (the engine and its options)."""
    from ._spec_schema import dump, merged
    from .errors import ConfigError
    from .serve.config import ServeConfig

    job = _spec(args)
    cli = {"name": args.name, "host": args.host, "port": args.port, "grpc_port": args.grpc_port,
           "workers": args.workers,
           "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue,
           "timeout_ms": args.timeout_ms, "max_body_bytes": args.max_body_bytes, "api_key_env": args.api_key_env,
           "access_log": args.access_log, "engine": args.engine, "replicas": args.replicas,
           "min_replicas": args.min_replicas, "max_replicas": args.max_replicas, "ray_address": args.ray_address,
           **_ledger_values(args)}
    options = dump(merged(job.serve, cli, "serve"))
    listed = options.pop("models", None)
    hosting: dict[str, Any] = {k: options.pop(k) for k in ("engine", "replicas", "min_replicas", "max_replicas",
                                                         "ray_address")
               if k in options}
    given = [named_model(value) for value in args.model or ()]
    try:
        if listed is not None or len(given) > 1:
            if options.get("name"):
                raise ConfigError("--name is for a server of one model; with several, each is named "
                                  "(--model NAME=PATH or name in [[serve.models]])")
            return ServeConfig(models=served_models(job, args, listed, given), **options), hosting
        if given:
            name, args.model = given[0]
            if name and options.get("name") and options["name"] != name:
                raise ConfigError(f"--model names the model '{name}' and --name '{options['name']}': give one name")
            options["name"] = name or options.get("name")
        # a bad row fails its own request (400); it is never scored as null
        recipe = _recipe(job, args, on_error="fail")
        return ServeConfig(recipe=recipe, **options), hosting
    except TypeError as exc:
        raise ConfigError(f"serve: {exc}") from None


def _stream(args: argparse.Namespace) -> int:
    from ._spec_schema import dump, merged
    from .errors import ConfigError
    from .stream.config import StreamConfig

    job = _spec(args)
    cli = {"bootstrap_servers": args.bootstrap_servers, "input_topic": args.input_topic,
           "output_topic": args.output_topic, "group_id": args.group_id, "dead_letter_topic": args.dead_letter_topic,
           "exactly_once": args.exactly_once, "transactional_id": args.transactional_id, "keep": args.keep,
           "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
           "commit_interval_ms": args.commit_interval_ms, "metrics_interval_s": args.metrics_interval,
           "max_poll_interval_ms": args.max_poll_interval_ms,
           "metrics_port": args.metrics_port, "engine": args.engine, "master": args.master, "remote": args.remote,
           "checkpoint": args.checkpoint, "trigger": args.trigger, **_ledger_values(args)}
    options = dump(merged(job.stream, cli, "stream"))
    missing = [k for k in ("bootstrap_servers", "input_topic", "output_topic") if not options.get(k)]
    no_model = not args.model and job.model.path is None
    if no_model or missing:
        raise ConfigError("stream needs --model, --bootstrap-servers, --input-topic and --output-topic "
                          f"(missing: {', '.join(['model'] * no_model + missing)})")
    engine = options.pop("engine", "local")
    spark_options = {k: options.pop(k) for k in ("master", "remote", "checkpoint", "trigger") if k in options}
    recipe = _recipe(job, args, on_error="fail")
    try:
        config = StreamConfig(recipe=recipe, **options)
    except TypeError as exc:
        raise ConfigError(f"stream: {exc}") from None
    if engine == "spark":
        if config.metrics_port is not None:
            raise ConfigError("--metrics-port is for the local engine; Spark reports through its own UI")
        if config.ledger is not None:
            raise ConfigError("--ledger is for the local engine")
        from .stream.spark import run_spark_stream

        run_spark_stream(config, **spark_options)
        return 0
    from .stream.kafka import run

    run(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except LakeinferError as exc:
        print(f"lakeinfer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lakeinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if stdout_closed():
            return broken_pipe()
        print(f"lakeinfer: error: a connection closed while writing to it: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("LAKEINFER_DEBUG"):
            raise
        print(f"lakeinfer: internal error: {type(exc).__name__}: {exc} (LAKEINFER_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
