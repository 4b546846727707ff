// Replays saved histories against today's workflow code: a change that would make a running search or
// campaign non-deterministic fails here, before it reaches a worker with searches in flight. The
// histories cover every algorithm, a search that took an update and a signal and continued as new, and
// a campaign with its child searches (`npm run record-histories` records them again).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { HISTORY_DIR, RECORDED } from '../src/temporal/record-histories';
import { workflowSource } from '../src/temporal/bundle';
import { installQuietRuntime } from '../src/temporal/worker';

function load(name: string) {
  return historyFromJSON(JSON.parse(readFileSync(path.join(HISTORY_DIR, `${name}.json`), 'utf8')));
}

function eventTypes(name: string): Set<string> {
  const json = JSON.parse(readFileSync(path.join(HISTORY_DIR, `${name}.json`), 'utf8'));
  return new Set((json.events as Array<{ eventType: string }>).map((e) => e.eventType));
}

describe('workflow determinism', { timeout: 120_000 }, () => {
  it('has a recorded history for every recording', () => {
    const files = readdirSync(HISTORY_DIR).map((f) => path.basename(f, '.json')).sort();
    assert.deepEqual(files, [...RECORDED].sort());
  });

  it('records a signal, an update and a continue-as-new in the control history, and child searches in the campaign', () => {
    const control = eventTypes('control');
    for (const type of ['EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED', 'EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED', 'EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW']) {
      assert.ok(control.has(type), `control history lacks ${type}`);
    }
    assert.ok(eventTypes('campaign').has('EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED'));
  });

  for (const name of RECORDED) {
    it(`replays the ${name} history without a determinism violation`, async () => {
      installQuietRuntime('ERROR');
      await Worker.runReplayHistory(workflowSource(), load(name), `history-${name}`);
    });
  }
});
