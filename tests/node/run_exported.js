// Runs an ids-in file from `fastelectra export` with onnxruntime-node (tests/test_onnx_export.py).
// node run_exported.js MODEL.onnx FEEDS.json OUT.json
const ort = require('onnxruntime-node');
const fs = require('fs');
(async () => {
  const [model, feedsFile, outFile] = process.argv.slice(2);
  const feeds = JSON.parse(fs.readFileSync(feedsFile, 'utf8'));
  const session = await ort.InferenceSession.create(model);
  const inputs = {};
  for (const [name, {data, dims}] of Object.entries(feeds)) {
    inputs[name] = new ort.Tensor('int32', Int32Array.from(data), dims);
  }
  const out = await session.run(inputs);
  const e = out.embedding;
  fs.writeFileSync(outFile, JSON.stringify({dims: e.dims, data: Array.from(e.data)}));
})().catch((err) => { console.error(err); process.exit(1); });
