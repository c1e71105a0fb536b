"""The plain FastAPI + uvicorn baseline of bench/serve.py: one sklearn predict per request."""

import os

import joblib
import numpy as np
from fastapi import FastAPI

app = FastAPI()
model = joblib.load(os.environ["BENCH_MODEL"])


@app.post("/v2/models/{name}/infer")
def infer(name: str, body: dict) -> dict:  # type: ignore[type-arg]
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    prediction = model.predict(x)
    return {"model_name": name, "outputs": [
        {"name": "predict", "shape": [len(prediction)], "datatype": "INT64", "data": prediction.tolist()}]}
