// Reads crdtledger documents with the stock `yjs` package, as a third party would
// (docs/format.md, "Reading the documents with Yjs"): for each document, its stored
// updates (the snapshot, then the log rows after it, in order) are applied to a fresh
// Y.Doc, and each root Map is printed as JSON.
//
//   node read_docs.cjs IN.json > OUT.json
//   IN:  {"docs": [{"name": "ledger/2026-11", "updates": ["<base64>", ...]}, ...]}
//   OUT: {"yjs": "<version>", "docs": {"ledger/2026-11": {"entries": {...}}, ...}}
"use strict";
const fs = require("fs");
const Y = require("yjs");

const ROOTS = {
  ledger: ["entries"],
  members: ["members", "cards"],
  rules: ["rules"],
  operators: ["operators", "roles"],
};

const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {};
for (const { name, updates } of input.docs) {
  const doc = new Y.Doc();
  for (const u of updates) Y.applyUpdate(doc, Buffer.from(u, "base64"));
  const roots = {};
  for (const root of ROOTS[name.split("/")[0]]) roots[root] = doc.getMap(root).toJSON();
  out[name] = roots;
  doc.destroy();
}
const version = require("yjs/package.json").version;
process.stdout.write(JSON.stringify({ yjs: version, docs: out }));
