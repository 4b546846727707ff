// What a command's exit status means, in one place: the README's CLI section documents the same table.

/** The work finished (or the command did what it was asked). */
export const EXIT_DONE = 0;
/** The work itself failed: a search or campaign ended failed, a check found a problem. */
export const EXIT_WORK_FAILED = 1;
/** Bad input: a flag, a spec, a model or verifier not hosted. Nothing was started. */
export const EXIT_BAD_INPUT = 2;
/** A service (Temporal, the fleet) could not be reached within --wait. Durable work already started goes on. */
export const EXIT_UNREACHABLE = 3;

/** Interrupted (Ctrl-C) while waiting on durable work, which goes on: 128 + SIGINT, as shells report it. */
export const EXIT_INTERRUPTED = 130;

/** Temporal or the fleet stayed unreachable past --wait: the CLI says which, where, and how to reattach, and exits 3. */
export class ServiceUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServiceUnreachableError';
  }
}
