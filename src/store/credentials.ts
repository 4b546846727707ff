// A PostgreSQL store's password stays out of everything that is kept or sent: the campaign record on disk,
// the campaign's workflow input (and so Temporal's history), the store's own rows, exports and reports carry
// its URL without the password. The password lives in this process's memory (taken from the URL the user
// gave), or comes from the environment where the store is opened: NOISESEARCH_STORE_URL (the same URL with
// its password) or PGPASSWORD, which node-postgres reads itself. docs/security.md.
import type { StoreConfig } from './types';

const passwords = new Map<string, string>();

function parse(url: string): URL | null {
  try {
    return new URL(url);
  } catch {
    return null;
  }
}

/** The URL with no password in it (unchanged when it has none, or does not parse). */
export function withoutPassword(url: string): string {
  const parsed = parse(url);
  if (!parsed || !parsed.password) return url;
  parsed.password = '';
  return parsed.toString();
}

/** The URL as it may be shown: its password, if any, as "***". */
export function redactUrl(url: string): string {
  const parsed = parse(url);
  if (!parsed || !parsed.password) return url;
  parsed.password = '***';
  return parsed.toString();
}

/** Text with every occurrence of the URL's password (raw and percent-encoded) replaced by "***". */
export function redactPassword(text: string, url: string): string {
  const password = parse(url)?.password;
  if (!password) return text;
  let redacted = text;
  for (const form of new Set([password, decodeURIComponent(password)])) redacted = redacted.split(form).join('***');
  return redacted;
}

/**
 * The store as it may be kept and sent: a PostgreSQL URL's password is remembered here, in memory, for this
 * process's own opening of the store, and taken out of the config.
 */
export function shareableStore(config: StoreConfig): StoreConfig {
  if (config.kind !== 'postgres') return config;
  const password = parse(config.url)?.password;
  const url = withoutPassword(config.url);
  if (password) passwords.set(url, decodeURIComponent(password));
  return { kind: 'postgres', url };
}

/**
 * The URL to connect with: the one given if it has a password; else with the password remembered for it,
 * or that of NOISESEARCH_STORE_URL when it names the same user, host and database; else as given (and
 * node-postgres falls back to PGPASSWORD).
 */
export function connectionUrl(url: string, env: NodeJS.ProcessEnv = process.env): string {
  const parsed = parse(url);
  if (!parsed || parsed.password) return url;
  const key = parsed.toString();
  let password = passwords.get(key);
  const fromEnv = env.NOISESEARCH_STORE_URL ? parse(env.NOISESEARCH_STORE_URL) : null;
  if (password === undefined && fromEnv?.password && withoutPassword(fromEnv.toString()) === key) password = decodeURIComponent(fromEnv.password);
  if (password === undefined) return url;
  parsed.password = encodeURIComponent(password);
  return parsed.toString();
}
