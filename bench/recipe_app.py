"""The baseline: the Flask + `model.predict` per request recipe that most tutorials show.

The model loads at import and every request runs its own `model.predict` on one image, with no
batching. Served by one uWSGI process (`--http-socket`, no master); bench/servers.py starts it.
"""

from __future__ import annotations

import io
import os

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

model = keras.models.load_model(os.environ["RECIPE_MODEL_PATH"], compile=False)
app = Flask(__name__)


@app.post("/predict")
def predict():
    upload = request.files.get("image")
    data = upload.read() if upload else request.get_data()
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
    x = np.asarray(image, dtype=np.float32)[None] / 127.5 - 1
    scores = model.predict(x, verbose=0)[0]
    top = np.argsort(scores)[::-1][:5]
    return jsonify(predictions=[{"index": int(i), "score": float(scores[i])} for i in top])
