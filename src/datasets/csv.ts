// A small RFC 4180 CSV reader: fields separated by commas, records by CRLF, LF or a lone CR (classic Mac OS); a field in double
// quotes may hold commas, line breaks and doubled quotes (""). A UTF-8 byte order mark is dropped.
// Every record carries the (1-based) line it starts on, so problems can name the line.

export interface CsvRecord {
  /** The physical line (1-based) the record starts on. */
  line: number;
  fields: string[];
}

export interface CsvResult {
  records: CsvRecord[];
  /** Each problem as "line N: what is wrong". */
  problems: string[];
}

export function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * Parses CSV text. Blank lines (no characters at all between line breaks) give no record; a final line
 * break is optional. A quote inside an unquoted field is kept as text (lenient, as most readers are);
 * text after a closing quote and an unterminated quoted field are problems.
 */
export function parseCsv(input: string): CsvResult {
  const text = stripBom(input);
  const records: CsvRecord[] = [];
  const problems: string[] = [];
  const n = text.length;
  let i = 0;
  let line = 1;

  while (i < n) {
    const startLine = line;
    // A blank line gives no record.
    if (text[i] === '\n') {
      i += 1;
      line += 1;
      continue;
    }
    if (text[i] === '\r') {
      i += text[i + 1] === '\n' ? 2 : 1;
      line += 1;
      continue;
    }
    const fields: string[] = [];
    let recordDone = false;
    let broken = false;
    while (!recordDone) {
      let field = '';
      if (text[i] === '"') {
        const quoteLine = line;
        i += 1;
        let closed = false;
        while (i < n) {
          const c = text[i];
          if (c === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
            } else {
              i += 1;
              closed = true;
              break;
            }
          } else {
            if (c === '\n' || (c === '\r' && text[i + 1] !== '\n')) line += 1;
            field += c;
            i += 1;
          }
        }
        if (!closed) {
          problems.push(`line ${quoteLine}: a quoted field is never closed (no matching ")`);
          broken = true;
          i = n;
        } else if (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          problems.push(`line ${line}: text after the closing quote of a field (write a quote inside a quoted field as "")`);
          broken = true;
          // Skip to the end of this physical line and go on with the next record.
          while (i < n && text[i] !== '\n' && text[i] !== '\r') i += 1;
        }
      } else {
        const start = i;
        while (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') i += 1;
        field = text.slice(start, i);
      }
      fields.push(field);
      if (i >= n) {
        recordDone = true;
      } else if (text[i] === ',') {
        i += 1;
      } else if (text[i] === '\n') {
        i += 1;
        line += 1;
        recordDone = true;
      } else if (text[i] === '\r') {
        i += text[i + 1] === '\n' ? 2 : 1;
        line += 1;
        recordDone = true;
      }
    }
    if (!broken) records.push({ line: startLine, fields });
  }
  return { records, problems };
}
