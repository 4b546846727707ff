// The datasets a campaign runs over: classes of the embedded model, ImageNet classes, or the prompts of a
// text-to-image benchmark file (DrawBench CSV, PartiPrompts TSV, T2I-CompBench text files, GenEval JSONL).
// Loading is synchronous and reads the whole file; every problem is one line naming the spec field and,
// for a malformed file, the file and line. Ids are stable: "<kind>-<index>" with index the 0-based position
// of the prompt among the file's prompts (blank lines and the header are not counted); for a T2I-CompBench
// directory "<category>-<index>" with the index within that category's file.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeValue, SpecError } from '../search/spec';
import { parseCsv, stripBom } from './csv';
import type { DatasetItem, DatasetKind, DatasetSpec, GenevalObject } from './types';

export const DATASET_KINDS: readonly DatasetKind[] = [
  'gmm-classes',
  'imagenet',
  'drawbench',
  'partiprompts',
  't2i-compbench',
  'geneval',
];

export const IMAGENET_CLASSES = 1000;

/** At most this many line problems are listed per file; the rest are counted in one more line. */
const MAX_LINE_PROBLEMS = 20;

/**
 * The longest prompt taken: far above what text encoders read (CLIP 77 tokens, T5 512), and small enough
 * that a campaign of thousands of prompts stays within Temporal's 2 MB payloads. A longer one is a file
 * read wrongly (a quote never closed, a binary file), not a prompt.
 */
export const MAX_PROMPT_CHARS = 4096;

const CLASS_KINDS = new Set<DatasetKind>(['gmm-classes', 'imagenet']);
const EXAMPLE_FILE: Record<string, string> = {
  drawbench: 'DrawBench.csv',
  partiprompts: 'PartiPrompts.tsv',
  't2i-compbench': 'a *_val.txt file or the folder of them',
  geneval: 'evaluation_metadata.jsonl',
};

/** A prompt read from a file, before it gets its id. */
interface Row {
  /** The (1-based) line the prompt starts on, for problems found after parsing. */
  line: number;
  prompt: string;
  category?: string;
  challenge?: string;
  geneval?: DatasetItem['geneval'];
}

/** What a format parser gives: rows, and problems as "line N: ..." (or a whole-file problem without a line). */
interface Parsed {
  rows: Row[];
  problems: string[];
}

interface Resolved {
  items: DatasetItem[];
  problems: string[];
}

/** Every problem with the dataset part of a campaign spec, each one line starting with its field path. */
export function validateDatasetSpec(spec: unknown, field: string): string[] {
  return resolveDataset(spec, field).problems;
}

/** The dataset's items, in file order (first `limit` only). Throws a SpecError listing every problem. */
export function loadDataset(spec: DatasetSpec): DatasetItem[] {
  const { items, problems } = resolveDataset(spec, 'dataset');
  if (problems.length > 0) throw new SpecError(problems);
  return items;
}

/** A value as a problem quotes it: never rendered whole (a spec may nest a value 20,000 deep). */
const show = describeValue;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function resolveDataset(spec: unknown, field: string): Resolved {
  const problems: string[] = [];
  if (!isRecord(spec)) {
    return { items: [], problems: [`${field}: ${show(spec)} is not a dataset; give an object with a kind, one of ${DATASET_KINDS.join(', ')}`] };
  }
  const kind = spec.kind;
  if (kind === undefined) {
    return { items: [], problems: [`${field}.kind: missing; use one of ${DATASET_KINDS.join(', ')}`] };
  }
  if (typeof kind !== 'string' || !(DATASET_KINDS as readonly string[]).includes(kind)) {
    return { items: [], problems: [`${field}.kind: ${show(kind)} is not one of ${DATASET_KINDS.join(', ')}`] };
  }
  const k = kind as DatasetKind;
  const allowed = k === 'imagenet' ? ['kind', 'classes', 'names'] : CLASS_KINDS.has(k) ? ['kind', 'classes'] : ['kind', 'path', 'limit'];
  for (const key of Object.keys(spec)) {
    if (!allowed.includes(key)) problems.push(`${field}.${key}: not a field of a ${k} dataset; use ${allowed.join(', ')}`);
  }
  if (CLASS_KINDS.has(k)) {
    const names = k === 'imagenet' && spec.names !== undefined ? classNames(spec.names, `${field}.names`, problems) : null;
    const items = classItems(k, spec.classes, field, problems).map((item) =>
      names ? { ...item, label: `${names[item.condition.classLabel!]} (ImageNet class ${item.condition.classLabel})` } : item,
    );
    return { items, problems };
  }

  const limit = spec.limit;
  if (limit !== undefined && !(typeof limit === 'number' && Number.isInteger(limit) && limit >= 1)) {
    problems.push(`${field}.limit: ${show(limit)} must be a whole number >= 1`);
  }
  const file = spec.path;
  const pathField = `${field}.path`;
  if (file === undefined) {
    problems.push(`${pathField}: missing; give the path of ${EXAMPLE_FILE[k]}`);
    return { items: [], problems };
  }
  if (typeof file !== 'string' || file.trim() === '') {
    problems.push(`${pathField}: ${show(file)} is not a path; give the path of ${EXAMPLE_FILE[k]}`);
    return { items: [], problems };
  }
  const items = fileItems(k, file, pathField, problems);
  const limited = typeof limit === 'number' && Number.isInteger(limit) && limit >= 1 ? items.slice(0, limit) : items;
  return { items: limited, problems };
}

/** ImageNet's class names, one a line in class-id order (the file the clip-imagenet verifier reads too). */
function classNames(file: unknown, field: string, problems: string[]): string[] | null {
  if (typeof file !== 'string' || file.trim() === '') {
    problems.push(`${field}: ${show(file)} is not a path; give a file of ${IMAGENET_CLASSES} class names, one a line`);
    return null;
  }
  const stat = statPath(file, field, problems);
  if (stat === null) return null;
  if (stat === undefined || !stat.isFile()) {
    problems.push(`${field}: file ${file} does not exist; give a file of ${IMAGENET_CLASSES} class names, one a line`);
    return null;
  }
  const text = readText(file, field, problems);
  if (text === undefined) return null;
  const names = text.split(LINE_BREAK).map((l) => l.trim());
  while (names.length > 0 && names[names.length - 1] === '') names.pop();
  const blank = names.findIndex((n) => n === '');
  if (names.length !== IMAGENET_CLASSES || blank >= 0) {
    problems.push(`${field}: ${file} has ${names.length} lines${blank >= 0 ? ` (line ${blank + 1} is blank)` : ''}; want ${IMAGENET_CLASSES} class names, one a line, in class-id order`);
    return null;
  }
  return names;
}

function classItems(kind: DatasetKind, classes: unknown, field: string, problems: string[]): DatasetItem[] {
  const classesField = `${field}.classes`;
  if (classes === undefined) {
    problems.push(`${classesField}: missing; give a list of class ids, e.g. [0, 1, 2]`);
    return [];
  }
  if (!Array.isArray(classes)) {
    problems.push(`${classesField}: ${show(classes)} is not a list of class ids, e.g. [0, 1, 2]`);
    return [];
  }
  if (classes.length === 0) {
    problems.push(`${classesField}: empty; give at least one class id`);
    return [];
  }
  const items: DatasetItem[] = [];
  const firstAt = new Map<number, number>();
  classes.forEach((c: unknown, i) => {
    const at = `${classesField}[${i}]`;
    if (kind === 'imagenet') {
      if (!(typeof c === 'number' && Number.isInteger(c) && c >= 0 && c < IMAGENET_CLASSES)) {
        problems.push(`${at}: ${show(c)} is not an ImageNet class id (a whole number from 0 to ${IMAGENET_CLASSES - 1})`);
        return;
      }
    } else if (!(typeof c === 'number' && Number.isInteger(c) && c >= 0)) {
      problems.push(`${at}: ${show(c)} is not a class id (a whole number >= 0)`);
      return;
    }
    const first = firstAt.get(c);
    if (first !== undefined) {
      problems.push(`${at}: ${c} is listed twice (also ${classesField}[${first}]); list each class once`);
      return;
    }
    firstAt.set(c, i);
    items.push(
      kind === 'imagenet'
        ? { id: `imagenet-${c}`, condition: { classLabel: c }, label: `ImageNet class ${c}` }
        : { id: `class-${c}`, condition: { classLabel: c }, label: `class ${c}` },
    );
  });
  return items;
}

/**
 * The path's status: undefined when nothing is there, null (with a problem) when it cannot be asked: a NUL
 * byte, which no file system takes, or a name too long (ENAMETOOLONG), which statSync throws.
 */
function statPath(file: string, field: string, problems: string[]): fs.Stats | undefined | null {
  if (file.includes('\0')) {
    problems.push(`${field}: ${show(file)} holds a NUL byte; give a path without one`);
    return null;
  }
  try {
    return fs.statSync(file, { throwIfNoEntry: false });
  } catch (err) {
    problems.push(`${field}: ${show(file)} cannot be read (${errorText(err)})`);
    return null;
  }
}

function fileItems(kind: DatasetKind, file: string, pathField: string, problems: string[]): DatasetItem[] {
  const stat = statPath(file, pathField, problems);
  if (stat === null) return [];
  if (stat === undefined) {
    problems.push(`${pathField}: file ${file} does not exist`);
    return [];
  }
  if (stat.isDirectory()) {
    if (kind === 't2i-compbench') return t2iDirectoryItems(file, pathField, problems);
    problems.push(`${pathField}: ${file} is a directory; give the path of ${EXAMPLE_FILE[kind]}`);
    return [];
  }
  const text = readText(file, pathField, problems);
  if (text === undefined) return [];
  let parsed: Parsed;
  switch (kind) {
    case 'drawbench':
      parsed = parseDrawBench(text);
      break;
    case 'partiprompts':
      parsed = parsePartiPrompts(text);
      break;
    case 'geneval':
      parsed = parseGenEval(text);
      break;
    default:
      parsed = parseT2i(text, t2iCategory(file));
      break;
  }
  const checked = withRowProblems(parsed);
  report(checked.problems, file, pathField, problems);
  if (checked.problems.length > 0) return [];
  return checked.rows.map((row, i) => toItem(`${kind}-${i}`, row));
}

function t2iDirectoryItems(dir: string, pathField: string, problems: string[]): DatasetItem[] {
  let names: string[];
  try {
    names = fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.name.endsWith('.txt') && (e.isFile() || (e.isSymbolicLink() && fs.statSync(path.join(dir, e.name), { throwIfNoEntry: false })?.isFile())))
      .map((e) => e.name)
      .sort();
  } catch (err) {
    problems.push(`${pathField}: directory ${dir} cannot be read (${errorText(err)})`);
    return [];
  }
  if (names.length === 0) {
    problems.push(`${pathField}: directory ${dir} has no .txt files; T2I-CompBench prompts are one per line in <category>_val.txt`);
    return [];
  }
  const items: DatasetItem[] = [];
  const fileOf = new Map<string, string>();
  let ok = true;
  for (const name of names) {
    const file = path.join(dir, name);
    const category = t2iCategory(name);
    const clash = fileOf.get(category);
    if (clash !== undefined) {
      problems.push(`${pathField}: files ${clash} and ${name} in ${dir} are both category "${category}"; keep one`);
      ok = false;
      continue;
    }
    fileOf.set(category, name);
    const text = readText(file, pathField, problems);
    if (text === undefined) {
      ok = false;
      continue;
    }
    const parsed = withRowProblems(parseT2i(text, category));
    report(parsed.problems, file, pathField, problems);
    if (parsed.problems.length > 0) {
      ok = false;
      continue;
    }
    parsed.rows.forEach((row, i) => items.push(toItem(`${category}-${i}`, row)));
  }
  return ok ? items : [];
}

/** The parser's problems and those of its rows: a prompt too long to be one. */
function withRowProblems(parsed: Parsed): Parsed {
  const tooLong = parsed.rows
    .filter((row) => row.prompt.length > MAX_PROMPT_CHARS)
    .map((row) => `line ${row.line}: a prompt of ${row.prompt.length} characters; at most ${MAX_PROMPT_CHARS} are taken (is a quote left open, or is this not a prompt file?)`);
  return { rows: parsed.rows, problems: [...parsed.problems, ...tooLong] };
}

function toItem(id: string, row: Row): DatasetItem {
  const item: DatasetItem = { id, condition: { prompt: row.prompt }, label: row.prompt.trim() };
  if (row.category !== undefined) item.category = row.category;
  if (row.challenge !== undefined) item.challenge = row.challenge;
  if (row.geneval !== undefined) item.geneval = row.geneval;
  return item;
}

function errorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e?.code ?? (e?.message || String(err))).replace(/\s+/g, ' ');
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });
/** Line breaks as text editors read them: CRLF, LF, and a lone CR (classic Mac OS). */
const LINE_BREAK = /\r\n|\n|\r/;

const NUL_PROBLEM = 'a NUL byte; this is not a text file (or is UTF-16 without a byte order mark); save it as UTF-8';

/** The 1-based line of a byte offset: line breaks before it, counted in the bytes (LF, and CR not followed by LF). */
function lineAtByte(bytes: Uint8Array, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset; i++) {
    if (bytes[i] === 0x0a || (bytes[i] === 0x0d && bytes[i + 1] !== 0x0a)) line++;
  }
  return line;
}

/** The offset of the first byte that is not part of well-formed UTF-8. */
function firstBadUtf8(bytes: Uint8Array): number {
  let lo = 0;
  let hi = bytes.length;
  // The longest well-formed prefix, by bisection (a cut inside a character fails too, so step back over it).
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    let end = mid;
    while (end > 0 && end < bytes.length && (bytes[end] & 0xc0) === 0x80) end--;
    try {
      UTF8.decode(bytes.subarray(0, end));
      if (end === lo) break;
      lo = end;
    } catch {
      hi = mid - 1;
    }
  }
  // lo ends at a character boundary where decoding the next character fails.
  return lo;
}

/**
 * The file's text. UTF-8 (a byte order mark dropped) is read; UTF-16 is read when a byte order mark says so
 * (as Windows' Notepad writes "Unicode"). Bytes that are not UTF-8 (Latin-1, say) and NUL bytes (a binary
 * file, or UTF-16 without a mark) are a problem naming the line, not text read wrongly.
 */
function decodeText(bytes: Uint8Array): { text: string } | { problem: string } {
  let text: string;
  const utf16 = bytes[0] === 0xff && bytes[1] === 0xfe ? 'utf-16le' : bytes[0] === 0xfe && bytes[1] === 0xff ? 'utf-16be' : null;
  if (utf16) {
    try {
      text = new TextDecoder(utf16, { fatal: true }).decode(bytes.subarray(2));
    } catch {
      return { problem: `has a UTF-16 byte order mark but is not valid ${utf16.toUpperCase()}; save the file as UTF-8` };
    }
  } else {
    // Before decoding: NUL is a NUL byte in UTF-8, and UTF-16 without a mark shows as NULs before bad bytes.
    const nul = bytes.indexOf(0);
    if (nul >= 0) return { problem: `line ${lineAtByte(bytes, nul)}: ${NUL_PROBLEM}` };
    try {
      text = stripBom(UTF8.decode(bytes));
    } catch {
      const at = firstBadUtf8(bytes);
      return { problem: `line ${lineAtByte(bytes, at)}: byte 0x${bytes[at].toString(16).toUpperCase().padStart(2, '0')} is not UTF-8; save the file as UTF-8` };
    }
  }
  const nul = text.indexOf('\0');
  if (nul >= 0) return { problem: `line ${text.slice(0, nul).split(LINE_BREAK).length}: ${NUL_PROBLEM}` };
  return { text };
}

/** The benchmarks' files are kilobytes to a megabyte; a bigger one is read into memory whole, so refused. */
export const MAX_DATASET_BYTES = 64 * 1024 * 1024;

function readText(file: string, pathField: string, problems: string[]): string | undefined {
  let bytes: Buffer;
  try {
    const stat = fs.statSync(file);
    // A device or a pipe (/dev/zero, a FIFO) would be read forever.
    if (!stat.isFile()) {
      problems.push(`${pathField}: ${file} is not a regular file; give the path of a text file`);
      return undefined;
    }
    if (stat.size > MAX_DATASET_BYTES) {
      problems.push(`${pathField}: file ${file} is ${stat.size} bytes, over the ${MAX_DATASET_BYTES} a dataset file may be`);
      return undefined;
    }
    bytes = fs.readFileSync(file);
  } catch (err) {
    problems.push(`${pathField}: file ${file} cannot be read (${errorText(err)})`);
    return undefined;
  }
  const decoded = decodeText(bytes);
  if ('problem' in decoded) {
    problems.push(`${pathField}: file ${file} ${decoded.problem}`);
    return undefined;
  }
  return decoded.text;
}

function lineOf(problem: string): number {
  const m = /^line (\d+)/.exec(problem);
  return m ? Number(m[1]) : 0;
}

function report(fileProblems: string[], file: string, pathField: string, problems: string[]): void {
  const sorted = [...fileProblems].sort((a, b) => lineOf(a) - lineOf(b));
  for (const p of sorted.slice(0, MAX_LINE_PROBLEMS)) {
    problems.push(`${pathField}: file ${file} ${p.replace(/[\r\n]+/g, ' ')}`);
  }
  if (fileProblems.length > MAX_LINE_PROBLEMS) {
    problems.push(`${pathField}: file ${file} has ${fileProblems.length - MAX_LINE_PROBLEMS} more problems not listed`);
  }
}

/** Non-blank lines with their 1-based line numbers; lines end with CRLF, LF or a lone CR. */
function lines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const raw = text.split(LINE_BREAK);
  for (let i = 0; i < raw.length; i++) {
    if (raw[i].trim() !== '') out.push({ line: i + 1, text: raw[i] });
  }
  return out;
}

/** Index of a header column, matched after trimming and ignoring case; -1 when absent. */
function column(header: string[], ...names: string[]): number {
  const wanted = names.map((n) => n.toLowerCase());
  return header.findIndex((h) => wanted.includes(h.trim().toLowerCase()));
}

function trimmedOrUndefined(value: string): string | undefined {
  const t = value.trim();
  return t === '' ? undefined : t;
}

/** DrawBench: CSV with header Prompts,Category. Categories are trimmed ("Gary Marcus et al. " has a trailing space). */
export function parseDrawBench(text: string): Parsed {
  const rows: Row[] = [];
  if (stripBom(text).trim() === '') return { rows, problems: ['is empty; expected a header line Prompts,Category'] };
  const { records, problems } = parseCsv(text);
  if (records.length === 0) return { rows, problems };
  const [head, ...body] = records;
  const header = head.fields;
  const promptCol = column(header, 'Prompts', 'Prompt');
  const categoryCol = column(header, 'Category');
  const missing = [promptCol < 0 && 'Prompts', categoryCol < 0 && 'Category'].filter(Boolean);
  if (missing.length > 0) {
    problems.push(`line ${head.line}: header ${header.join(',')} has no ${missing.join(' or ')} column; expected Prompts,Category`);
    return { rows, problems };
  }
  for (const r of body) {
    // A line of spaces is as blank as an empty one (which gives no record at all).
    if (r.fields.length === 1 && r.fields[0].trim() === '') continue;
    if (r.fields.length !== header.length) {
      problems.push(
        `line ${r.line}: ${r.fields.length} fields, expected ${header.length} (${header.join(',')}); put a prompt that contains a comma in double quotes`,
      );
      continue;
    }
    const prompt = r.fields[promptCol];
    if (prompt.trim() === '') {
      problems.push(`line ${r.line}: empty prompt`);
      continue;
    }
    rows.push({ line: r.line, prompt, category: trimmedOrUndefined(r.fields[categoryCol]) });
  }
  if (rows.length === 0 && problems.length === 0) problems.push('has a header but no prompts');
  return { rows, problems };
}

/** PartiPrompts: tab-separated, header Prompt, Category, Challenge, Note; no quoting (prompts may contain "). */
export function parsePartiPrompts(text: string): Parsed {
  const problems: string[] = [];
  const rows: Row[] = [];
  const all = lines(text);
  if (all.length === 0) return { rows, problems: ['is empty; expected a header line Prompt<TAB>Category<TAB>Challenge<TAB>Note'] };
  const [head, ...body] = all;
  const header = head.text.split('\t');
  const promptCol = column(header, 'Prompt', 'Prompts');
  const categoryCol = column(header, 'Category');
  const challengeCol = column(header, 'Challenge');
  const missing = [promptCol < 0 && 'Prompt', categoryCol < 0 && 'Category'].filter(Boolean);
  if (missing.length > 0) {
    problems.push(
      `line ${head.line}: header ${header.map((h) => h.trim()).join('<TAB>')} has no ${missing.join(' or ')} column; expected Prompt<TAB>Category<TAB>Challenge<TAB>Note`,
    );
    return { rows, problems };
  }
  for (const l of body) {
    const fields = l.text.split('\t');
    if (fields.length !== header.length) {
      problems.push(`line ${l.line}: ${fields.length} tab-separated fields, expected ${header.length} (${header.map((h) => h.trim()).join(', ')})`);
      continue;
    }
    const prompt = fields[promptCol];
    if (prompt.trim() === '') {
      problems.push(`line ${l.line}: empty prompt`);
      continue;
    }
    const row: Row = { line: l.line, prompt, category: trimmedOrUndefined(fields[categoryCol]) };
    if (challengeCol >= 0) {
      const challenge = trimmedOrUndefined(fields[challengeCol]);
      if (challenge !== undefined) row.challenge = challenge;
    }
    rows.push(row);
  }
  if (rows.length === 0 && problems.length === 0) problems.push('has a header but no prompts');
  return { rows, problems };
}

/** The category of a T2I-CompBench file: its name without "_val.txt" or ".txt" ("color_val.txt" -> "color"). */
export function t2iCategory(file: string): string {
  const base = path.basename(file);
  if (base.endsWith('_val.txt')) return base.slice(0, -'_val.txt'.length);
  if (base.endsWith('.txt')) return base.slice(0, -'.txt'.length);
  return base;
}

/** T2I-CompBench: one prompt per line, CRLF or LF, final newline or not; blank lines are skipped. */
export function parseT2i(text: string, category: string): Parsed {
  const rows = lines(text).map((l) => ({ line: l.line, prompt: l.text, category }));
  return { rows, problems: rows.length === 0 ? ['is empty; expected one prompt per line'] : [] };
}

function genevalObjects(value: unknown): GenevalObject[] | undefined {
  if (!Array.isArray(value)) return undefined;
  for (const o of value) {
    if (!isRecord(o) || typeof o.class !== 'string' || !(typeof o.count === 'number' && Number.isInteger(o.count) && o.count >= 0)) {
      return undefined;
    }
  }
  return value as GenevalObject[];
}

/** GenEval: JSON Lines, each {"tag", "include": [{"class", "count", ...}], "prompt"} (counting lines add "exclude"). */
export function parseGenEval(text: string): Parsed {
  const problems: string[] = [];
  const rows: Row[] = [];
  for (const l of lines(text)) {
    let value: unknown;
    try {
      value = JSON.parse(l.text);
    } catch (err) {
      problems.push(`line ${l.line}: not JSON (${(err as Error).message})`);
      continue;
    }
    if (!isRecord(value)) {
      problems.push(`line ${l.line}: not a JSON object; expected {"tag": ..., "include": [...], "prompt": ...}`);
      continue;
    }
    const wrong: string[] = [];
    if (typeof value.prompt !== 'string' || value.prompt.trim() === '') wrong.push('no "prompt" string');
    if (typeof value.tag !== 'string' || value.tag.trim() === '') wrong.push('no "tag" string');
    const include = genevalObjects(value.include);
    if (include === undefined) wrong.push('"include" is not a list of {"class": string, "count": number} objects');
    const exclude = value.exclude === undefined ? undefined : genevalObjects(value.exclude);
    if (value.exclude !== undefined && exclude === undefined) wrong.push('"exclude" is not a list of {"class": string, "count": number} objects');
    if (wrong.length > 0) {
      problems.push(`line ${l.line}: ${wrong.join('; ')}`);
      continue;
    }
    const geneval: NonNullable<Row['geneval']> = { include: include! };
    if (exclude !== undefined) geneval.exclude = exclude;
    rows.push({ line: l.line, prompt: value.prompt as string, category: (value.tag as string).trim(), geneval });
  }
  if (rows.length === 0 && problems.length === 0) problems.push('is empty; expected one JSON object per line');
  return { rows, problems };
}
