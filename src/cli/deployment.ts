// Where a command's searches run: the embedded services (started or reused), or a Temporal cluster and
// model servers the user names. Whatever a deployment starts, it stops on close.
import { Client } from '@temporalio/client';
import type { NativeConnection, Worker } from '@temporalio/worker';
import { ensureEmbedded, stopEmbedded, type ServiceName } from '../embedded/services';
import { Fleet, parseFleet } from '../fleet/client';
import type { FleetTls } from '../fleet/tls';
import { connectTemporal, connectTemporalWorker, type TemporalSecurity } from '../temporal/connection';
import { ensureNamespace } from '../temporal/client';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { createSearchWorker, installQuietRuntime } from '../temporal/worker';
import { isUnreachable, Outage, temporalAnswers } from './outage';
import { abortable } from './waiting';

export interface DeploymentOptions {
  /** Temporal is needed unless the search runs in-process. */
  temporal: boolean;
  temporalAddress?: string;
  namespace?: string;
  fleet?: string;
  /** TLS to the fleet named by `fleet` (the embedded model server speaks plaintext). */
  fleetTls?: FleetTls;
  /** TLS or an API key for the Temporal at `temporalAddress` (the embedded dev server speaks plaintext). */
  temporalSecurity?: TemporalSecurity;
  /** Run no worker in this process even with a fleet at hand (workers run elsewhere). */
  noWorker?: boolean;
  /** How long to wait for an unreachable Temporal (--wait) before exit 3; default for ever. */
  waitMs?: number;
  /** Ctrl-C: stops any waiting. */
  signal?: AbortSignal;
  log: (line: string) => void;
}

export interface Deployment {
  fleet: Fleet | null;
  client: Client | null;
  worker: Worker | null;
  namespace: string;
  /** The workflow's page in the embedded Temporal UI, in the namespace in use; undefined for a cluster. */
  workflowUrl(workflowId: string): string | undefined;
  /** Waiting out Temporal outages, with `reattach` said when the wait is given up. */
  outage(reattach: string): Outage;
  /**
   * Runs `work` while the in-process worker (if any) polls, then stops the worker. A worker that fails while
   * `work` goes on (Temporal away longer than the SDK's retries) is made again once `outage` sees Temporal back.
   */
  run<T>(work: Promise<T>, outage?: Outage): Promise<T>;
  /**
   * Makes a long client call (a workflow's result) that close() cancels before it closes the connection. A
   * call the close cuts instead ends UNAVAILABLE, which the SDK's retry interceptor retries on the closed
   * channel from a timer: an uncaught exception, the stack trace a Ctrl-C used to print.
   */
  call<T>(call: () => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export async function openDeployment(options: DeploymentOptions): Promise<Deployment> {
  installQuietRuntime();
  const namespace = options.namespace ?? DEFAULT_NAMESPACE;
  const embeddedTemporal = options.temporal && !options.temporalAddress;
  const embeddedFleet = !options.fleet && !options.noWorker && (embeddedTemporal || !options.temporal);
  let started: ServiceName[] = [];
  let fleetAddresses = options.fleet ? parseFleet(options.fleet) : null;
  let temporalAddress = options.temporalAddress;
  let uiUrl: string | undefined;
  if (embeddedTemporal || embeddedFleet) {
    const embedded = await ensureEmbedded({ temporal: embeddedTemporal, modelServer: embeddedFleet, log: options.log });
    started = embedded.started;
    if (embeddedFleet) fleetAddresses = embedded.fleet;
    if (embeddedTemporal) temporalAddress = embedded.temporalAddress;
    uiUrl = embedded.uiUrl;
  }
  const fleet = fleetAddresses ? new Fleet(fleetAddresses, { tls: options.fleet ? options.fleetTls : undefined }) : null;
  let client: Client | null = null;
  let worker: Worker | null = null;
  let nativeConnection: NativeConnection | null = null;
  const security = embeddedTemporal ? {} : options.temporalSecurity;
  const outage = (reattach: string) =>
    new Outage({
      what: 'Temporal',
      address: temporalAddress ?? '127.0.0.1:7233',
      hint: embeddedTemporal ? 'restart it: noisesearch server start' : 'is its frontend running?',
      waitMs: options.waitMs ?? Number.POSITIVE_INFINITY,
      reattach,
      probe: () => temporalAnswers(temporalAddress ?? '127.0.0.1:7233', security),
      signal: options.signal,
    });
  if (options.temporal) {
    const connection = await outage('nothing was started').connecting(() => connectTemporal(temporalAddress, security));
    // The embedded dev server is ours to set up: a namespace asked for is created. A cluster's are not.
    if (embeddedTemporal) await ensureNamespace(connection, namespace);
    client = new Client({ connection, namespace });
    if (fleet && !options.noWorker) {
      nativeConnection = await connectTemporalWorker(temporalAddress, security);
      worker = await createSearchWorker({ connection: nativeConnection, fleet, namespace });
    }
  }
  const closing = new AbortController();
  return {
    fleet,
    client,
    worker,
    namespace,
    workflowUrl: (workflowId) => uiUrl && `${uiUrl}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(workflowId)}`,
    outage,
    async run<T>(work: Promise<T>, waiting?: Outage): Promise<T> {
      let settled = false;
      work.then(() => (settled = true), () => (settled = true));
      for (;;) {
        if (!worker) return work;
        try {
          return await worker.runUntil(work);
        } catch (error) {
          // Only an outage is waited out: a worker failing with Temporal there is the command's failure, not a loop.
          if (settled || !waiting || !nativeConnection || !fleet) throw error;
          if (!isUnreachable(error) && (await temporalAnswers(temporalAddress ?? '127.0.0.1:7233', security))) throw error;
          await waiting.waitUntilBack();
          worker = await waiting.retrying(() => createSearchWorker({ connection: nativeConnection!, fleet, namespace }));
        }
      }
    },
    call: (call) => (client ? abortable(client, closing.signal, call) : call()),
    async close() {
      closing.abort();
      fleet?.close();
      await client?.connection.close();
      // A worker that never ran (the command failed first) still holds its connection: run it out.
      if (worker?.getState() === 'INITIALIZED') await worker.runUntil(Promise.resolve());
      await nativeConnection?.close();
      if (started.length > 0) await stopEmbedded(started);
    },
  };
}
