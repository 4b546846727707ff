// The Prometheus configuration and alert rules of deploy/prometheus/ as promtool sees them: the config and rules
// load, and every alert's unit tests (alerts.test.yml: each alert firing and not firing) pass.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { PROJECT_ROOT } from '../src/embedded/paths';

const PROMTOOL = '/usr/bin/promtool';
const DIR = path.join(PROJECT_ROOT, 'deploy', 'prometheus');

function promtool(...args: string[]): string {
  const run = spawnSync(PROMTOOL, args, { cwd: PROJECT_ROOT, encoding: 'utf8', timeout: 60_000 });
  assert.ifError(run.error);
  const output = `${run.stdout}${run.stderr}`;
  assert.equal(run.status, 0, `promtool ${args.join(' ')} failed:\n${output}`);
  return output;
}

interface RuleTest {
  alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[];
}

describe('deploy/prometheus', () => {
  it('prometheus.yml is a valid configuration, with its rule file', () => {
    assert.match(promtool('check', 'config', path.join(DIR, 'prometheus.yml')), /SUCCESS: 1 rule files found/);
  });

  it('alerts.yml holds valid rules', () => {
    assert.match(promtool('check', 'rules', path.join(DIR, 'alerts.yml')), /SUCCESS: \d+ rules found/);
  });

  it('every alert has a unit test where it fires and one where it stays quiet, and they pass', () => {
    // promtool passes a rule with no tests at all, so coverage is checked here from the files themselves.
    const groups = (parse(readFileSync(path.join(DIR, 'alerts.yml'), 'utf8')) as { groups: { rules: { alert?: string }[] }[] }).groups;
    const alerts = groups.flatMap((group) => group.rules.map((rule) => rule.alert).filter((name): name is string => !!name));
    const cases = (parse(readFileSync(path.join(DIR, 'alerts.test.yml'), 'utf8')) as { tests: RuleTest[] }).tests.flatMap((test) => test.alert_rule_test ?? []);
    assert.ok(alerts.length > 0, 'no alerts in alerts.yml');
    for (const alert of alerts) {
      const mine = cases.filter((c) => c.alertname === alert);
      assert.ok(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${alert} has no case where it fires`);
      assert.ok(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${alert} has no case where it stays quiet`);
    }
    assert.match(promtool('test', 'rules', path.join(DIR, 'alerts.test.yml')), /SUCCESS/);
  });
});
