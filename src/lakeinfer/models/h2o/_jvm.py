"""The JVM tier: supervised MOJOs of other algorithms (DeepLearning, StackedEnsemble, ...) scored
by h2o-genmodel itself, in one long-lived ``java`` process per loaded model, fed over a pipe.

Used only where lakeinfer has no numpy scorer (GBM, DRF and GLM never start a JVM). The process
starts on the first batch; rows go to it as tab-separated text (numbers in Python's round-trip
notation, categories as strings, an empty field for NA), answers come back one line per row
(label index and class probabilities, or the value), both exact in their decimal form.
h2o-genmodel's ``EasyPredictModelWrapper`` scores them, unseen levels and invalid numbers as NA.

The jar: ``$LAKEINFER_H2O_GENMODEL_JAR``, else an ``h2o-genmodel.jar`` next to the MOJO (as
``download_mojo(get_genmodel_jar=True)`` leaves it), else ``ai.h2o:h2o-genmodel`` of the MOJO's
H2O version from Maven Central, cached. Without ``java`` or a jar the MOJO is refused at load,
in one line naming the algorithm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from ...errors import ModelLoadError, PredictionError, SchemaError
from ...schema import Signature, TensorSpec, column_or_error
from .._base import Model
from .._frame import CATEGORY, FeatureKinds
from ._mojo import Mojo, unescape_newlines

__all__ = ["H2OJvmModel", "jvm_refusal"]

_CATEGORIES = ("Binomial", "Multinomial", "Regression")
_MAVEN = "https://repo1.maven.org/maven2/ai/h2o/h2o-genmodel/{v}/h2o-genmodel-{v}.jar"
_FALLBACK_VERSION = "3.46.0.12"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

_JAVA = r"""
import hex.genmodel.MojoModel;
import hex.genmodel.easy.EasyPredictModelWrapper;
import hex.genmodel.easy.RowData;
import hex.genmodel.easy.prediction.*;
import java.io.*;
import java.nio.charset.StandardCharsets;

public class LakeinferMojoPipe {
  static String unescape(String s) {
    if (s.indexOf('\\') < 0) return s;
    StringBuilder b = new StringBuilder(s.length());
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '\\' && i + 1 < s.length()) {
        char n = s.charAt(++i);
        b.append(n == 't' ? '\t' : n == 'n' ? '\n' : n == 'r' ? '\r' : n);
      } else b.append(c);
    }
    return b.toString();
  }
  public static void main(String[] args) throws Exception {
    MojoModel model = MojoModel.load(args[0]);
    EasyPredictModelWrapper wrapper = new EasyPredictModelWrapper(new EasyPredictModelWrapper.Config()
        .setModel(model).setConvertUnknownCategoricalLevelsToNa(true).setConvertInvalidNumbersToNa(true));
    int n = Integer.parseInt(args[1]);
    // a model trained with another categorical encoding takes the columns it was given
    boolean original = model.getOrigNames() != null;
    String[] names = original ? model.getOrigNames() : model.getNames();
    boolean[] category = new boolean[n];
    for (int j = 0; j < n; j++)
      category[j] = (original ? model.getOrigDomainValues()[j] : model.getDomainValues(j)) != null;
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8), 1 << 16);
    Writer out = new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8), 1 << 16);
    out.write("ready\n");
    out.flush();
    String line;
    while ((line = in.readLine()) != null) {
      int rows = Integer.parseInt(line.trim());
      StringBuilder b = new StringBuilder();
      for (int r = 0; r < rows; r++) {
        String[] fields = in.readLine().split("\t", -1);
        RowData data = new RowData();
        for (int j = 0; j < n; j++) {
          if (fields[j].isEmpty()) continue;
          if (category[j]) data.put(names[j], unescape(fields[j]));
          else data.put(names[j], Double.valueOf(fields[j]));
        }
        try {
          AbstractPrediction p = wrapper.predict(data);
          double[] probabilities = null;
          if (p instanceof BinomialModelPrediction) {
            BinomialModelPrediction q = (BinomialModelPrediction) p;
            b.append(q.labelIndex);
            probabilities = q.classProbabilities;
          } else if (p instanceof MultinomialModelPrediction) {
            MultinomialModelPrediction q = (MultinomialModelPrediction) p;
            b.append(q.labelIndex);
            probabilities = q.classProbabilities;
          } else if (p instanceof RegressionModelPrediction) {
            b.append(((RegressionModelPrediction) p).value);
          } else {
            b.append("!a prediction of type ").append(p.getClass().getSimpleName());
          }
          if (probabilities != null) for (double v : probabilities) b.append('\t').append(v);
        } catch (Exception e) {
          b.append('!').append(String.valueOf(e).replace('\n', ' ').replace('\r', ' '));
        }
        b.append('\n');
      }
      out.write(b.toString());
      out.flush();
    }
  }
}
"""


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lakeinfer" / "h2o"


def _jar(mojo: Mojo) -> tuple[Path | None, str]:
    """The h2o-genmodel jar to use, or None and why there is none."""
    named = os.environ.get("LAKEINFER_H2O_GENMODEL_JAR")
    if named:
        return (Path(named), "") if os.path.isfile(named) else (None, f"LAKEINFER_H2O_GENMODEL_JAR={named} is not a file")
    beside = Path(mojo.path).resolve().parent / "h2o-genmodel.jar"
    if beside.is_file():
        return beside, ""
    version = mojo.text("h2o_version", _FALLBACK_VERSION)
    if not all(part.isdigit() for part in version.split(".")):
        version = _FALLBACK_VERSION
    cached = _cache() / f"h2o-genmodel-{version}.jar"
    if cached.is_file():
        return cached, ""
    url = _MAVEN.format(v=version)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(f".{os.getpid()}.part")
        with urllib.request.urlopen(url, timeout=60) as answer, open(part, "wb") as fh:  # noqa: S310 (https)
            shutil.copyfileobj(answer, fh)
        os.replace(part, cached)
    except OSError as exc:
        return None, f"h2o-genmodel {version} could not be fetched from Maven Central ({exc}); set " \
                     "LAKEINFER_H2O_GENMODEL_JAR or put h2o-genmodel.jar next to the MOJO"
    return cached, ""


def jvm_refusal(mojo: Mojo) -> str | None:
    """Why the JVM tier cannot score ``mojo`` (None: it can). Starts no JVM."""
    category = mojo.text("category", "?")
    if category not in _CATEGORIES or not mojo.flag("supervised", True):
        return f"a {category} model, not a binomial, multinomial or regression one"
    if shutil.which("java") is None:
        return "no java is on the PATH"
    jar, why = _jar(mojo)
    return None if jar is not None else why


class H2OJvmModel(Model):
    """A supervised MOJO scored by h2o-genmodel in a ``java`` process of its own."""

    flavor = "h2o"
    handles_missing = True

    def __init__(self, mojo: Mojo, name: str, algo: str, *, features: Any = None) -> None:
        jar, why = _jar(mojo)
        if jar is None:
            raise ModelLoadError(f"H2O MOJO {mojo.path} ({name}): {why}")
        self.jar = jar
        count = mojo.integer("n_features", len(mojo.columns) - 1)
        own = tuple(mojo.columns[:count])
        domains = mojo.domains[:count]
        if mojo.has("_n_orig_names"):  # another categorical encoding: the columns before it
            own, domains = _original_columns(mojo)
            count = len(own)
        self.columns = tuple(features) if features else own
        if len(self.columns) != count:
            raise ModelLoadError(f"the H2O model takes {count} features ({', '.join(own)}); "
                                 f"{len(self.columns)} were named")
        self.domains = tuple(domains)
        category = mojo.text("category")
        domain = mojo.domains[-1]
        classes = mojo.integer("n_classes", 1)
        self.classes: tuple[str, ...] | None = None
        if category != "Regression":
            self.classes = tuple(domain) if domain is not None and len(domain) == classes else tuple(
                str(i) for i in range(classes))
        self.kinds = FeatureKinds(
            kinds={c: CATEGORY for c, d in zip(self.columns, self.domains, strict=True) if d is not None},
            categories={c: d for c, d in zip(self.columns, self.domains, strict=True) if d is not None})
        outputs = [TensorSpec("prediction", "string" if self.classes else "float64")]
        if self.classes:
            outputs.append(TensorSpec("probability", "float64", (None, len(self.classes))))
        version = mojo.text("mojo_version", "?")
        signature = Signature(
            inputs=tuple(TensorSpec(c, "string" if d is not None else "float64")
                         for c, d in zip(self.columns, self.domains, strict=True)),
            outputs=tuple(outputs), features=self.columns,
            task="classification" if self.classes else "regression", classes=self.classes,
            extra={"algorithm": algo, "algorithm_name": name, "mojo_version": version,
                   "h2o_version": mojo.text("h2o_version", "unknown"), "response": mojo.columns[-1],
                   "response_domain": list(self.classes) if self.classes else None,
                   "columns": [{"name": c, "domain": list(d) if d is not None else None}
                               for c, d in zip(self.columns, self.domains, strict=True)],
                   "notes": [f"H2O {name} (algo {algo}), MOJO version {version}: scored by h2o-genmodel "
                             f"({jar.name}) in a java process of its own"]})
        super().__init__(mojo.path, signature)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.columns

    def _process(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        source = _cache() / "LakeinferMojoPipe.java"
        source.parent.mkdir(parents=True, exist_ok=True)
        if not source.is_file() or source.read_text() != _JAVA:
            part = source.with_suffix(f".{os.getpid()}.part")
            part.write_text(_JAVA)
            os.replace(part, source)
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: java's warnings never block it
        proc = subprocess.Popen(
            ["java", "-cp", str(self.jar), str(source), str(Path(self.path).resolve()), str(len(self.columns))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
            bufsize=1 << 16)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise PredictionError(f"h2o-genmodel could not load {self.path}: {_tail(self._log)}")
        self._proc = proc
        return proc

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to tidy
            pass

    def _fields(self, batch: pa.RecordBatch) -> list[list[str]]:
        texts = []
        for name, domain in zip(self.columns, self.domains, strict=True):
            column = column_or_error(batch, name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
            if domain is None:
                if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
                    raise SchemaError(f"feature column '{name}' has type {column.type}; the model needs a number")
                values = column.cast(kind).cast(pa.float64()).to_numpy(zero_copy_only=False)
                texts.append(["" if v != v else repr(float(v)) for v in values])
            else:
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
                    raise SchemaError(f"feature column '{name}' has type {column.type}; the model expects a "
                                      "category")
                values = column.cast(kind).cast(pa.string()).to_pylist()
                texts.append(["" if v is None else v.translate(_ESCAPES) for v in values])
        return [list(row) for row in zip(*texts, strict=True)]

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        rows = self._fields(batch)
        payload = f"{len(rows)}\n" + "".join("\t".join(row) + "\n" for row in rows)
        with self._lock:
            proc = self._process()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
                answers = [proc.stdout.readline() for _ in rows]
            except OSError as exc:
                raise PredictionError(f"the h2o-genmodel process for {self.path} failed: {exc}; "
                                      f"{_tail(self._log)}") from exc
        if any(not a for a in answers):
            raise PredictionError(f"the h2o-genmodel process for {self.path} ended: {_tail(self._log)}")
        for row, answer in enumerate(answers):
            if answer.startswith("!"):
                raise PredictionError(f"h2o-genmodel could not score row {row}: {answer[1:].strip()}")
        if not self.classes:
            return {"prediction": np.asarray([float(a) for a in answers])}
        parts = [a.rstrip("\n").split("\t") for a in answers]
        labels = pa.array(self.classes, pa.string()).take(pa.array([int(p[0]) for p in parts], pa.int64()))
        return {"prediction": labels, "probability": np.asarray([[float(v) for v in p[1:]] for p in parts])}


def _lines(mojo: Mojo, name: str) -> list[str]:
    raw = mojo.blob(name)
    if raw is None:
        raise ModelLoadError(f"H2O MOJO {mojo.path}: {name} is missing")
    return [unescape_newlines(line.rstrip("\r")) for line in raw.decode("utf-8").split("\n")[:-1]]


def _original_columns(mojo: Mojo) -> tuple[tuple[str, ...], list[tuple[str, ...] | None]]:
    """The feature columns (and their levels) of a model trained with another categorical encoding,
    as they were before it (the response is the last of them)."""
    names = _lines(mojo, "_orig_names")[:mojo.integer("_n_orig_names")]
    count = len(names) - 1
    domains: list[tuple[str, ...] | None] = []
    for j in range(count):
        levels = mojo.integer(f"_m_orig_domain_values_{j}", 0)
        domains.append(tuple(_lines(mojo, f"_orig_domain_values_{j}")[:levels]) if levels else None)
    return tuple(names[:count]), domains


def _tail(log: IO[bytes]) -> str:
    """The end of what the java process wrote to its error stream, on one line."""
    try:
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    return " ".join(text.split())[-300:] or "(no message)"
