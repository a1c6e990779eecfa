// Calls FraudDetection.Predict with nothing but proto/fraud_detection.proto, then a call with 3 features.
// Usage: node predict.js HOST:PORT REQUEST_ID  -> prints one JSON object {ok: response, bad: {code, details}}
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const protoPath = path.join(__dirname, "..", "..", "proto", "fraud_detection.proto");
const definition = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
const FraudDetection = grpc.loadPackageDefinition(definition).FraudDetection;

const [target, requestId] = process.argv.slice(2);
const client = new FraudDetection(target, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 5000);
const features = [0.3, -1.2, 0.8, 0.1, NaN, 2.0, -0.4, 1.1];

client.Predict({ features, request_id: requestId }, { deadline: deadline() }, (err, ok) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  client.Predict({ features: [1, 2, 3], request_id: "bad" }, { deadline: deadline() }, (bad) => {
    console.log(JSON.stringify({ ok, bad: bad ? { code: bad.code, details: bad.details } : null }));
    client.close();
  });
});
