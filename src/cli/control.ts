// Durable control of a running search: its progress, a stop with the best so far, a new budget.
import { Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { serviceStatus } from '../embedded/services';
import { connectTemporal, TEMPORAL_CONNECTION_FLAGS, temporalSecurityFromFlags } from '../temporal/connection';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { describeWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';
import { progressQuery, setBudgetUpdate, stopSignal } from '../../workflows/search';
import { UsageError, wholeNumber } from './args';
import { JSON_FLAG, temporalFlags, WAIT_FLAG, type Flag, type FlagValues } from './flags';
import { Outage, parseWait, temporalAnswers } from './outage';

const CONTROL_USAGE = 'noisesearch progress|stop ID | noisesearch budget ID NFES [--temporal host:port] [--namespace NS]';
export const CONTROL_FLAGS: readonly Flag[] = [
  ...temporalFlags('the embedded dev server if running', DEFAULT_NAMESPACE),
  WAIT_FLAG,
  JSON_FLAG,
  ...TEMPORAL_CONNECTION_FLAGS,
];

/** A client for the Temporal the user names (--temporal, else $TEMPORAL_ADDRESS), else the running embedded dev server. */
export async function connectClient(flags: Record<string, unknown>): Promise<Client> {
  return (await connectWaiting(flags, 'nothing was changed')).client;
}

/**
 * connectClient, waiting for a Temporal that is away (the embedded one recorded but down, too) up to --wait;
 * the outage goes on serving the command's calls.
 */
export async function connectWaiting(flags: Record<string, unknown>, reattach: string): Promise<{ client: Client; outage: Outage }> {
  let address = (flags.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS;
  // Read (and refused in one line) before anything connects; the embedded dev server takes none of it.
  let security = address ? temporalSecurityFromFlags(flags) : {};
  const waitMs = parseWait(flags.wait as string | undefined);
  let hint = 'is its frontend running?';
  if (!address) {
    const embedded = (await serviceStatus()).find((s) => s.name === 'temporal');
    if (!embedded) throw new UsageError('no Temporal server: give --temporal host:port, set TEMPORAL_ADDRESS, or run "noisesearch server start"');
    address = embedded.address;
    security = {};
    hint = 'restart it: noisesearch server start';
  }
  const at = address;
  const outage = new Outage({ what: 'Temporal', address: at, hint, waitMs, reattach, probe: () => temporalAnswers(at, security) });
  const connection = await outage.connecting(() => connectTemporal(at, security));
  return { client: new Client({ connection, namespace: (flags.namespace as string | undefined) ?? DEFAULT_NAMESPACE }), outage };
}

export function controlCommand(action: 'progress' | 'stop' | 'budget') {
  return async (values: FlagValues, positionals: string[]): Promise<number> => {
    const wanted = action === 'budget' ? 2 : 1;
    if (positionals.length !== wanted) throw new UsageError(`${action} takes ${action === 'budget' ? 'a workflow ID and a budget in NFEs' : 'one workflow ID'}; usage: ${CONTROL_USAGE}`);
    const budget = action === 'budget' ? wholeNumber('budget', positionals[1], { min: 1 })! : 0;
    const { client, outage } = await connectWaiting(values, action === 'progress' ? 'nothing was changed' : `${positionals[0]} was not asked; run this command again`);
    try {
      const handle = client.workflow.getHandle(positionals[0]);
      if (action === 'progress') {
        const [progress, waiting] = await Promise.race([outage.retrying(() => Promise.all([handle.query(progressQuery), fleetWait(handle)])), outage.failure]);
        process.stdout.write(`${JSON.stringify({ ...progress, waiting: waiting && { ...waiting, message: describeWait(waiting) } })}\n`);
      }
      else if (action === 'stop') {
        await Promise.race([outage.retrying(() => handle.signal(stopSignal)), outage.failure]);
        // The message is for the person at the terminal; a script asked for --json gets the fact on stdout.
        if (values.json) process.stdout.write(`${JSON.stringify({ workflowId: positionals[0], stopRequested: true })}\n`);
        else process.stderr.write(`asked ${positionals[0]} to stop after its round in flight\n`);
      } else {
        try {
          const progress = await Promise.race([outage.retrying(() => handle.executeUpdate(setBudgetUpdate, { args: [budget] })), outage.failure]);
          process.stdout.write(`${JSON.stringify(progress)}\n`);
        } catch (error) {
          if (error instanceof WorkflowUpdateFailedError) throw new UsageError(error.cause?.message ?? error.message);
          throw error;
        }
      }
      return 0;
    } finally {
      await client.connection.close();
    }
  };
}
