// Real PyTorch models end to end through Temporal: tiny random-weight folders written by the same code a user
// runs (python -m noisesearch_server.torchmodels.tiny), served by the real model server, searched by real
// workers. A DrawBench campaign on tiny FLUX with an ensemble verifier, ending in a report with the decoded
// pictures and FID/IS/CLIP-FID per cell; and a class search on tiny SiT through every algorithm, by the CLI.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Worker } from '@temporalio/worker';
import { samplePath } from '../src/campaign/samples';
import { resolveCampaign } from '../src/campaign/spec';
import { writeCampaignReport } from '../src/cli/campaign';
import { PROJECT_ROOT, VENV_PYTHON } from '../src/embedded/paths';
import { Fleet } from '../src/fleet/client';
import { openStore } from '../src/store';
import { startCampaign } from '../src/temporal/client';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { PNG_SIGNATURE } from './fake-server';
import { stopServer, tempDir, uniqueId, withModelServer, withTemporal } from './helpers';

const DRAWBENCH = path.resolve(PROJECT_ROOT, '..', 'shared', 'data', 'prompts', 'DrawBench.csv');
// One torch thread per server: two servers and the workers share two cores.
process.env.OMP_NUM_THREADS = '1';

/** Tiny folders, an FID Inception with random weights, and reference statistics of random pictures. */
function writeWeights(root: string): void {
  const script = `
import sys, torch
from pathlib import Path
from noisesearch_server.torchmodels.registry import save_tiny
from noisesearch_server.torchmodels.image_metrics import ImagePopulationMetrics, save_random_fid_inception, save_tiny_clip
root = Path(sys.argv[1])
for name in ("flux", "clip-score", "aesthetic", "sit", "dino-imagenet", "selfsup"):
    save_tiny(name, root / name)
save_random_fid_inception(root / "inception.pth")
save_tiny_clip(root / "clip-fid")
metrics = ImagePopulationMetrics.load(root / "inception.pth", None, root / "clip-fid", None, torch.device("cpu"), torch.float32)
metrics.write_reference(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), root / "fid.npz", root / "clip.npz")
`;
  const done = spawnSync(VENV_PYTHON, ['-c', script, root], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(done.status, 0, done.stderr);
}

describe('real models (tiny random weights) through Temporal', { timeout: 900_000 }, () => {
  const weights = tempDir('weights');
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let flux: Awaited<ReturnType<typeof withModelServer>>;
  let sit: Awaited<ReturnType<typeof withModelServer>>;

  before(async () => {
    installQuietRuntime('ERROR');
    writeWeights(weights);
    const w = (name: string) => path.join(weights, name);
    [temporal, flux, sit] = await Promise.all([
      withTemporal(),
      withModelServer([
        '--resolution', '32', '--device', 'cpu',
        '--verifier', `clip-score=${w('clip-score')}`, '--verifier', `aesthetic=${w('aesthetic')}`,
        '--fid-inception', w('inception.pth'), '--fid-reference', w('fid.npz'),
        '--clip-fid', w('clip-fid'), '--clip-fid-reference', w('clip.npz'),
      ], undefined, `flux=${w('flux')}`),
      withModelServer([
        '--device', 'cpu', '--verifier', `dino-imagenet=${w('dino-imagenet')}`, '--verifier', `selfsup=${w('selfsup')}`,
      ], undefined, `sit=${w('sit')}`),
    ]);
  });
  after(async () => {
    await stopServer(flux);
    await stopServer(sit);
    await temporal?.stop();
  });

  it('runs a DrawBench campaign on tiny FLUX with an ensemble, and reports its pictures and population metrics', async () => {
    const fleet = new Fleet([flux.address], { callDeadlineMs: 60_000 });
    const taskQueue = uniqueId('real-flux');
    const worker: Worker = await createSearchWorker({ connection: temporal.env.nativeConnection, fleet, taskQueue });
    const running = worker.run();
    try {
      const dir = tempDir('flux-campaign');
      const model = await fleet.describe('flux');
      assert.deepEqual([model.takesPrompts, model.process, model.schedule.kind, model.imageShape], [true, 'flow', 'shifted', [3, 32, 32]]);
      // The model's own sampler, Euler in 30 steps: a generation is 30 NFEs. Random at 90 pays for 2
      // candidates and the final generation; zero-order (n = 2) at 90 for a pivot, a neighbour and the final one.
      const spec = {
        name: 'drawbench-tiny-flux',
        model: 'flux',
        dataset: { kind: 'drawbench', path: DRAWBENCH, limit: 2 },
        grid: { algorithms: ['random', { name: 'zero-order', n: 2 }], verifiers: ['clip-score,aesthetic'], budgets: [90, 150] },
        evaluation: ['clip-score', 'aesthetic'],
        seeds: [0],
        concurrency: 4,
        results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
      };
      const input = resolveCampaign(spec, model, dir);
      const progress = await (await startCampaign(temporal.env.client, input, { taskQueue })).result();
      assert.deepEqual([progress.done, progress.failed], [8, 0]);

      const store = await openStore(input.store);
      const [records, cells] = await Promise.all([store.searches(input.campaignId), store.cellMetrics(input.campaignId)]).finally(() => store.close());
      assert.equal(records.length, 8);
      for (const r of records) {
        assert.equal(r.status, 'done');
        for (const v of ['clip-score', 'aesthetic']) assert.ok(Number.isFinite(r.evaluation[v]), `${v} of ${r.workflowId}`);
        const png = readFileSync(samplePath(input.folder, r.workflowId, 'png'));
        assert.ok(png.subarray(0, 8).equals(PNG_SIGNATURE));
      }
      // Every cell (2 algorithms x 2 budgets) has a real FID, IS and CLIP-FID over its two pictures.
      assert.equal(cells.length, 4);
      for (const c of cells) {
        assert.ok(c.frechetDistance > 0 && c.inceptionScore >= 1 && c.samples === 2, JSON.stringify(c));
        assert.ok(Number.isFinite(c.clipFrechetDistance) && c.clipFrechetDistance! > 0, `CLIP-FID of ${JSON.stringify(c)}`);
      }

      const html = readFileSync(await writeCampaignReport(input.campaignId, input.store, path.join(dir, 'report.html')), 'utf8');
      // Per prompt: the no-search baseline, then random and zero-order at 90 and 150 NFEs.
      assert.equal((html.match(/<img src="data:image\/png;base64,/g) ?? []).length, 2 * (1 + 4));
      // On pictures the population metrics are FID and IS proper, not the embedded model's analogues.
      assert.ok(html.includes('FID of each cell’s final pictures') && html.includes('Inception Score of each cell'));
      assert.ok(!html.includes('Inception Score analogue'));
      assert.ok(html.includes("CLIP-FID: Fréchet distance of CLIP image embeddings of each cell's final pictures against the server's reference (lower is better)"));
      const first = records[0];
      assert.ok(html.includes(readFileSync(samplePath(input.folder, first.workflowId, 'png')).toString('base64')));
    } finally {
      worker.shutdown();
      await running;
      fleet.close();
    }
  });

  async function searchSit(algorithm: string, verifiers: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const args = [
      path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'search', '--model', 'sit', '--class', '3', '--algorithm', algorithm,
      '--verifier', verifiers, '--budget', '80', '--solver', 'euler', '--steps', '6', '--final-steps', '6',
      '--temporal', temporal.address, '--fleet', sit.address, '--json',
    ];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NOISESEARCH_HOME: tempDir('sit-cli') } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    return { code, stdout, stderr };
  }

  it('searches a class on tiny SiT with every algorithm, through the CLI', async () => {
    // FK scores its first particles above sigma 0.4, where the self-supervised verifier has no x-prediction
    // to compare with: refused in one line before any NFE.
    const refused = await searchSit('fk', 'dino-imagenet,selfsup');
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /^noisesearch search: verifier: selfsup compares the sample with the denoiser's x-prediction at sigma <= 0\.4, but fk scores/);
    for (const algorithm of ['random', 'zero-order', 'paths', 'fk']) {
      const verifiers = algorithm === 'fk' ? ['dino-imagenet'] : ['dino-imagenet', 'selfsup'];
      const { code, stdout, stderr } = await searchSit(algorithm, verifiers.join(','));
      assert.equal(code, 0, `${algorithm}: ${stderr}`);
      const result = JSON.parse(stdout);
      assert.ok(Number.isFinite(result.best.score), `${algorithm}: ${stdout}`);
      assert.deepEqual(Object.keys(result.best.scores).sort(), verifiers);
      assert.ok(result.nfe.total <= 80 && result.nfe.search > 0, `${algorithm} spent ${JSON.stringify(result.nfe)}`);
    }
  });

  it('starts the embedded model server on a PyTorch model, and searches it with no fleet named', async () => {
    const home = tempDir('embedded-sit');
    const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), ...args], { encoding: 'utf8', env: { ...process.env, NOISESEARCH_HOME: home }, timeout: 300_000 });
    try {
      const started = cli('server', 'start', '--model', `sit=${path.join(weights, 'sit')}`, '--verifier', `dino-imagenet=${path.join(weights, 'dino-imagenet')}`, '--device', 'cpu');
      assert.equal(started.status, 0, started.stderr);
      assert.match(started.stderr, /starting model server \(sit=/);
      const searched = cli('search', '--model', 'sit', '--class', '2', '--verifier', 'dino-imagenet', '--budget', '30', '--solver', 'euler', '--steps', '4', '--final-steps', '4', '--json');
      assert.equal(searched.status, 0, searched.stderr);
      assert.deepEqual(Object.keys(JSON.parse(searched.stdout).best.scores), ['dino-imagenet']);
      // The embedded server hosts SiT now: a gmm search is refused in one line that says how to switch back.
      const gmm = cli('search', '--class', '2', '--budget', '100');
      assert.equal(gmm.status, 2);
      assert.match(gmm.stderr, /^noisesearch search: --model: model "gmm" is not hosted by the fleet .*; the embedded model server hosts another model: noisesearch server start --model gmm\n$/);
    } finally {
      cli('server', 'stop');
    }
  });
});
