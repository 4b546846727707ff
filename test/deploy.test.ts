// deploy/compose and deploy/k8s, checked offline: Compose's own `config` where the docker client has the compose
// plugin (else the file's references, parsed), `kubectl kustomize` for every overlay, and the objects it emits
// checked against each other (probes, ports, selectors, the fleet's DNS name), against the CLIs they run (every
// flag exists) and against deploy/prometheus/ (the job names the alerts and dashboards select on).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { parse, parseAllDocuments } from 'yaml';
import { PROJECT_ROOT, VENV_PYTHON } from '../src/embedded/paths';
import { SEARCH_ATTRIBUTES } from '../src/temporal/search-attributes';

const DEPLOY = path.join(PROJECT_ROOT, 'deploy');
const COMPOSE_DIR = path.join(DEPLOY, 'compose');
const COMPOSE_FILE = path.join(COMPOSE_DIR, 'compose.yaml');
const OVERLAYS = ['gmm', 'triton', 'triton-tls'];

function run(command: string, args: string[], cwd = PROJECT_ROOT): { status: number | null; output: string } {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (result.error) throw new Error(`${command} ${args.join(' ')}: ${result.error.message}`);
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

function mustRun(command: string, args: string[], cwd = PROJECT_ROOT): string {
  const { status, output } = run(command, args, cwd);
  assert.equal(status, 0, `${command} ${args.join(' ')} failed:\n${output}`);
  return output;
}

/** The job names deploy/prometheus/prometheus.yml scrapes under: what the alerts and dashboards select on. */
function prometheusJobs(): Set<string> {
  const config = parse(readFileSync(path.join(DEPLOY, 'prometheus', 'prometheus.yml'), 'utf8')) as { scrape_configs: { job_name: string }[] };
  return new Set(config.scrape_configs.map((c) => c.job_name));
}

/** Every `--flag` the help of a command names. */
function helpFlags(command: string, args: string[]): Set<string> {
  return new Set(mustRun(command, args).match(/--[a-z][a-z-]*/g) ?? []);
}

let workerFlags: Set<string>;
let serverFlags: Set<string>;
let tritonLaunchFlags: Set<string>;

function assertFlagsKnown(what: string, args: string[], known: Set<string>): void {
  for (const flag of args.filter((a) => a.startsWith('--'))) assert.ok(known.has(flag), `${what}: ${flag} is not a flag of the command it runs`);
}

before(() => {
  workerFlags = helpFlags(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'worker', '--help']);
  serverFlags = helpFlags(VENV_PYTHON, ['-m', 'noisesearch_server', '--help']);
  tritonLaunchFlags = helpFlags(VENV_PYTHON, ['-m', 'noisesearch_server.triton.launch', '--help']);
});

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  entrypoint?: string[];
  command?: string[];
  depends_on?: Record<string, unknown>;
  volumes?: string[];
  expose?: string[];
  profiles?: string[];
}

describe('deploy/compose', () => {
  const text = readFileSync(COMPOSE_FILE, 'utf8');
  // ${VAR:-default} as Compose interpolates it with the variable unset.
  const compose = parse(text.replace(/\$\{\w+:-([^}]*)\}/g, '$1'), { merge: true }) as { services: Record<string, ComposeService>; volumes: Record<string, unknown> };
  const services = compose.services;

  it('is a valid Compose file: `docker compose config` where the plugin is installed, its references otherwise', () => {
    if (run('docker', ['compose', 'version']).status === 0) {
      mustRun('docker', ['compose', '-f', COMPOSE_FILE, 'config', '-q']);
      mustRun('docker', ['compose', '-f', COMPOSE_FILE, '--profile', 'triton', 'config', '-q']);
    }
    for (const [name, service] of Object.entries(services)) {
      assert.ok(service.image || service.build, `${name}: neither image nor build`);
      if (service.build) {
        const context = path.resolve(COMPOSE_DIR, service.build.context);
        assert.ok(existsSync(path.join(context, service.build.dockerfile)), `${name}: no ${service.build.dockerfile} in ${context}`);
      }
      for (const dependency of Object.keys(service.depends_on ?? {})) assert.ok(services[dependency], `${name} depends on "${dependency}", no such service`);
      for (const volume of service.volumes ?? []) {
        const source = volume.split(':')[0];
        if (source.startsWith('.')) assert.ok(existsSync(path.resolve(COMPOSE_DIR, source)), `${name}: bind mount ${source} does not exist`);
        else assert.ok(source in (compose.volumes ?? {}), `${name}: volume "${source}" is not declared`);
      }
      // A profile's service may depend only on services that are up with it.
      for (const dependency of Object.keys(service.depends_on ?? {})) {
        const needed = services[dependency].profiles ?? [];
        assert.ok(needed.every((p) => (service.profiles ?? []).includes(p)), `${name} depends on ${dependency}, which only runs with profiles ${needed}`);
      }
    }
  });

  it('runs the CLIs with flags they have, and the workers\' fleet names the model servers by DNS', () => {
    const worker = services.worker.command!;
    assert.equal(worker[0], 'worker');
    assertFlagsKnown('worker', worker, workerFlags);
    const fleet = worker[worker.indexOf('--fleet') + 1];
    const target = /^dns:\/\/\/([\w-]+):(\d+)$/.exec(fleet);
    assert.ok(target, `the workers' fleet ${fleet} is not a dns:/// target`);
    assert.ok(services[target[1]], `the fleet names "${target[1]}", no such service`);
    for (const name of ['model-server', 'triton-model-server']) {
      const args = services[name].command!;
      assertFlagsKnown(name, args, serverFlags);
      assert.equal(args[args.indexOf('--port') + 1], name === 'model-server' ? target[2] : '50151');
      assert.ok(services[name].expose!.includes(args[args.indexOf('--metrics-port') + 1]), `${name} does not expose its metrics port`);
    }
    assertFlagsKnown('triton', services.triton.command!, tritonLaunchFlags);
  });

  it('creates exactly the search attributes the workflows keep', () => {
    const script = services['temporal-search-attributes'].command!.join(' ');
    const created = [...script.matchAll(/(Noisesearch\w+)=(\w+)/g)].map((m) => `${m[1]}=${m[2]}`).sort();
    const cliType: Record<string, string> = { KEYWORD: 'Keyword', INT: 'Int', DOUBLE: 'Double' };
    assert.deepEqual(created, Object.values(SEARCH_ATTRIBUTES).map((key) => `${key.name}=${cliType[key.type]}`).sort());
  });

  it('scrapes every service under the job names of deploy/prometheus, in a configuration promtool accepts with the alert rules', () => {
    const config = parse(readFileSync(path.join(COMPOSE_DIR, 'prometheus.yml'), 'utf8')) as { scrape_configs: { job_name: string; dns_sd_configs?: { names: string[]; port: number }[] }[] };
    const jobs = prometheusJobs();
    for (const job of config.scrape_configs) {
      if (job.job_name !== 'temporal-server') assert.ok(jobs.has(job.job_name), `job ${job.job_name} is not one of deploy/prometheus/prometheus.yml's (${[...jobs]})`);
      for (const sd of job.dns_sd_configs ?? []) {
        for (const name of sd.names) assert.ok(services[name]?.expose?.includes(String(sd.port)), `${job.job_name}: ${name} does not expose ${sd.port}`);
      }
    }
    // Laid out as the prometheus service mounts it: the compose config beside deploy/prometheus/ as noisesearch/.
    const prometheus = services.prometheus;
    const configPath = prometheus.command!.find((a) => a.startsWith('--config.file='))!.split('=')[1];
    const root = mkdtempSync(path.join(tmpdir(), 'compose-prometheus-'));
    for (const volume of prometheus.volumes!.filter((v) => v.startsWith('.'))) {
      const [source, target] = volume.split(':');
      assert.ok(target.startsWith(path.dirname(configPath)), `${target} is outside ${path.dirname(configPath)}`);
      cpSync(path.resolve(COMPOSE_DIR, source), path.join(root, path.relative(path.dirname(configPath), target)), { recursive: true });
    }
    assert.match(mustRun('/usr/bin/promtool', ['check', 'config', path.join(root, path.basename(configPath))]), /SUCCESS: 1 rule files found/);
  });

  it('mounts the Grafana dashboards where the provisioning file tells Grafana to look', () => {
    const provider = parse(readFileSync(path.join(DEPLOY, 'grafana', 'provisioning', 'dashboards', 'noisesearch.yml'), 'utf8')) as { providers: { options: { path: string } }[] };
    const mount = services.grafana.volumes!.find((v) => v.startsWith('../grafana/dashboards:'))!;
    assert.equal(mount.split(':')[1], provider.providers[0].options.path);
    assert.ok(readdirSync(path.join(DEPLOY, 'grafana', 'dashboards')).some((f) => f.endsWith('.json')), 'no dashboards to provision');
  });

  it('builds its images from files that exist and that the build context lets in', () => {
    for (const file of readdirSync(path.join(DEPLOY, 'docker')).filter((f) => f.endsWith('.Dockerfile'))) {
      const allowed = readFileSync(path.join(DEPLOY, 'docker', `${file}.dockerignore`), 'utf8').split('\n').filter((l) => l.startsWith('!')).map((l) => l.slice(1).replace(/\/$/, ''));
      const copies = [...readFileSync(path.join(DEPLOY, 'docker', file), 'utf8').matchAll(/^COPY (?!--from)(\S+) \S+$/gm)].map((m) => m[1]);
      assert.ok(copies.length > 0, `${file}: no COPY`);
      for (const source of copies) {
        assert.ok(existsSync(path.join(PROJECT_ROOT, source)), `${file}: COPY ${source}: not in the repository`);
        assert.ok(allowed.some((a) => source === a || source.startsWith(`${a}/`)), `${file}: COPY ${source}: excluded by ${file}.dockerignore`);
      }
    }
  });
});

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: any;
  data?: Record<string, string>;
}

function kustomize(overlay: string): string {
  return mustRun('kubectl', ['kustomize', path.join(DEPLOY, 'k8s', 'overlays', overlay)]);
}

function build(overlay: string): K8sObject[] {
  return parseAllDocuments(kustomize(overlay)).map((d) => d.toJS() as K8sObject);
}

// PyPI kubernetes-validate ships the Kubernetes OpenAPI schemas, so this runs offline. It has no schemas for
// CRDs (KEDA's ScaledObject, the Prometheus operator's ServiceMonitor): the structural checks below cover those.
const KUBERNETES_VALIDATE = path.join(path.dirname(VENV_PYTHON), 'kubernetes-validate');

function schemaFailures(manifests: string): { status: number | null; output: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'k8s-schema-'));
  const file = path.join(dir, 'objects.yaml');
  writeFileSync(file, manifests);
  return run(KUBERNETES_VALIDATE, ['--strict', '--quiet', '--no-warn', file]);
}

describe('deploy/k8s schemas', () => {
  it('every built-in object of every overlay is valid against the Kubernetes 1.37 schema, unknown fields refused', () => {
    for (const overlay of OVERLAYS) {
      const { status, output } = schemaFailures(kustomize(overlay));
      assert.equal(status, 0, `overlay ${overlay}:\n${output}`);
    }
  });

  it('the validator catches a misspelled field (it can fail)', () => {
    const broken = kustomize('gmm').replace('readinessProbe:', 'readinesProbe:');
    assert.notEqual(broken, kustomize('gmm'), 'the gmm overlay has no readinessProbe to misspell');
    const { status, output } = schemaFailures(broken);
    assert.notEqual(status, 0, output);
    assert.match(output, /readinesProbe/);
  });
});

function matches(selector: Record<string, string>, labels: Record<string, string> | undefined): boolean {
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

const CLUSTER_SCOPED = new Set(['Namespace']);

for (const overlay of OVERLAYS) {
  describe(`deploy/k8s/overlays/${overlay}`, () => {
    let objects: K8sObject[];
    const find = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
    before(() => {
      objects = build(overlay);
    });

    it('builds, and every object is well formed and in the namespace the fleet\'s DNS name names', () => {
      assert.ok(objects.length > 0);
      const namespace = find('Namespace', 'noisesearch');
      assert.ok(namespace, 'no Namespace');
      for (const o of objects) {
        assert.match(o.apiVersion ?? '', /^([\w.]+\/)?v\d+(alpha\d+|beta\d+)?$/, `${o.kind} ${o.metadata?.name}: apiVersion`);
        assert.match(o.metadata?.name ?? '', /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, `${o.kind}: metadata.name`);
        if (!CLUSTER_SCOPED.has(o.kind)) assert.equal(o.metadata.namespace, 'noisesearch', `${o.kind} ${o.metadata.name}: namespace`);
      }
      const fleet = find('ConfigMap', 'noisesearch-config')!.data!.NOISESEARCH_FLEET;
      const service = find('Service', 'noisesearch-models')!;
      assert.equal(fleet, `dns:///${service.metadata.name}.${service.metadata.namespace}.svc.cluster.local:${service.spec.ports.find((p: any) => p.name === 'grpc').port}`);
      assert.equal(service.spec.clusterIP, 'None', 'the fleet\'s Service must be headless, so DNS names every pod');
    });

    it('has Deployments whose selectors, probes, ports and configuration agree', () => {
      const deployments = objects.filter((o) => o.kind === 'Deployment');
      assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), ['noisesearch-models', 'noisesearch-workers']);
      for (const d of deployments) {
        const pod = d.spec.template;
        assert.ok(matches(d.spec.selector.matchLabels, pod.metadata.labels), `${d.metadata.name}: selector does not match its pods`);
        for (const c of pod.spec.containers) {
          const ports = new Map<string | number, number>((c.ports ?? []).flatMap((p: any) => [[p.name, p.containerPort], [p.containerPort, p.containerPort]]));
          for (const kind of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
            const probe = c[kind];
            if (!probe) continue;
            const port = probe.grpc?.port ?? probe.httpGet?.port ?? probe.tcpSocket?.port;
            assert.ok(ports.has(port), `${d.metadata.name}/${c.name}: ${kind} port ${port} is not a container port`);
          }
          const env = new Set<string>((c.env ?? []).map((e: any) => e.name));
          for (const ref of c.envFrom ?? []) for (const key of Object.keys(find('ConfigMap', ref.configMapRef.name)?.data ?? {})) env.add(key);
          for (const arg of [...(c.args ?? []), ...(c.command ?? [])]) {
            for (const [, name] of String(arg).matchAll(/\$\((\w+)\)/g)) assert.ok(env.has(name), `${d.metadata.name}/${c.name}: $(${name}) is not set`);
          }
          for (const m of c.volumeMounts ?? []) assert.ok(pod.spec.volumes?.some((v: any) => v.name === m.name), `${d.metadata.name}/${c.name}: volume ${m.name} not declared`);
        }
      }
      const workers = find('Deployment', 'noisesearch-workers')!.spec.template.spec.containers[0];
      assert.equal(workers.args[0], 'worker');
      assertFlagsKnown('workers', workers.args, workerFlags);
      const models = find('Deployment', 'noisesearch-models')!.spec.template.spec.containers;
      const server = models.find((c: any) => c.name === 'model-server');
      assertFlagsKnown('model-server', server.args, serverFlags);
      assert.equal(server.args[server.args.indexOf('--port') + 1], '50151');
      assert.deepEqual(server.readinessProbe.grpc, { port: 50151 });
      assert.deepEqual(server.livenessProbe.grpc, { port: 50151 });
      const gpus = models.map((c: any) => Number(c.resources?.limits?.['nvidia.com/gpu'] ?? 0)).reduce((a: number, b: number) => a + b, 0);
      assert.equal(gpus, overlay === 'gmm' ? 0 : 1, 'GPUs per model-server pod');
      const triton = models.find((c: any) => c.name === 'triton');
      if (overlay !== 'gmm') assertFlagsKnown('triton', triton.args, tritonLaunchFlags);
    });

    it('has Services whose selectors and target ports reach pods, and ServiceMonitors that reach Services under the Prometheus job names', () => {
      const pods = objects.filter((o) => o.kind === 'Deployment').map((d) => d.spec.template);
      for (const s of objects.filter((o) => o.kind === 'Service')) {
        const selected = pods.filter((p) => matches(s.spec.selector, p.metadata.labels));
        assert.ok(selected.length > 0, `Service ${s.metadata.name} selects no pods`);
        const names = new Set(selected.flatMap((p) => p.spec.containers.flatMap((c: any) => (c.ports ?? []).map((port: any) => port.name))));
        for (const port of s.spec.ports) assert.ok(names.has(port.targetPort), `Service ${s.metadata.name}: targetPort ${port.targetPort} is no port of its pods`);
      }
      const jobs = prometheusJobs();
      const monitors = objects.filter((o) => o.kind === 'ServiceMonitor');
      assert.ok(monitors.length >= 2);
      for (const m of monitors) {
        const services = objects.filter((o) => o.kind === 'Service' && matches(m.spec.selector.matchLabels, o.metadata.labels));
        assert.ok(services.length > 0, `ServiceMonitor ${m.metadata.name} selects no Service`);
        for (const e of m.spec.endpoints) {
          assert.ok(services.some((s) => s.spec.ports.some((p: any) => p.name === e.port)), `ServiceMonitor ${m.metadata.name}: no Service port ${e.port}`);
          const job = e.relabelings.find((r: any) => r.targetLabel === 'job')?.replacement;
          assert.ok(jobs.has(job), `ServiceMonitor ${m.metadata.name}: job "${job}" is not one of deploy/prometheus/prometheus.yml's`);
        }
      }
      for (const d of objects.filter((o) => o.kind === 'Deployment')) {
        const annotations = d.spec.template.metadata.annotations ?? {};
        const ports = d.spec.template.spec.containers.flatMap((c: any) => (c.ports ?? []).map((p: any) => String(p.containerPort)));
        assert.ok(ports.includes(annotations['prometheus.io/port']), `${d.metadata.name}: prometheus.io/port ${annotations['prometheus.io/port']} is no container port`);
      }
    });

    it('scales the workers on their task queue\'s backlog', () => {
      const scaled = find('ScaledObject', 'noisesearch-workers')!;
      assert.ok(find(scaled.spec.scaleTargetRef.kind, scaled.spec.scaleTargetRef.name), 'the ScaledObject targets no Deployment here');
      const trigger = scaled.spec.triggers[0];
      const config = find('ConfigMap', 'noisesearch-config')!.data!;
      assert.equal(trigger.type, 'temporal');
      assert.equal(trigger.metadata.taskQueue, config.TASK_QUEUE);
      assert.equal(trigger.metadata.namespace, config.TEMPORAL_NAMESPACE);
      const workers = find('Deployment', 'noisesearch-workers')!.spec.template.spec.containers[0];
      assert.ok(workers.envFrom.some((e: any) => e.configMapRef.name === 'noisesearch-config'), 'endpointFromEnv reads the workers\' environment');
      if (trigger.authenticationRef) assert.ok(find('TriggerAuthentication', trigger.authenticationRef.name), 'authenticationRef names no TriggerAuthentication');
    });
  });
}
