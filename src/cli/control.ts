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

const CONTROL_USAGE = 'noisesearch progress|stop ID | noisesearch budget ID NFES [--temporal host:port] [--namespace NS]';
export const CONTROL_FLAGS: readonly Flag[] = [
  ...temporalFlags('the embedded dev server if running', DEFAULT_NAMESPACE),
  WAIT_FLAG,
  JSON_FLAG,
  ...TEMPORAL_CONNECTION_FLAGS,
];

/** A client for the Temporal the user names (--temporal, else $TEMPORAL_ADDRESS), else the running embedded dev server. */
export async function connectClient(flags: Record<string, unknown>): Promise<Client> {
  let address = (flags.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS;
  // Read (and refused in one line) before anything connects; the embedded dev server takes none of it.
  let security = address ? temporalSecurityFromFlags(flags) : {};
  if (!address) {
    const embedded = (await serviceStatus()).find((s) => s.name === 'temporal' && s.ready);
    if (!embedded) throw new UsageError('no Temporal server: give --temporal host:port, set TEMPORAL_ADDRESS, or run "noisesearch server start"');
    address = embedded.address;
    security = {};
  }
  return new Client({ connection: await connectTemporal(address, security), namespace: (flags.namespace as string | undefined) ?? DEFAULT_NAMESPACE });
}

export function controlCommand(action: 'progress' | 'stop' | 'budget') {
  return async (values: FlagValues, positionals: string[]): Promise<number> => {
    const wanted = action === 'budget' ? 2 : 1;
    if (positionals.length !== wanted) throw new UsageError(`${action} takes ${action === 'budget' ? 'a workflow ID and a budget in NFEs' : 'one workflow ID'}; usage: ${CONTROL_USAGE}`);
    const budget = action === 'budget' ? wholeNumber('budget', positionals[1], { min: 1 })! : 0;
    const client = await connectClient(values);
    try {
      const handle = client.workflow.getHandle(positionals[0]);
      if (action === 'progress') {
        const [progress, waiting] = await Promise.all([handle.query(progressQuery), fleetWait(handle)]);
        process.stdout.write(`${JSON.stringify({ ...progress, waiting: waiting && { ...waiting, message: describeWait(waiting) } })}\n`);
      }
      else if (action === 'stop') {
        await handle.signal(stopSignal);
        // The message is for the person at the terminal; a script asked for --json gets the fact on stdout.
        if (values.json) process.stdout.write(`${JSON.stringify({ workflowId: positionals[0], stopRequested: true })}\n`);
        else process.stderr.write(`asked ${positionals[0]} to stop after its round in flight\n`);
      } else {
        try {
          const progress = await handle.executeUpdate(setBudgetUpdate, { args: [budget] });
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
