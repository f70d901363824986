"""The bare baseline for the benchmark: a Flask endpoint that reads the body and says 200."""

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/<provider>")
def receive(provider: str):
    request.get_data()
    return {"status": "stored"}, 200
