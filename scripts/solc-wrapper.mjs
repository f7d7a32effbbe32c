#!/usr/bin/env node
// Makes npm's solcjs look like a native `solc` to forge: forge only needs
// `--version` and `--standard-json` (sources are inlined by forge, so no
// import callback is required). solcjs loses the tail of large outputs when
// they are written straight to a pipe, so the JSON goes to a temp file first
// and is then copied to stdout synchronously.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(process.env.X402_UPTO_TOOLS ?? join(here, "..", ".tools"), "package.json"));
const solc = require("solc");
const args = process.argv.slice(2);

if (args.includes("--version")) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}
if (!args.includes("--standard-json")) {
  process.stderr.write(`solc-wrapper: only --version and --standard-json are supported (got: ${args.join(" ")})\n`);
  process.exit(2);
}

const input = readFileSync(0, "utf8");
const output = solc.compile(input);
const dir = mkdtempSync(join(tmpdir(), "solcjs-"));
try {
  const file = join(dir, "out.json");
  writeFileSync(file, output);
  const buf = readFileSync(file);
  let off = 0;
  while (off < buf.length) off += writeSyncRetry(1, buf, off);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

function writeSyncRetry(fd, buf, off) {
  // stdout may be a non-blocking pipe: retry on EAGAIN instead of dropping bytes.
  const { writeSync } = require("node:fs");
  for (;;) {
    try {
      return writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
    }
  }
}
