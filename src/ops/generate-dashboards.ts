// Writes the Grafana dashboards of dashboards.ts to deploy/grafana/dashboards/, which Grafana's provisioning
// (deploy/grafana/provisioning/dashboards/) loads. Run after editing dashboards.ts; the test fails until the
// committed files match.
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../embedded/paths';
import { renderDashboards } from './dashboards';

export const DASHBOARDS_DIR = path.join(PROJECT_ROOT, 'deploy', 'grafana', 'dashboards');

if (require.main === module) {
  mkdirSync(DASHBOARDS_DIR, { recursive: true });
  for (const { file, json } of renderDashboards()) {
    writeFileSync(path.join(DASHBOARDS_DIR, file), json);
    console.log(path.relative(PROJECT_ROOT, path.join(DASHBOARDS_DIR, file)));
  }
}
