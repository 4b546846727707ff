// Durable control of a running search: its progress, a stop with the best so far, a new budget.
import { Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { serviceStatus } from '../embedded/services';
import { connectTemporal, TEMPORAL_CONNECTION_FLAGS, TEMPORAL_CONNECTION_HELP, temporalSecurityFromFlags } from '../temporal/connection';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { describeWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';
import { progressQuery, setBudgetUpdate, stopSignal } from '../../workflows/search';
import { parseFlags, UsageError, wholeNumber } from './args';

const CONTROL_USAGE = 'noisesearch progress|stop ID | noisesearch budget ID NFES [--temporal host:port] [--namespace NS] [--json]';
const CONTROL_HELP = `Controls a search that is running (ID: its workflow ID, as search prints it).

Usage:
  noisesearch progress ID       NFEs spent, budget, best so far, round, and whether it waits for model servers (JSON)
  noisesearch stop ID           end the search after the round in flight, with the best so far
  noisesearch budget ID NFES    raise or lower the budget; refused below what is spent or committed

  --temporal ADDR   Temporal frontend (default $TEMPORAL_ADDRESS, else the embedded dev server if running)
  --namespace NS    Temporal namespace (default "${DEFAULT_NAMESPACE}")
  --json            one JSON object on stdout (progress and budget print JSON anyway; stop prints
                    {"workflowId": ID, "stopRequested": true} instead of its message on stderr)
${TEMPORAL_CONNECTION_HELP}`;

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
  return async (argv: string[]): Promise<number> => {
    const { values, positionals } = parseFlags(argv, { temporal: { type: 'string' }, namespace: { type: 'string' }, json: { type: 'boolean' }, ...TEMPORAL_CONNECTION_FLAGS }, CONTROL_USAGE);
    if (values.help) {
      process.stdout.write(CONTROL_HELP);
      return 0;
    }
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
