// The Grafana foundation SDK's builders. The package publishes its modules only through `exports` subpaths
// (`@grafana/grafana-foundation-sdk/dashboard`), which this project's `moduleResolution: node` cannot see, so
// the types come from the files under dist/ (which that resolution does see) and the values from the exported
// subpaths (which Node's resolution requires: dist/ itself is not exported).
import type * as DashboardModule from '@grafana/grafana-foundation-sdk/dist/dashboard';
import type * as PrometheusModule from '@grafana/grafana-foundation-sdk/dist/prometheus';
import type * as TimeseriesModule from '@grafana/grafana-foundation-sdk/dist/timeseries';
import type * as StatModule from '@grafana/grafana-foundation-sdk/dist/stat';
import type * as CommonModule from '@grafana/grafana-foundation-sdk/dist/common';

export const dashboard: typeof DashboardModule = require('@grafana/grafana-foundation-sdk/dashboard');
export const prometheus: typeof PrometheusModule = require('@grafana/grafana-foundation-sdk/prometheus');
export const timeseries: typeof TimeseriesModule = require('@grafana/grafana-foundation-sdk/timeseries');
export const stat: typeof StatModule = require('@grafana/grafana-foundation-sdk/stat');
export const common: typeof CommonModule = require('@grafana/grafana-foundation-sdk/common');
export type Dashboard = DashboardModule.Dashboard;
