#!/usr/bin/env node
'use strict';
const { existsSync } = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const entry = path.join(root, 'dist', 'src', 'cli', 'main.js');
if (!existsSync(entry)) {
  const setup = spawnSync(process.execPath, [path.join(root, 'scripts', 'setup.mjs')], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (setup.status !== 0) process.exit(setup.status ?? 1);
}
// A reader that stops early (`noisesearch search --help | head`) closes the pipe: that ends the output, not in a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => {
    if (error.code === 'EPIPE') process.exit(0);
    throw error;
  });
}
require(entry)
  .main(process.argv.slice(2))
  .then(
    (code) => process.exit(code),
    (error) => {
      // A user-facing command prints one line; NOISESEARCH_DEBUG=1 shows the stack.
      const text = process.env.NOISESEARCH_DEBUG ? (error && error.stack) || String(error) : String((error && error.message) || error).split('\n')[0];
      process.stderr.write(`noisesearch: ${text}\n`);
      process.exit(1);
    },
  );
