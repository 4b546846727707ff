// Replays a saved history of each algorithm against today's workflow code: a change that would make a
// running search non-deterministic fails here, before it reaches a worker with searches in flight.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { HISTORY_DIR, RECORDED } from '../src/temporal/record-histories';
import { workflowSource } from '../src/temporal/bundle';
import { installQuietRuntime } from '../src/temporal/worker';

describe('workflow determinism', () => {
  it('has a recorded history for every algorithm', () => {
    const files = readdirSync(HISTORY_DIR).map((f) => path.basename(f, '.json')).sort();
    assert.deepEqual(files, Object.keys(RECORDED).sort());
  });

  for (const name of Object.keys(RECORDED)) {
    it(`replays the ${name} history without a determinism violation`, async () => {
      installQuietRuntime('ERROR');
      const history = historyFromJSON(JSON.parse(readFileSync(path.join(HISTORY_DIR, `${name}.json`), 'utf8')));
      await Worker.runReplayHistory(workflowSource(), history, `history-${name}`);
    });
  }
});
