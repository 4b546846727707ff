// Files from users, written byte by byte: every dataset kind in odd encodings (UTF-8 with a byte order mark,
// UTF-16 LE and BE with one, Latin-1 bytes that are not UTF-8), CRLF and lone-CR line ends, empty and
// whitespace-only lines, quotes and commas, a 10 MB line, NUL bytes. Each loads with exactly the items
// written out by hand below, or is refused with one line naming the file, the line and what is wrong.
// Then campaign specs that attack the YAML parser (an alias bomb, a huge file, deep nesting), and IDs and
// fields that try to put sample files outside the campaign's folder.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { baselinePath, samplePath, writeFileAtomic } from '../src/campaign/samples';
import { MAX_SPEC_BYTES, readCampaignSpec, resolveCampaign } from '../src/campaign/spec';
import { loadDataset } from '../src/datasets/load';
import type { DatasetItem, DatasetSpec } from '../src/datasets/types';
import { SpecError } from '../src/search/spec';
import { gmmModelInfo } from './fixtures';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hostile-inputs-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function write(name: string, bytes: Buffer | string): string {
  const file = path.join(dir, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, bytes);
  return file;
}

function problemsOf(load: () => unknown): string[] {
  try {
    load();
  } catch (error) {
    assert.ok(error instanceof SpecError, `refused with ${error}`);
    for (const p of error.problems) assert.ok(!/[\r\n]/.test(p) && p.length <= 1000, `one line: ${JSON.stringify(p).slice(0, 200)}`);
    return error.problems;
  }
  assert.fail('expected a refusal');
}

// ---------------------------------------------------------------------------------------------------------
// The same prompts in every kind of file: one with a non-ASCII letter (line 2), an empty and a
// whitespace-only line, and one with quotes and a comma (line 5).

const CAFE = 'A red café';
const QUOTED = 'say "hi", ok';

interface Kind {
  name: string;
  file: string;
  spec: (file: string) => DatasetSpec;
  field: string;
  /** The file's lines; line 2 holds CAFE. */
  lines: string[];
  expected: DatasetItem[];
  /** Line 2 with its prompt (or name) replaced. */
  withLine2: (prompt: string) => string;
}

const NAMES = Array.from({ length: 1000 }, (_, i) => (i === 1 ? 'café' : `name ${i}`));

const KINDS: Kind[] = [
  {
    name: 'drawbench (CSV)',
    file: 'DrawBench.csv',
    spec: (file) => ({ kind: 'drawbench', path: file }),
    field: 'dataset.path',
    lines: ['Prompts,Category', `${CAFE},Colors`, '', '   ', '"say ""hi"", ok",Text'],
    expected: [
      { id: 'drawbench-0', condition: { prompt: CAFE }, label: CAFE, category: 'Colors' },
      { id: 'drawbench-1', condition: { prompt: QUOTED }, label: QUOTED, category: 'Text' },
    ],
    withLine2: (prompt) => `${prompt},Colors`,
  },
  {
    name: 'partiprompts (TSV)',
    file: 'PartiPrompts.tsv',
    spec: (file) => ({ kind: 'partiprompts', path: file }),
    field: 'dataset.path',
    lines: ['Prompt\tCategory\tChallenge\tNote', `${CAFE}\tColors\tBasic\t`, '', '   ', `${QUOTED}\tText\tQuotes\tnote`],
    expected: [
      { id: 'partiprompts-0', condition: { prompt: CAFE }, label: CAFE, category: 'Colors', challenge: 'Basic' },
      { id: 'partiprompts-1', condition: { prompt: QUOTED }, label: QUOTED, category: 'Text', challenge: 'Quotes' },
    ],
    withLine2: (prompt) => `${prompt}\tColors\tBasic\t`,
  },
  {
    name: 't2i-compbench (text)',
    file: 'color_val.txt',
    spec: (file) => ({ kind: 't2i-compbench', path: file }),
    field: 'dataset.path',
    lines: ['a blue bench', CAFE, '', '   ', QUOTED],
    expected: [
      { id: 't2i-compbench-0', condition: { prompt: 'a blue bench' }, label: 'a blue bench', category: 'color' },
      { id: 't2i-compbench-1', condition: { prompt: CAFE }, label: CAFE, category: 'color' },
      { id: 't2i-compbench-2', condition: { prompt: QUOTED }, label: QUOTED, category: 'color' },
    ],
    withLine2: (prompt) => prompt,
  },
  {
    name: 'geneval (JSON lines)',
    file: 'evaluation_metadata.jsonl',
    spec: (file) => ({ kind: 'geneval', path: file }),
    field: 'dataset.path',
    lines: [
      '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
      `{"tag": "colors", "include": [{"class": "café", "count": 1, "color": "red"}], "prompt": "${CAFE}"}`,
      '',
      '   ',
      '{"tag": "text", "include": [], "prompt": "say \\"hi\\", ok"}',
    ],
    expected: [
      { id: 'geneval-0', condition: { prompt: 'a photo of a bench' }, label: 'a photo of a bench', category: 'single_object', geneval: { include: [{ class: 'bench', count: 1 }] } },
      { id: 'geneval-1', condition: { prompt: CAFE }, label: CAFE, category: 'colors', geneval: { include: [{ class: 'café', count: 1, color: 'red' }] } },
      { id: 'geneval-2', condition: { prompt: QUOTED }, label: QUOTED, category: 'text', geneval: { include: [] } },
    ],
    withLine2: (prompt) => `{"tag": "colors", "include": [{"class": "café", "count": 1, "color": "red"}], "prompt": "${prompt}"}`,
  },
  {
    name: 'imagenet class names',
    file: 'imagenet_classes.txt',
    spec: (file) => ({ kind: 'imagenet', classes: [1, 999], names: file }),
    field: 'dataset.names',
    lines: NAMES,
    expected: [
      { id: 'imagenet-1', condition: { classLabel: 1 }, label: 'café (ImageNet class 1)' },
      { id: 'imagenet-999', condition: { classLabel: 999 }, label: 'name 999 (ImageNet class 999)' },
    ],
    withLine2: (name) => name,
  },
];

/** UTF-16 big-endian bytes: Node has no encoder for it, so swap the little-endian ones. */
function utf16be(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf16le');
  for (let i = 0; i < bytes.length; i += 2) [bytes[i], bytes[i + 1]] = [bytes[i + 1], bytes[i]];
  return bytes;
}

const ENCODINGS: Array<[string, (text: string) => Buffer]> = [
  ['UTF-8', (t) => Buffer.from(t, 'utf8')],
  ['UTF-8 with a byte order mark', (t) => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(t, 'utf8')])],
  ['UTF-16 LE with a byte order mark', (t) => Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(t, 'utf16le')])],
  ['UTF-16 BE with a byte order mark', (t) => Buffer.concat([Buffer.from([0xfe, 0xff]), utf16be(t)])],
];
const LINE_ENDS: Array<[string, string]> = [['LF', '\n'], ['CRLF', '\r\n'], ['lone CR', '\r']];

describe('dataset files in odd encodings and line ends', () => {
  for (const kind of KINDS) {
    it(`${kind.name}: loads the same items from every encoding and line end, with or without a final line break`, () => {
      for (const [encoding, encode] of ENCODINGS) {
        for (const [end, eol] of LINE_ENDS) {
          for (const final of [eol, '']) {
            const file = write(`${encoding}-${end}-${final === '' ? 'no-final' : 'final'}/${kind.file}`.replaceAll(' ', '_'), encode(kind.lines.join(eol) + final));
            assert.deepEqual(loadDataset(kind.spec(file)), kind.expected, `${kind.name}, ${encoding}, ${end}${final === '' ? ', no final line break' : ''}`);
          }
        }
      }
    });

    it(`${kind.name}: Latin-1 bytes and NUL bytes are refused naming the file and the line`, () => {
      const latin1 = Buffer.from([...kind.lines.slice(0, 2), ...kind.lines.slice(2)].join('\n'), 'latin1');
      let file = write(`latin1/${kind.file}`, latin1);
      assert.deepEqual(problemsOf(() => loadDataset(kind.spec(file))), [`${kind.field}: file ${file} line 2: byte 0xE9 is not UTF-8; save the file as UTF-8`]);

      const lines = [...kind.lines];
      lines[1] = kind.withLine2('A red\0car');
      file = write(`nul/${kind.file}`, lines.join('\n'));
      assert.deepEqual(problemsOf(() => loadDataset(kind.spec(file))), [
        `${kind.field}: file ${file} line 2: a NUL byte; this is not a text file (or is UTF-16 without a byte order mark); save it as UTF-8`,
      ]);

      // UTF-16 without its byte order mark: NUL bytes from the first character on.
      file = write(`utf16-no-bom/${kind.file}`, Buffer.from(kind.lines.join('\n'), 'utf16le'));
      assert.deepEqual(problemsOf(() => loadDataset(kind.spec(file))), [
        `${kind.field}: file ${file} line 1: a NUL byte; this is not a text file (or is UTF-16 without a byte order mark); save it as UTF-8`,
      ]);

      // A lone surrogate after a UTF-16 byte order mark.
      file = write(`utf16-broken/${kind.file}`, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(kind.lines.join('\n'), 'utf16le'), Buffer.from([0x00, 0xd8])]));
      assert.deepEqual(problemsOf(() => loadDataset(kind.spec(file))), [`${kind.field}: file ${file} has a UTF-16 byte order mark but is not valid UTF-16LE; save the file as UTF-8`]);
    });
  }

  for (const kind of KINDS.filter((k) => k.field === 'dataset.path')) {
    it(`${kind.name}: a 10 MB line is refused as a prompt too long, quickly`, () => {
      const huge = 'a'.repeat(10 * 1024 * 1024);
      const lines = [...kind.lines];
      lines[1] = kind.withLine2(huge);
      const file = write(`huge/${kind.file}`, lines.join('\n'));
      const started = Date.now();
      assert.deepEqual(problemsOf(() => loadDataset(kind.spec(file))), [
        `${kind.field}: file ${file} line 2: a prompt of ${huge.length} characters; at most 4096 are taken (is a quote left open, or is this not a prompt file?)`,
      ]);
      assert.ok(Date.now() - started < 5_000, `refused in ${Date.now() - started} ms`);
    });
  }

  it('imagenet class names: a file with the names on one 10 MB line is refused by its line count', () => {
    const file = write('huge/imagenet_classes.txt', 'x'.repeat(10 * 1024 * 1024));
    assert.deepEqual(problemsOf(() => loadDataset({ kind: 'imagenet', classes: [1], names: file })), [
      `dataset.names: ${file} has 1 lines; want 1000 class names, one a line, in class-id order`,
    ]);
  });

  it('CSV: a quoted prompt holds commas, doubled quotes and a line break; an unclosed quote and text after a closing quote are refused by line', () => {
    let file = write('csv-multiline/DrawBench.csv', 'Prompts,Category\r\n"two\r\nlines, one prompt",Text\r\n"""quoted""",Text\r\n');
    assert.deepEqual(loadDataset({ kind: 'drawbench', path: file }), [
      { id: 'drawbench-0', condition: { prompt: 'two\r\nlines, one prompt' }, label: 'two\r\nlines, one prompt', category: 'Text' },
      { id: 'drawbench-1', condition: { prompt: '"quoted"' }, label: '"quoted"', category: 'Text' },
    ]);
    file = write('csv-unclosed/DrawBench.csv', 'Prompts,Category\n"never closed,Text\nnext,Text\n');
    assert.deepEqual(problemsOf(() => loadDataset({ kind: 'drawbench', path: file })), [`dataset.path: file ${file} line 2: a quoted field is never closed (no matching ")`]);
    file = write('csv-after-quote/DrawBench.csv', 'Prompts,Category\r"a" b,Text\rnext,Text\r');
    assert.deepEqual(problemsOf(() => loadDataset({ kind: 'drawbench', path: file })), [
      `dataset.path: file ${file} line 2: text after the closing quote of a field (write a quote inside a quoted field as "")`,
    ]);
    file = write('csv-commas/DrawBench.csv', 'Prompts,Category\na, b, c,Text\n');
    assert.deepEqual(problemsOf(() => loadDataset({ kind: 'drawbench', path: file })), [
      `dataset.path: file ${file} line 2: 4 fields, expected 2 (Prompts,Category); put a prompt that contains a comma in double quotes`,
    ]);
  });

  it('paths that cannot be files: a NUL byte, a name too long, a device, a directory, each one line, none read', () => {
    const long = path.join(dir, 'x'.repeat(300));
    const cases: Array<[DatasetSpec, string]> = [
      [{ kind: 'drawbench', path: 'a\0b.csv' }, 'dataset.path: "a\\u0000b.csv" holds a NUL byte; give a path without one'],
      [{ kind: 'imagenet', classes: [1], names: 'a\0b.txt' }, 'dataset.names: "a\\u0000b.txt" holds a NUL byte; give a path without one'],
      [{ kind: 'geneval', path: long }, `dataset.path: ${JSON.stringify(`${long.slice(0, 80)}…`)} cannot be read (ENAMETOOLONG)`],
      // Read whole, /dev/zero never ends: refused by its kind before a byte is read.
      [{ kind: 'drawbench', path: '/dev/zero' }, 'dataset.path: /dev/zero is not a regular file; give the path of a text file'],
      [{ kind: 'partiprompts', path: dir }, `dataset.path: ${dir} is a directory; give the path of PartiPrompts.tsv`],
    ];
    for (const [spec, problem] of cases) {
      const started = Date.now();
      assert.deepEqual(problemsOf(() => loadDataset(spec)), [problem]);
      assert.ok(Date.now() - started < 1_000);
    }
    assert.deepEqual(readCampaignSpec('spec\0.yaml').problems, ['spec: "spec\\u0000.yaml" holds a NUL byte; give a path without one']);
  });

  it('a file of only blank lines, in any line end, is refused as empty', () => {
    for (const [end, eol] of LINE_ENDS) {
      const file = write(`blank-${end.replace(' ', '_')}/color_val.txt`, ['', '  ', '\t', ''].join(eol));
      assert.deepEqual(problemsOf(() => loadDataset({ kind: 't2i-compbench', path: file })), [`dataset.path: file ${file} is empty; expected one prompt per line`], end);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

/** A YAML spec's reading: its problems, the milliseconds it took and the heap it grew by. */
function timedRead(file: string): { problems: string[]; ms: number; heapMb: number } {
  global.gc?.();
  const heap = process.memoryUsage().heapUsed;
  const started = process.hrtime.bigint();
  const { problems } = readCampaignSpec(file);
  return { problems, ms: Number(process.hrtime.bigint() - started) / 1e6, heapMb: (process.memoryUsage().heapUsed - heap) / 2 ** 20 };
}

describe('campaign spec files that attack the parser', () => {
  it('an alias bomb ("billion laughs": 9^9 strings from 9 lines) is refused at once in one line', () => {
    const letters = 'abcdefghi';
    const lines = [`a: &a [${Array(9).fill('"lol"').join(', ')}]`];
    for (let i = 1; i < letters.length; i++) lines.push(`${letters[i]}: &${letters[i]} [${Array(9).fill(`*${letters[i - 1]}`).join(', ')}]`);
    const file = write('bomb.yaml', `name: bomb\n${lines.join('\n')}\n`);
    const { problems, ms, heapMb } = timedRead(file);
    assert.deepEqual(problems, [`spec: ${file} is not valid YAML: Excessive alias count indicates a resource exhaustion attack`]);
    assert.ok(ms < 2_000 && heapMb < 100, `refused in ${ms.toFixed(0)} ms, heap +${heapMb.toFixed(1)} MB`);
  });

  it('a few aliases, as a spec may use them, are read', () => {
    const file = write('aliases.yaml', 'name: aliases\nbudgets: &b [200, 400]\ngrid: {algorithms: [random], verifiers: [gmm-classifier], budgets: *b}\ndataset: {kind: gmm-classes, classes: [1]}\n');
    const { spec, problems } = readCampaignSpec(file);
    assert.deepEqual(problems, []);
    const input = resolveCampaign(spec, gmmModelInfo(), path.join(dir, 'campaigns'));
    assert.deepEqual(input.budgets, [200, 400]);
  });

  it('a spec over 1 MiB is refused by its size before it is read', () => {
    const file = write('huge.yaml', `name: huge\nnote: "${'x'.repeat(MAX_SPEC_BYTES)}"\n`);
    const { problems, ms } = timedRead(file);
    assert.deepEqual(problems, [`spec: ${file} is ${fs.statSync(file).size} bytes, over the ${MAX_SPEC_BYTES} a spec may be; put prompts in a dataset file (dataset.path)`]);
    assert.ok(ms < 500, `refused in ${ms.toFixed(0)} ms`);
  });

  it('deep nesting (flow lists, flow mappings, indentation, compact sequences) is refused before the parser recurses', () => {
    const depth = 200_000;
    const cases: Array<[string, string, number]> = [
      ['flow lists', `name: x\ngrid: ${'['.repeat(depth)}${']'.repeat(depth)}\n`, 2],
      ['flow mappings', `name: x\ngrid: ${'{a: '.repeat(depth / 4)}1${'}'.repeat(depth / 4)}\n`, 2],
      ['indentation', `name: x\ngrid:\n${Array.from({ length: 200 }, (_, i) => `${'  '.repeat(i + 1)}k${i}:`).join('\n')} 1\n`, 67],
      ['compact sequences', `name: x\ngrid: \n  ${'- '.repeat(depth / 2)}1\n`, 3],
    ];
    for (const [what, text, line] of cases) {
      const file = write(`deep-${what.replace(' ', '-')}.yaml`, text);
      const { problems, ms, heapMb } = timedRead(file);
      assert.deepEqual(problems, [`spec: ${file} nests more than 64 levels deep (line ${line}); a campaign spec needs a few`], what);
      assert.ok(ms < 1_000 && heapMb < 100, `${what}: refused in ${ms.toFixed(0)} ms, heap +${heapMb.toFixed(1)} MB`);
    }
  });

  it('a JSON spec nested 200,000 deep is parsed (V8 does not recurse) and refused field by field', () => {
    const file = write('deep.json', `{"name": "x", "dataset": {"kind": "gmm-classes", "classes": [1]}, "grid": {"algorithms": [{"name": "random", "n": ${'['.repeat(200_000)}${']'.repeat(200_000)}}], "verifiers": ["gmm-classifier"], "budgets": [100]}}`);
    const { spec, problems } = readCampaignSpec(file);
    assert.deepEqual(problems, []);
    assert.deepEqual(problemsOf(() => resolveCampaign(spec, gmmModelInfo(), path.join(dir, 'campaigns'))), ['grid.algorithms[0].n: a list of 1 must be a number']);
  });

  it('a directory, or a file that does not exist, is one line', () => {
    assert.deepEqual(readCampaignSpec(dir).problems, [`spec: ${dir} is not a file; give a YAML or JSON campaign spec`]);
    assert.deepEqual(readCampaignSpec(path.join(dir, 'none.yaml')).problems, [`spec: file ${path.join(dir, 'none.yaml')} does not exist`]);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('file names built from user data stay inside the campaign folder', () => {
  const HOSTILE_IDS = ['../../../etc/passwd', '/etc/passwd', '..', '.', 'a/../../b', 'a\0b', 'C:\\Windows\\win.ini', 'x'.repeat(5000), `${'é'.repeat(300)}`, '-rf', ' ', '<script>', 'con'];

  it('sample and baseline files for hostile IDs are written inside folder/samples, with names a file system takes, one per ID', () => {
    const folder = path.join(dir, 'campaign-folder');
    const samples = path.join(folder, 'samples');
    const outside = fs.readdirSync(dir).sort();
    const written = new Set<string>();
    for (const id of HOSTILE_IDS) {
      const workflowId = `campaign-x-0123456789ab--${id}--0011223344556677`;
      for (const file of [samplePath(folder, workflowId, 'png'), samplePath(folder, workflowId, 'svg'), baselinePath(folder, id, 3, 'png'), baselinePath(folder, id, 3, 'json')]) {
        assert.equal(path.dirname(file), samples, `${JSON.stringify(id).slice(0, 40)}: ${file.slice(0, 200)}`);
        const name = path.basename(file);
        assert.ok(/^[\w.~-]+$/.test(name) && Buffer.byteLength(name) <= 255 && name !== '.' && name !== '..', name.slice(0, 80));
        writeFileAtomic(file, id);
        assert.equal(fs.readFileSync(file, 'utf8'), id, 'no two IDs share a file');
        written.add(name);
      }
    }
    assert.equal(written.size, HOSTILE_IDS.length * 4);
    assert.deepEqual(fs.readdirSync(folder), ['samples'], 'nothing beside the samples folder');
    assert.deepEqual(fs.readdirSync(samples).sort(), [...written].sort(), 'every file in samples/, no temporary left');
    assert.deepEqual(fs.readdirSync(dir).sort(), [...new Set([...outside, 'campaign-folder'])].sort(), 'nothing written outside the campaign folder');
  });

  it('two long IDs that differ only past the cut get different files', () => {
    const a = samplePath('/f', `${'x'.repeat(300)}a`, 'png');
    const b = samplePath('/f', `${'x'.repeat(300)}b`, 'png');
    assert.notEqual(a, b);
  });

  it('a campaign resolves its folder under the campaigns folder, and refuses results paths that are not paths', () => {
    const campaignsDir = path.join(dir, 'campaigns');
    const base = { name: 'folder-test', dataset: { kind: 'gmm-classes', classes: [1] }, grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [200] } };
    const input = resolveCampaign(base, gmmModelInfo(), campaignsDir);
    assert.equal(path.dirname(input.folder), campaignsDir);
    assert.match(path.basename(input.folder), /^campaign-folder-test-[0-9a-f]{12}$/);
    for (const [results, problem] of [
      [{ folder: 'a\0b' }, 'results.folder: "a\\u0000b" holds a NUL byte; give a path without one'],
      [{ folder: 7 }, 'results.folder: 7 is not a path'],
      [{ folder: '' }, 'results.folder: "" is not a path'],
      [{ path: ['x'] }, 'results.path: a list of 1 is not a path'],
      [{ path: '/tmp/x\0.sqlite' }, 'results.path: "/tmp/x\\u0000.sqlite" holds a NUL byte; give a path without one'],
    ] as const) {
      assert.deepEqual(problemsOf(() => resolveCampaign({ ...base, results }, gmmModelInfo(), campaignsDir)), [problem]);
    }
    // A name is letters, digits, '.', '_' and '-': it cannot climb out through the campaign's ID.
    assert.deepEqual(problemsOf(() => resolveCampaign({ ...base, name: '../../x' }, gmmModelInfo(), campaignsDir)), [`name: "../../x" must be 1 to 64 letters, digits, '.', '_' or '-'`]);
  });

  it('dataset items get ids from their position, never from the file: a prompt of "../../x" is only text', () => {
    const file = write('ids/color_val.txt', '../../etc/passwd\n/abs/path\n');
    assert.deepEqual(loadDataset({ kind: 't2i-compbench', path: file }).map((i) => i.id), ['t2i-compbench-0', 't2i-compbench-1']);
  });
});
