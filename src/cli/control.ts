// Durable control of a running search: its progress, a stop with the best so far, a new budget.
import { Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { serviceStatus } from '../embedded/services';
import { connectTemporal, TEMPORAL_CONNECTION_FLAGS, TEMPORAL_CONNECTION_HELP, temporalSecurityFromFlags } from '../temporal/connection';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { describeWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';
import { progressQuery, setBudgetUpdate, stopSignal } from '../../workflows/search';
import { parseFlags, UsageError, wholeNumber } from './args';
import { Outage, parseWait, temporalAnswers, WAIT_FLAG, WAIT_HELP } from './outage';

const CONTROL_USAGE = 'noisesearch progress|stop ID | noisesearch budget ID NFES [--temporal host:port] [--namespace NS] [--wait DURATION]';
const CONTROL_HELP = `Controls a search that is running (ID: its workflow ID, as search prints it).

Usage:
  noisesearch progress ID       NFEs spent, budget, best so far, round, and whether it waits for model servers (JSON)
  noisesearch stop ID           end the search after the round in flight, with the best so far
  noisesearch budget ID NFES    raise or lower the budget; refused below what is spent or committed

  --temporal ADDR   Temporal frontend (default $TEMPORAL_ADDRESS, else the embedded dev server if running)
  --namespace NS    Temporal namespace (default "${DEFAULT_NAMESPACE}")
${WAIT_HELP}${TEMPORAL_CONNECTION_HELP}`;

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
  return async (argv: string[]): Promise<number> => {
    const { values, positionals } = parseFlags(argv, { temporal: { type: 'string' }, namespace: { type: 'string' }, ...WAIT_FLAG, ...TEMPORAL_CONNECTION_FLAGS }, CONTROL_USAGE);
    if (values.help) {
      process.stdout.write(CONTROL_HELP);
      return 0;
    }
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
        process.stdout.write(`asked ${positionals[0]} to stop after its round in flight\n`);
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
