// The command line's parsing as a user meets it, in real processes: generated help for every command, one
// line that suggests the closest flag or command for a typo, and the completion scripts in real shells.
// Nothing here starts a service: every case is refused, or only prints, before one would be.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { ALGORITHM_NAMES } from '../src/search/run';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');
const home = mkdtempSync(path.join(tmpdir(), 'noisesearch-cli-parse-'));

function cli(args: string[]): { code: number; stdout: string; stderr: string } {
  const run = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', NOISESEARCH_LOG_LEVEL: '' },
  });
  return { code: run.status ?? -1, stdout: run.stdout, stderr: run.stderr };
}

/** Flags each command must list in its help: a few of its own, and the global --log-level. */
const HELP_FLAGS: Record<string, string[]> = {
  search: ['--budget', '--algorithm', '--n', '--k', '--potential', '--sigma-start', '--restart', '--json', '--local', '--wait', '--tls-ca', '--temporal-api-key', '--metrics'],
  worker: ['--fleet', '--task-queue', '--wait', '--tls-cert', '--temporal-tls-ca', '--temporal-metrics'],
  server: ['--model', '--verifier', '--models', '--triton', '--device', '--resolution', '--json'],
  demo: ['--json'],
  progress: ['--temporal', '--namespace', '--wait', '--json', '--temporal-plaintext'],
  stop: ['--temporal', '--wait', '--json'],
  budget: ['--temporal', '--wait', '--json'],
  campaign: ['--fleet', '--no-worker', '--store', '--wait', '--json', '--tls-key', '--metrics'],
  export: ['--format', '--out', '--store'],
  report: ['--out', '--store', '--json'],
  dashboard: ['--address', '--temporal-ui', '--prometheus', '--allow-actions', '--action-token-file', '--poll-ms'],
  completion: [],
};

describe('noisesearch command line', { timeout: 300_000 }, () => {
  it('generates help for the program and every command: on stdout, exit 0, each flag listed', () => {
    const program = cli(['--help']);
    assert.equal(program.code, 0, program.stderr);
    assert.equal(program.stderr, '');
    for (const name of Object.keys(HELP_FLAGS)) assert.match(program.stdout, new RegExp(`^  ${name} `, 'm'), `the program's help lists ${name}`);
    const help: Record<string, string> = {};
    for (const [name, flags] of Object.entries(HELP_FLAGS)) {
      const run = cli([name, '--help']);
      assert.equal(run.code, 0, `${name} --help: ${run.stderr}`);
      assert.equal(run.stderr, '', name);
      assert.match(run.stdout, new RegExp(`^Usage: noisesearch ${name} `), name);
      for (const flag of [...flags, '--log-level', '--help']) assert.match(run.stdout, new RegExp(`^\\s+(-h, )?${flag} `, 'm'), `${name} --help lists ${flag}`);
      help[name] = run.stdout;
    }
    const viaHelp = cli(['help', 'search']);
    assert.equal(viaHelp.code, 0, viaHelp.stderr);
    assert.equal(viaHelp.stdout, help.search, '"help search" is "search --help"');
    // The long explanations stay: search's flags grouped by algorithm, server start's examples.
    assert.match(help.search, /^fk:\n\s+--k <PARTICLES>/m);
    assert.match(help.server, /noisesearch server start --triton 127\.0\.0\.1:8001 --model gmm@triton:gmm_denoiser/);
  });

  it('with no command, prints the help on stderr and exits 2', () => {
    const run = cli([]);
    assert.equal(run.code, 2);
    assert.equal(run.stdout, '');
    assert.match(run.stderr, /^Usage: noisesearch \[options\] \[command\]/);
  });

  it('refuses an unknown flag or command in one line that suggests the closest, exit 2', () => {
    const cases: Array<[string[], string]> = [
      [['search', '--bugdet', '10'], `noisesearch search: unknown option '--bugdet' (did you mean --budget?); see "noisesearch search --help"`],
      [['campaign', 'run', '--sotre', 'x'], `noisesearch campaign: unknown option '--sotre' (did you mean --store?); see "noisesearch campaign --help"`],
      [['serch'], `noisesearch: unknown command 'serch' (did you mean search?); see "noisesearch --help"`],
      [['search', '--algoritm', 'fk'], `noisesearch search: unknown option '--algoritm' (did you mean --algorithm?); see "noisesearch search --help"`],
      [['worker', '--fleat', 'x'], `noisesearch worker: unknown option '--fleat' (did you mean --fleet?); see "noisesearch worker --help"`],
      [['search', '--log-levl', 'debug'], `noisesearch search: unknown option '--log-levl' (did you mean --log-level?); see "noisesearch search --help"`],
      [['search', '--zzz'], `noisesearch search: unknown option '--zzz'; see "noisesearch search --help"`],
      [['export'], `noisesearch export: missing required argument 'ID'; see "noisesearch export --help"`],
      [['search', '--budget'], `noisesearch search: option '--budget <NFES>' argument missing; see "noisesearch search --help"`],
      [['dashboard', 'extra'], `noisesearch dashboard: too many arguments for 'dashboard'. Expected 0 arguments but got 1; see "noisesearch dashboard --help"`],
      [['search', '--log-level', 'loud'], 'noisesearch search: --log-level: "loud" is not one of error, warn, info, debug, trace'],
      [['completion', 'fish'], 'noisesearch completion: "fish" is not a shell this completes; use bash or zsh'],
      [['search', `--${'x'.repeat(500)}`], `noisesearch search: unknown option '--${'x'.repeat(78)}…'; see "noisesearch search --help"`],
    ];
    for (const [args, line] of cases) {
      const run = cli(args);
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
      assert.equal(run.stderr, `${line}\n`, args.join(' '));
      assert.equal(run.stdout, '', args.join(' '));
    }
  });

  it('prints a bash completion script that loads in bash --norc and completes commands, flags and values', () => {
    const script = cli(['completion', 'bash']);
    assert.equal(script.code, 0, script.stderr);
    const folder = mkdtempSync(path.join(tmpdir(), 'noisesearch-completion-'));
    const file = path.join(folder, 'noisesearch.bash');
    writeFileSync(file, script.stdout);
    writeFileSync(path.join(folder, 'spec.yaml'), 'name: x\n');
    // Each case: the words on the line (the last one being completed) and what COMPREPLY holds after.
    const cases: Array<[string[], string[]]> = [
      [['noisesearch', 'cam'], ['campaign']],
      [['noisesearch', 'se'], ['search', 'server']],
      [['noisesearch', 'search', '--alg'], ['--algorithm']],
      [['noisesearch', 'search', '--algorithm', ''], [...ALGORITHM_NAMES]],
      [['noisesearch', 'search', '--class', '3', '--algorithm', 'z'], ['zero-order']],
      [['noisesearch', 'campaign', ''], ['run', 'status', 'retry', 'cancel']],
      [['noisesearch', 'server', '--verifier', 'a=b', ''], ['start', 'stop', 'status']],
      [['noisesearch', 'campaign', 'run', path.join(folder, 'sp')], [path.join(folder, 'spec.yaml')]],
      [['noisesearch', 'search', '--fleet', path.join(folder, 'sp')], [path.join(folder, 'spec.yaml')]],
      [['noisesearch', 'export', 'ID', '--format', ''], ['csv', 'jsonl']],
      [['noisesearch', '--log-level', ''], ['error', 'warn', 'info', 'debug', 'trace']],
      [['noisesearch', 'dashboard', '--allow'], ['--allow-actions']],
      [['noisesearch', 'help', 'bud'], ['budget']],
    ];
    const calls = cases
      .map(([words]) => `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; COMPREPLY=(); _noisesearch; echo "\${COMPREPLY[*]}"`)
      .join('\n');
    const run = spawnSync('bash', ['--norc', '--noprofile', '-c', `set -u; source '${file}' || exit 9\ncomplete -p noisesearch\n${calls}`], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stderr, '', 'sources and completes without a word on stderr');
    const [registered, ...replies] = run.stdout.trimEnd().split('\n');
    assert.equal(registered, 'complete -F _noisesearch noisesearch');
    cases.forEach(([words, expected], i) => assert.deepEqual(replies[i].split(' ').filter(Boolean).sort(), [...expected].sort(), words.join(' ')));
  });

  it('prints a zsh completion script that zsh reads', (t) => {
    if (spawnSync('zsh', ['--version']).error) {
      t.skip('zsh is not installed on this machine');
      return;
    }
    const script = cli(['completion', 'zsh']);
    assert.equal(script.code, 0, script.stderr);
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'noisesearch-completion-')), 'noisesearch.zsh');
    writeFileSync(file, script.stdout);
    assert.equal(spawnSync('zsh', ['-n', file], { encoding: 'utf8' }).status, 0, 'zsh -n');
    // Loaded for real (compinit, bashcompinit), then asked as zsh's completion system asks: words from 1.
    const run = spawnSync('zsh', ['-f', '-c', `source '${file}' && COMP_WORDS=(noisesearch search --algorithm '') && COMP_CWORD=3 && _noisesearch && print -r -- "\${COMPREPLY[*]}"`], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(run.stdout.trim().split(' ').sort(), [...ALGORITHM_NAMES].sort());
  });
});
