// The dashboard's HTTP server (node:http, nothing else): the page, its JSON state, the campaign report,
// and the stop / budget / cancel actions, which are refused (403) unless the operator enabled them and the
// request carries the dashboard's token.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WorkflowNotFoundError, WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import { setBudgetUpdate, stopSignal } from '../../workflows/search';
import { renderPage } from './page';
import { DashboardData, type StateOptions } from './state';

export const ACTIONS_DISABLED = 'actions are disabled: this dashboard was started without --allow-actions, so it only watches';
export const TOKEN_REFUSED = 'actions need this dashboard\'s token: open the page through the URL ending in #token=... (printed at start, or built from --action-token-file)';

export interface DashboardOptions extends StateOptions {
  host: string;
  port: number;
  /** How often the state is gathered, and the page asks for it. */
  pollMs?: number;
  /** The token every action must carry (`authorization: Bearer TOKEN`); required with allowActions. */
  actionToken?: string;
}

export interface Dashboard {
  url: string;
  close(): Promise<void>;
}

/** Bodies of actions are a few bytes: anything bigger is not one of ours. */
const MAX_BODY_BYTES = 4096;

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  // A JSON content type cannot be sent cross-origin without a CORS preflight, which this server never
  // grants: so another web page open in the operator's browser cannot post actions here.
  if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) throw new HttpError(415, 'actions take a JSON body (content-type: application/json)');
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'request body too large');
    chunks.push(chunk);
  }
  try {
    const value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (value && typeof value === 'object' && !Array.isArray(value)) return value;
  } catch {
    // Falls through to the one message below.
  }
  throw new HttpError(400, 'the body is not a JSON object');
}

function workflowIdOf(body: Record<string, unknown>): string {
  const id = body.workflowId;
  if (typeof id !== 'string' || id.length === 0 || id.length > 1000) throw new HttpError(400, 'workflowId: a workflow ID is required');
  return id;
}

/** Runs one action on a workflow; Temporal's refusals become messages the page shows. */
async function act(client: Client, action: string, body: Record<string, unknown>): Promise<string> {
  const workflowId = workflowIdOf(body);
  const handle = client.workflow.getHandle(workflowId);
  try {
    if (action === 'stop') {
      await handle.signal(stopSignal);
      return `asked ${workflowId} to stop after its round in flight`;
    }
    if (action === 'budget') {
      const budget = body.budget;
      if (typeof budget !== 'number' || !Number.isSafeInteger(budget) || budget < 1) throw new HttpError(400, 'budget: a whole number of NFEs of at least 1 is required');
      const progress = await handle.executeUpdate(setBudgetUpdate, { args: [budget] });
      return `${workflowId}: budget ${progress.budget} NFEs (${progress.nfeSpent} spent)`;
    }
    if (action === 'cancel') {
      await handle.cancel();
      return `cancelled ${workflowId}`;
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    if (error instanceof WorkflowUpdateFailedError) throw new HttpError(409, error.cause?.message ?? error.message);
    if (error instanceof WorkflowNotFoundError) throw new HttpError(404, `${workflowId}: no running workflow with this ID`);
    throw new HttpError(502, `Temporal: ${String((error as Error)?.message ?? error).split('\n')[0]}`);
  }
  throw new HttpError(404, `"${action}" is not an action; use stop, budget or cancel`);
}

/** Whether the request carries the token: compared as digests in constant time, so timing tells nothing of it. */
function carriesToken(req: IncomingMessage, token: string): boolean {
  const given = /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1] ?? '';
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(given), digest(token));
}

export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  if (options.allowActions && !options.actionToken) throw new Error('startDashboard: allowActions needs an actionToken');
  const pollMs = options.pollMs ?? 2_000;
  const data = new DashboardData(options, pollMs);
  const page = renderPage({ pollMs });
  const server = createServer((req, res) => {
    handle(req, res).catch((error) => {
      const status = error instanceof HttpError ? error.status : 500;
      if (!res.headersSent) sendJson(res, status, { error: String((error as Error)?.message ?? error).split('\n')[0] });
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (req.method === 'GET' && url.pathname === '/') return send(res, 200, 'text/html; charset=utf-8', page);
    if (req.method === 'GET' && url.pathname === '/api/state') return sendJson(res, 200, await data.state());
    if (req.method === 'GET' && url.pathname.startsWith('/report/')) {
      const file = data.reportFile(decodeURIComponent(url.pathname.slice('/report/'.length)));
      if (!file) throw new HttpError(404, 'no report for this campaign on this machine; "noisesearch report ID" writes it');
      return send(res, 200, 'text/html; charset=utf-8', await readFile(file));
    }
    const action = /^\/api\/actions\/([a-z]+)$/.exec(url.pathname)?.[1];
    if (req.method === 'POST' && action) {
      if (!options.allowActions) throw new HttpError(403, ACTIONS_DISABLED);
      if (!carriesToken(req, options.actionToken!)) throw new HttpError(403, TOKEN_REFUSED);
      const message = await act(options.client, action, await readJson(req));
      return sendJson(res, 200, { message });
    }
    throw new HttpError(404, `${req.method} ${url.pathname}: not found`);
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    await data.close();
    throw error;
  }
  const { port } = server.address() as AddressInfo;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    url: `http://${host}:${port}/`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await data.close();
    },
  };
}
