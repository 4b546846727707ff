// The command line as one commander program, built from the commands' declarative tables (src/cli/flags.ts):
// commander parses, generates every --help and suggests the closest flag or command; it never prints an
// error or exits itself (configureOutput, exitOverride), so main says each refusal in one line and picks
// the exit status. Command bodies get `values` keyed by long flag names and `positionals`, as before.
import { Argument as CommanderArgument, Command, CommanderError, Option } from 'commander';
import { LOG_LEVEL_FLAG, type Argument, type CommandSpec, type Flag, type FlagValues } from './flags';

export const PROGRAM_NAME = 'noisesearch';

/** What the command line asks for: a command to run with its flags and arguments. */
export interface ParsedCommand {
  spec: CommandSpec;
  values: FlagValues;
  positionals: string[];
}

/** Commander refused the command line (or showed help): `command` is the command it was parsing, '' for the program. */
export class CommandLineError extends Error {
  constructor(
    readonly command: string,
    readonly commander: CommanderError,
  ) {
    super(commander.message);
    this.name = 'CommandLineError';
  }

  /** Help was asked for (or `help`) and written to stdout. */
  get helpShown(): boolean {
    return this.commander.code === 'commander.helpDisplayed' || (this.commander.code === 'commander.help' && this.commander.exitCode === 0);
  }

  /** No command given: the program's help went to stderr. */
  get noCommand(): boolean {
    return this.commander.code === 'commander.help' && this.commander.exitCode !== 0;
  }

  /**
   * Commander's message in one line: "error: unknown option '--bugdet'\n(Did you mean --budget?)" becomes
   * "unknown option '--bugdet' (did you mean --budget?)", then where help is.
   */
  oneLine(): string {
    const message = this.commander.message
      .replace(/^error: /, '')
      .replace(/\s*\n\s*\(Did you mean/g, ' (did you mean')
      // A word quoted from the command line stays short and on the line (it may hold a line break).
      .replace(/'([^']{80})[^']+'/g, "'$1…'")
      .replace(/\s*[\r\n\u2028\u2029]\s*/g, ' ')
      .replace(/\.$/, '');
    return `${message}; see "${PROGRAM_NAME}${this.command ? ` ${this.command}` : ''} --help"`;
  }
}

/** The table entry behind each commander option and argument, for completion (choices, files). */
const flagOfOption = new WeakMap<Option, Flag>();
const argumentOfArgument = new WeakMap<CommanderArgument, Argument>();

export function flagOf(option: Option): Flag | undefined {
  return flagOfOption.get(option);
}

export function argumentOf(argument: CommanderArgument): Argument | undefined {
  return argumentOfArgument.get(argument);
}

function option(flag: Flag): Option {
  const option = new Option(`--${flag.name}${flag.value ? ` <${flag.value}>` : ''}`, flag.description);
  if (flag.repeatable) option.argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]);
  if (flag.group) option.helpGroup(flag.group);
  flagOfOption.set(option, flag);
  return option;
}

/** The flags given on the command line (not defaults), by long name, of the command and those above it. */
function flagValues(command: Command): FlagValues {
  const values: FlagValues = {};
  for (let c: Command | null = command; c; c = c.parent) {
    for (const o of c.options) {
      const key = o.attributeName();
      if (c.getOptionValueSource(key) !== 'cli' || o.long === undefined) continue;
      // --no-worker is a flag of its own to the bodies, not commander's negation of a --worker.
      values[o.long.slice(2)] ??= o.negate ? true : (c.getOptionValue(key) as string | boolean | string[]);
    }
  }
  return values;
}

/**
 * The program: one subcommand per spec, each with its flags, and --log-level on all of them. `chosen`
 * receives the command the line asks for; it runs after parsing, outside commander.
 */
export interface ProgramTexts {
  description: string;
  /** After the list of commands: where to read more, the exit statuses. */
  helpAfter: string;
}

export function buildProgram(specs: readonly CommandSpec[], texts: ProgramTexts, chosen: (parsed: ParsedCommand) => void = () => undefined): Command {
  const program = new Command(PROGRAM_NAME)
    .description(texts.description)
    .configureOutput({
      writeOut: (text) => process.stdout.write(text),
      writeErr: (text) => process.stderr.write(text),
      // main writes the one line: commander's own would be two ("error: ...", "(Did you mean ...)").
      outputError: () => undefined,
    })
    .configureHelp({ showGlobalOptions: true })
    .showSuggestionAfterError(true)
    .addOption(option(LOG_LEVEL_FLAG))
    .addHelpText('after', texts.helpAfter);
  program.exitOverride((error) => {
    throw new CommandLineError('', error);
  });
  for (const spec of specs) {
    const command = program.command(spec.name).summary(spec.summary).description(spec.description ?? spec.summary);
    command.exitOverride((error) => {
      throw new CommandLineError(spec.name, error);
    });
    for (const argument of spec.arguments ?? []) {
      const declared = new CommanderArgument(argument.optional ? `[${argument.name}]` : `<${argument.name}>`, argument.description);
      argumentOfArgument.set(declared, argument);
      command.addArgument(declared);
    }
    for (const flag of spec.flags) command.addOption(option(flag));
    if (spec.helpAfter) command.addHelpText('after', spec.helpAfter);
    command.action((...args: unknown[]) => {
      const self = args[args.length - 1] as Command;
      chosen({ spec, values: flagValues(self), positionals: self.args });
    });
  }
  return program;
}

/** Parses argv (without node and the script): the command to run, or a CommandLineError. */
export async function parseCommandLine(specs: readonly CommandSpec[], texts: ProgramTexts, argv: string[]): Promise<ParsedCommand> {
  let parsed: ParsedCommand | undefined;
  await buildProgram(specs, texts, (chosen) => (parsed = chosen)).parseAsync(argv, { from: 'user' });
  // Commander either reaches a command's action or throws: this says so should that ever change.
  if (!parsed) throw new Error('the command line named no command');
  return parsed;
}
