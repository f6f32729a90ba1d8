// Validate a .glb/.gltf with the Khronos glTF-Validator (npm package gltf-validator) and print its
// report as JSON on stdout. Used by the tests and benchmarks/bench_export.py.
//   node scripts/validate_gltf.js MODULE_DIR FILE
// MODULE_DIR is the folder that holds node_modules/gltf-validator (`.ci/run` installs it in .ci/node).
const fs = require("fs");
const path = require("path");

const [moduleDir, file] = process.argv.slice(2);
const validator = require(path.join(path.resolve(moduleDir), "node_modules", "gltf-validator"));
validator
  .validateBytes(new Uint8Array(fs.readFileSync(file)), { uri: path.basename(file), maxIssues: 100 })
  .then((report) => console.log(JSON.stringify(report)))
  .catch((error) => {
    console.error(String(error));
    process.exit(1);
  });
