// Declarative flag tables: each command's flags with their value placeholder, description and help group.
// The commander program (src/cli/program.ts) parses with them, generates every --help from them, and the
// shell completion (src/cli/completion.ts) completes from the same tree, so the three never disagree.

export interface Flag {
  /** The long kebab-case name without "--": the key a command body reads in `values`. */
  name: string;
  /** The value's placeholder in help (e.g. "NFES"); absent for a flag that takes no value. */
  value?: string;
  description: string;
  /** The values a flag takes, offered by completion; the command body checks them and says why in one line. */
  choices?: readonly string[];
  /** May be given more than once: the body reads every value, in order, as an array. */
  repeatable?: boolean;
  /** The value names a file: the shell completes file names. */
  file?: boolean;
  /** The heading it is listed under in help (default "Options:"). */
  group?: string;
}

/** What a command body reads: each flag given, by its long name (a repeatable one as an array). */
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace'] as const;

/** On every command: read by the logging set-up through NOISESEARCH_LOG_LEVEL, which main sets from it. */
export const LOG_LEVEL_FLAG: Flag = {
  name: 'log-level',
  value: 'LEVEL',
  choices: LOG_LEVELS,
  description: `how much goes to the log file in the state folder: ${LOG_LEVELS.join(', ')} (default info)`,
};

export const WAIT_FLAG: Flag = {
  name: 'wait',
  value: 'DURATION',
  description: 'how long to wait for an unreachable Temporal or fleet before exiting 3 (e.g. 30s, 5m; default: wait)',
};

export const JSON_FLAG: Flag = { name: 'json', description: 'print the result as JSON on stdout' };

/** The flags naming a Temporal frontend, as every command that talks to Temporal takes them. */
export function temporalFlags(fallback: string, namespaceDefault: string): Flag[] {
  return [
    { name: 'temporal', value: 'ADDR', description: `Temporal frontend host:port (default $TEMPORAL_ADDRESS, else ${fallback})` },
    { name: 'namespace', value: 'NS', description: `Temporal namespace (default "${namespaceDefault}")` },
  ];
}

/** Flags under one help heading. */
export function grouped(group: string, flags: readonly Flag[]): Flag[] {
  return flags.map((flag) => ({ ...flag, group }));
}

/** A positional argument, for help and completion; the command body checks it. */
export interface Argument {
  name: string;
  description: string;
  /** The words it takes (an action), offered by completion. */
  choices?: readonly string[];
  /** Completion offers file names. */
  file?: boolean;
  optional?: boolean;
}

/** A command: what help says of it, its arguments and flags, and the body that runs it. */
export interface CommandSpec {
  name: string;
  /** One line, in the program's list of commands. */
  summary: string;
  /** More, at the top of the command's own help (default: the summary). */
  description?: string;
  arguments?: readonly Argument[];
  flags: readonly Flag[];
  /** Examples and notes after the flags in the command's help. */
  helpAfter?: string;
  run(values: FlagValues, positionals: string[]): Promise<number>;
}
