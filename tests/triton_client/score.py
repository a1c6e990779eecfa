"""Score rows with tritonclient over gRPC and HTTP; run by tests/test_inference_protocol.py in tritonclient's venv.

Reads {"grpc": "host:port", "http": "host:port", "model": name, "rows": [[...], ...], "version": ""} on stdin and
prints one JSON object: readiness, metadata and each client's probabilities, decisions and model version.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def infer(module, client, job, binary):
    rows = np.asarray(job["rows"], dtype=np.float32)
    features = module.InferInput("features", list(rows.shape), "FP32")
    if module is httpclient:
        features.set_data_from_numpy(rows, binary_data=binary)
        outputs = [module.InferRequestedOutput(n, binary_data=binary) for n in ("probability", "is_fraud")]
    else:
        features.set_data_from_numpy(rows)
        outputs = [module.InferRequestedOutput(n) for n in ("probability", "is_fraud")]
    result = client.infer(
        job["model"], [features], model_version=job.get("version", ""), outputs=outputs, request_id="triton-1"
    )
    response = result.get_response()
    version = response["model_version"] if isinstance(response, dict) else response.model_version
    return {
        "probability": result.as_numpy("probability").astype(float).tolist(),
        "is_fraud": result.as_numpy("is_fraud").astype(bool).tolist(),
        "model_version": version,
    }


def main():
    job = json.load(sys.stdin)
    g = grpcclient.InferenceServerClient(job["grpc"])
    h = httpclient.InferenceServerClient(job["http"])
    meta = g.get_model_metadata(job["model"], as_json=True)
    out = {
        "grpc_live": g.is_server_live(),
        "grpc_ready": g.is_server_ready(),
        "grpc_model_ready": g.is_model_ready(job["model"]),
        "http_live": h.is_server_live(),
        "http_ready": h.is_server_ready(),
        "http_model_ready": h.is_model_ready(job["model"]),
        "grpc_metadata": meta,
        "http_metadata": h.get_model_metadata(job["model"]),
        "server_metadata": g.get_server_metadata(as_json=True),
        "grpc": infer(grpcclient, g, job, True),
        "http_binary": infer(httpclient, h, job, True),
        "http_json": infer(httpclient, h, job, False),
    }
    try:
        g.get_model_metadata("no-such-model")
        out["grpc_unknown_model"] = "answered"
    except Exception as exc:  # tritonclient's InferenceServerException
        out["grpc_unknown_model"] = str(exc)
    json.dump(out, sys.stdout)


main()
