// Dataset loading on the real benchmark files in ../shared/data/prompts (byte-exact public copies; see its
// README for the counts asserted here), and one-line problems for malformed files written to a temp dir.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseCsv } from '../src/datasets/csv';
import { loadDataset, validateDatasetSpec } from '../src/datasets/load';
import type { DatasetItem, DatasetSpec } from '../src/datasets/types';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { SpecError } from '../src/search/spec';

const PROMPTS = path.resolve(PROJECT_ROOT, '..', 'shared', 'data', 'prompts');
const DRAWBENCH = path.join(PROMPTS, 'DrawBench.csv');
const PARTI = path.join(PROMPTS, 'PartiPrompts.tsv');
const T2I = path.join(PROMPTS, 't2i-compbench');
const GENEVAL = path.join(PROMPTS, 'geneval', 'evaluation_metadata.jsonl');
const T2I_FILES = ['3d_spatial', 'color', 'complex', 'non_spatial', 'numeracy', 'shape', 'spatial', 'texture'];

function counts(items: DatasetItem[], key: (i: DatasetItem) => string | undefined = (i) => i.category): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) {
    const k = key(item) ?? '(none)';
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

function assertWellFormed(items: DatasetItem[]): void {
  assert.equal(new Set(items.map((i) => i.id)).size, items.length, 'ids are unique');
  for (const item of items) {
    const prompt = item.condition.prompt;
    assert.equal(typeof prompt, 'string', item.id);
    assert.ok(!prompt!.includes('\r') && !prompt!.includes('\n'), `${item.id} has no \\r or \\n: ${JSON.stringify(prompt)}`);
    assert.ok(prompt!.trim().length > 0, item.id);
    assert.equal(item.label, prompt!.trim());
  }
}

describe('class datasets', () => {
  it('gmm-classes and imagenet give one item per class with stable ids and labels', () => {
    assert.deepEqual(loadDataset({ kind: 'gmm-classes', classes: [3, 0] }), [
      { id: 'class-3', condition: { classLabel: 3 }, label: 'class 3' },
      { id: 'class-0', condition: { classLabel: 0 }, label: 'class 0' },
    ]);
    assert.deepEqual(loadDataset({ kind: 'imagenet', classes: [207, 999] }), [
      { id: 'imagenet-207', condition: { classLabel: 207 }, label: 'ImageNet class 207' },
      { id: 'imagenet-999', condition: { classLabel: 999 }, label: 'ImageNet class 999' },
    ]);
  });

  it('labels ImageNet classes by name from a names file (BOM and CRLF allowed), and refuses a file of the wrong length', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'noisesearch-names-'));
    const names = path.join(dir, 'imagenet_classes.txt');
    fs.writeFileSync(names, `\uFEFF${Array.from({ length: 1000 }, (_, i) => `name ${i}`).join('\r\n')}\r\n`);
    assert.deepEqual(loadDataset({ kind: 'imagenet', classes: [1, 207], names }), [
      { id: 'imagenet-1', condition: { classLabel: 1 }, label: 'name 1 (ImageNet class 1)' },
      { id: 'imagenet-207', condition: { classLabel: 207 }, label: 'name 207 (ImageNet class 207)' },
    ]);
    const short = path.join(dir, 'short.txt');
    fs.writeFileSync(short, 'tench\n\ngoldfish\n');
    assert.deepEqual(validateDatasetSpec({ kind: 'imagenet', classes: [1], names: short }, 'dataset'), [
      `dataset.names: ${short} has 3 lines (line 2 is blank); want 1000 class names, one a line, in class-id order`,
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'imagenet', classes: [1], names: path.join(dir, 'absent.txt') }, 'dataset'), [
      `dataset.names: file ${path.join(dir, 'absent.txt')} does not exist; give a file of 1000 class names, one a line`,
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'gmm-classes', classes: [1], names: short }, 'dataset'), [
      'dataset.names: not a field of a gmm-classes dataset; use kind, classes',
    ]);
  });

  it('reports every problem with the spec, one line each naming the field', () => {
    assert.deepEqual(validateDatasetSpec({ kind: 'gmm-classes', classes: [1, 2, -1, 1.5, '3', 2] }, 'dataset'), [
      'dataset.classes[2]: -1 is not a class id (a whole number >= 0)',
      'dataset.classes[3]: 1.5 is not a class id (a whole number >= 0)',
      'dataset.classes[4]: "3" is not a class id (a whole number >= 0)',
      'dataset.classes[5]: 2 is listed twice (also dataset.classes[1]); list each class once',
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'imagenet', classes: [1000] }, 'campaign.dataset'), [
      'campaign.dataset.classes[0]: 1000 is not an ImageNet class id (a whole number from 0 to 999)',
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'laion', path: '/x' }, 'dataset'), [
      'dataset.kind: "laion" is not one of gmm-classes, imagenet, drawbench, partiprompts, t2i-compbench, geneval',
    ]);
    assert.deepEqual(validateDatasetSpec({}, 'dataset'), [
      'dataset.kind: missing; use one of gmm-classes, imagenet, drawbench, partiprompts, t2i-compbench, geneval',
    ]);
    assert.match(validateDatasetSpec('drawbench', 'dataset')[0], /^dataset: "drawbench" is not a dataset/);
    assert.deepEqual(validateDatasetSpec({ kind: 'gmm-classes', classes: [] }, 'dataset'), ['dataset.classes: empty; give at least one class id']);
    assert.deepEqual(validateDatasetSpec({ kind: 'gmm-classes', classes: [1], path: DRAWBENCH }, 'dataset'), [
      'dataset.path: not a field of a gmm-classes dataset; use kind, classes',
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'drawbench' }, 'dataset'), ['dataset.path: missing; give the path of DrawBench.csv']);
    assert.deepEqual(validateDatasetSpec({ kind: 'drawbench', path: DRAWBENCH, limit: 0 }, 'dataset'), [
      'dataset.limit: 0 must be a whole number >= 1',
    ]);
    assert.deepEqual(validateDatasetSpec({ kind: 'drawbench', path: DRAWBENCH }, 'dataset'), []);
  });

  it('loadDataset throws a SpecError listing the problems', () => {
    assert.throws(
      () => loadDataset({ kind: 'imagenet', classes: [-1, 5000] }),
      (err: unknown) => err instanceof SpecError && err.problems.length === 2 && err.problems[1].startsWith('dataset.classes[1]: 5000'),
    );
  });
});

describe('real benchmark files', () => {
  it('DrawBench: 200 prompts in 11 categories, quoted commas kept, trailing-space category trimmed', () => {
    const items = loadDataset({ kind: 'drawbench', path: DRAWBENCH });
    assert.equal(items.length, 200);
    assertWellFormed(items);
    assert.deepEqual(counts(items), {
      Colors: 25,
      'DALL-E': 20,
      Descriptions: 20,
      'Gary Marcus et al.': 10,
      Misspellings: 10,
      Positional: 20,
      'Rare Words': 7,
      Reddit: 38,
      Text: 21,
      Counting: 19,
      Conflicting: 10,
    });
    assert.deepEqual(items[0], { id: 'drawbench-0', condition: { prompt: 'A red colored car.' }, label: 'A red colored car.', category: 'Colors' });
    // File line 71: a double-quoted prompt with commas.
    assert.deepEqual(items[69], {
      id: 'drawbench-69',
      condition: { prompt: 'An emoji of a baby panda wearing a red hat, green gloves, red shirt, and green pants.' },
      label: 'An emoji of a baby panda wearing a red hat, green gloves, red shirt, and green pants.',
      category: 'DALL-E',
    });
    // File line 98: quoted, in the category written "Gary Marcus et al. " with a trailing space.
    assert.equal(items[96].condition.prompt!.startsWith('A grocery store refrigerator has pint cartons of milk on the top shelf, quart'), true);
    assert.equal(items[96].category, 'Gary Marcus et al.');
    assert.ok(items.some((i) => i.condition.prompt!.includes('Bismarck-Schönhausen, Duke of Lauenburg')), 'UTF-8 kept');
    // The last line has no final newline.
    assert.equal(items[199].condition.prompt, "New York Skyline with 'Google Research Pizza Cafe' written with fireworks on the sky.");
    assert.equal(items[199].category, 'Text');
  });

  it('PartiPrompts: 1632 prompts, 12 categories, 11 challenges; quotes are text, prompts kept as written', () => {
    const items = loadDataset({ kind: 'partiprompts', path: PARTI });
    assert.equal(items.length, 1632);
    assertWellFormed(items);
    const byCategory = counts(items);
    assert.equal(Object.keys(byCategory).length, 12);
    assert.equal(byCategory.Animals, 314);
    assert.equal(byCategory.Artifacts, 287);
    assert.equal(byCategory['World Knowledge'], 214);
    const byChallenge = counts(items, (i) => i.challenge);
    assert.equal(Object.keys(byChallenge).length, 11);
    assert.equal(byChallenge['Fine-grained Detail'], 312);
    assert.equal(byChallenge.Basic, 272);
    assert.equal(byChallenge['Simple Detail'], 232);
    assert.deepEqual(items[0], { id: 'partiprompts-0', condition: { prompt: 'bond' }, label: 'bond', category: 'Abstract', challenge: 'Basic' });
    // File line 1562 starts with a double quote: TSV has no quoting, the quote is part of the prompt.
    assert.ok(items[1560].condition.prompt!.startsWith('"G I G G L E" painted in thick colorful lettering'));
    assert.equal(items[1560].category, 'Illustrations');
    // File line 406 starts with a space: the prompt is kept as written, the label trimmed.
    assert.equal(items[404].condition.prompt, ' A sloth in a go kart on a race track. The sloth is holding a banana in one hand. There is a banana peel on the track in the background.');
    assert.equal(items[404].label, items[404].condition.prompt!.trim());
  });

  it('T2I-CompBench: each file 300 prompts (CRLF or LF, final newline or not), category from the file name', () => {
    for (const name of T2I_FILES) {
      const items = loadDataset({ kind: 't2i-compbench', path: path.join(T2I, `${name}_val.txt`) });
      assert.equal(items.length, 300, name);
      assertWellFormed(items);
      assert.deepEqual(counts(items), { [name]: 300 });
      assert.equal(items[0].id, 't2i-compbench-0');
      assert.equal(items[299].id, 't2i-compbench-299');
    }
    const color = loadDataset({ kind: 't2i-compbench', path: path.join(T2I, 'color_val.txt') });
    assert.equal(color[0].condition.prompt, 'a green bench and a blue bowl');
  });

  it('T2I-CompBench directory: 2400 prompts, files in sorted order, ids <category>-<index>', () => {
    const items = loadDataset({ kind: 't2i-compbench', path: T2I });
    assert.equal(items.length, 2400);
    assertWellFormed(items);
    assert.deepEqual(Object.keys(counts(items)), T2I_FILES);
    assert.deepEqual(Object.values(counts(items)), T2I_FILES.map(() => 300));
    assert.equal(items[0].id, '3d_spatial-0');
    assert.equal(items[300].id, 'color-0');
    assert.equal(items[300].condition.prompt, 'a green bench and a blue bowl');
    assert.equal(items[2399].id, 'texture-299');
  });

  it('GenEval: 553 prompts, tags as categories, include/exclude kept', () => {
    const items = loadDataset({ kind: 'geneval', path: GENEVAL });
    assert.equal(items.length, 553);
    assertWellFormed(items);
    assert.deepEqual(counts(items), { position: 100, color_attr: 100, two_object: 99, colors: 94, single_object: 80, counting: 80 });
    assert.deepEqual(items[0], {
      id: 'geneval-0',
      condition: { prompt: 'a photo of a bench' },
      label: 'a photo of a bench',
      category: 'single_object',
      geneval: { include: [{ class: 'bench', count: 1 }] },
    });
    assert.equal(items.filter((i) => i.geneval?.exclude !== undefined).length, 80);
    assert.ok(items.filter((i) => i.category === 'counting').every((i) => i.geneval?.exclude !== undefined));
  });

  it('ids are stable across loads, and limit keeps the first N', () => {
    const specs: Extract<DatasetSpec, { path: string }>[] = [
      { kind: 'drawbench', path: DRAWBENCH },
      { kind: 'partiprompts', path: PARTI },
      { kind: 't2i-compbench', path: T2I },
      { kind: 'geneval', path: GENEVAL },
    ];
    for (const spec of specs) {
      const all = loadDataset(spec);
      assert.deepEqual(loadDataset(spec), all);
      assert.deepEqual(loadDataset({ ...spec, limit: 7 }), all.slice(0, 7));
      assert.deepEqual(loadDataset({ ...spec, limit: 100000 }), all);
    }
    // A directory's limit runs across files.
    const across = loadDataset({ kind: 't2i-compbench', path: T2I, limit: 302 });
    assert.deepEqual(across.slice(-3).map((i) => i.id), ['3d_spatial-299', 'color-0', 'color-1']);
  });
});

describe('malformed files', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'noisesearch-datasets-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });
  function write(name: string, text: string): string {
    const file = path.join(dir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
    return file;
  }
  function problems(spec: unknown): string[] {
    const out = validateDatasetSpec(spec, 'dataset');
    for (const p of out) assert.ok(!p.includes('\n'), `one line: ${JSON.stringify(p)}`);
    return out;
  }

  it('a CSV missing its Category column', () => {
    const file = write('no-category.csv', 'Prompts\nA cat.\nA dog.\n');
    assert.deepEqual(problems({ kind: 'drawbench', path: file }), [
      `dataset.path: file ${file} line 1: header Prompts has no Category column; expected Prompts,Category`,
    ]);
    assert.throws(() => loadDataset({ kind: 'drawbench', path: file }), SpecError);
  });

  it('a CSV row with the wrong number of fields, and an unclosed quote', () => {
    const file = write('commas.csv', 'Prompts,Category\nA cat.,Animals\nA cat, a dog,Animals\n"A bird,Animals\n');
    assert.deepEqual(problems({ kind: 'drawbench', path: file }), [
      `dataset.path: file ${file} line 3: 3 fields, expected 2 (Prompts,Category); put a prompt that contains a comma in double quotes`,
      `dataset.path: file ${file} line 4: a quoted field is never closed (no matching ")`,
    ]);
  });

  it('a JSONL with a broken line 3', () => {
    const good = '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}';
    const file = write('broken.jsonl', `${good}\n${good}\n{"tag": "single_object", "prompt": \n${good}\n`);
    const out = problems({ kind: 'geneval', path: file });
    assert.equal(out.length, 1);
    assert.ok(out[0].startsWith(`dataset.path: file ${file} line 3: not JSON (`), out[0]);
    const missing = write('missing-prompt.jsonl', `${good}\n{"tag": "x", "include": []}\n`);
    assert.deepEqual(problems({ kind: 'geneval', path: missing }), [`dataset.path: file ${missing} line 2: no "prompt" string`]);
  });

  it('a TSV with wrong columns', () => {
    const file = write('parti.tsv', 'Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\nelement\tAbstract\n');
    assert.deepEqual(problems({ kind: 'partiprompts', path: file }), [
      `dataset.path: file ${file} line 3: 2 tab-separated fields, expected 4 (Prompt, Category, Challenge, Note)`,
    ]);
    const noPrompt = write('noprompt.tsv', 'Text\tCategory\nbond\tAbstract\n');
    assert.deepEqual(problems({ kind: 'partiprompts', path: noPrompt }), [
      `dataset.path: file ${noPrompt} line 1: header Text<TAB>Category has no Prompt column; expected Prompt<TAB>Category<TAB>Challenge<TAB>Note`,
    ]);
  });

  it('an empty file, a missing file, a directory where a file belongs, an empty directory', () => {
    const empty = write('empty.jsonl', '');
    assert.deepEqual(problems({ kind: 'geneval', path: empty }), [`dataset.path: file ${empty} is empty; expected one JSON object per line`]);
    const emptyCsv = write('empty.csv', '\n');
    assert.deepEqual(problems({ kind: 'drawbench', path: emptyCsv }), [`dataset.path: file ${emptyCsv} is empty; expected a header line Prompts,Category`]);
    const emptyTxt = write('t2i/color_val.txt', '\r\n');
    assert.deepEqual(problems({ kind: 't2i-compbench', path: emptyTxt }), [`dataset.path: file ${emptyTxt} is empty; expected one prompt per line`]);
    const missing = path.join(dir, 'nope.csv');
    assert.deepEqual(problems({ kind: 'drawbench', path: missing, limit: -2 }), [
      'dataset.limit: -2 must be a whole number >= 1',
      `dataset.path: file ${missing} does not exist`,
    ]);
    assert.deepEqual(problems({ kind: 'geneval', path: dir }), [
      `dataset.path: ${dir} is a directory; give the path of evaluation_metadata.jsonl`,
    ]);
    const emptyDir = path.join(dir, 'nothing');
    fs.mkdirSync(emptyDir);
    assert.match(problems({ kind: 't2i-compbench', path: emptyDir })[0], /^dataset\.path: directory .* has no \.txt files/);
  });
});

describe('CSV reader', () => {
  it('handles quotes, doubled quotes, commas and newlines in quotes, CRLF, a BOM, no final newline', () => {
    const { records, problems } = parseCsv('\ufeffPrompts,Category\r\n"A ""quoted"" cat, sitting",Cats\r\n"two\r\nlines",X\r\nplain,"Y "');
    assert.deepEqual(problems, []);
    assert.deepEqual(records, [
      { line: 1, fields: ['Prompts', 'Category'] },
      { line: 2, fields: ['A "quoted" cat, sitting', 'Cats'] },
      { line: 3, fields: ['two\r\nlines', 'X'] },
      { line: 5, fields: ['plain', 'Y '] },
    ]);
    assert.deepEqual(parseCsv('a,\n,b\n\n"",c\n').records, [
      { line: 1, fields: ['a', ''] },
      { line: 2, fields: ['', 'b'] },
      { line: 4, fields: ['', 'c'] },
    ]);
    assert.deepEqual(parseCsv('"a"x,b\nc,d').problems, ['line 1: text after the closing quote of a field (write a quote inside a quoted field as "")']);
  });
});
