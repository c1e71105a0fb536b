"""The plain FastAPI + uvicorn baseline of bench/serve.py: one call of the model per request
(a scikit-learn joblib: predict_proba; an XGBoost booster: inplace_predict)."""

import os

import numpy as np
from fastapi import FastAPI

app = FastAPI()
PATH = os.environ["BENCH_MODEL"]
if PATH.endswith((".ubj", ".json")):
    import xgboost as xgb

    booster = xgb.Booster(model_file=PATH)
    booster.set_param({"nthread": 1})

    def probabilities(x: np.ndarray) -> np.ndarray:
        p = np.asarray(booster.inplace_predict(x), dtype=np.float64)
        return np.column_stack([1.0 - p, p])
else:
    import joblib

    model = joblib.load(PATH)

    def probabilities(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(x), dtype=np.float64)


@app.post("/v2/models/{name}/infer")
def infer(name: str, body: dict) -> dict:  # type: ignore[type-arg]
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    proba = probabilities(x)
    label = np.argmax(proba, axis=1)
    return {"model_name": name, "outputs": [
        {"name": "prediction", "shape": [len(label)], "datatype": "INT64", "data": label.tolist()},
        {"name": "probability", "shape": list(proba.shape), "datatype": "FP64", "data": proba.ravel().tolist()}]}
