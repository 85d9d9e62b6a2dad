/**
 * The command line's option tables. One table per subcommand gives each option its value kind,
 * default, validation and one line of help; parsing and the help text are both made from it, so they
 * cannot drift apart. node:util parseArgs does the tokenizing underneath (its messages and
 * ERR_PARSE_ARGS_* codes for unknown options and missing values stay what users and tests know);
 * everything after that is here. Our own usage errors are BackendError CLI_USAGE; `--help` (or `-h`)
 * throws CliHelp with the subcommand's help text instead of parsing further.
 */
import { parseArgs } from 'node:util';
import { BackendError } from '../core/errors.ts';

interface OptionBase {
  /** One line for --help. */
  help: string;
  /** The value's placeholder in help text (PATH, N, HEX); flags have none. */
  arg?: string;
  /** Missing is a usage error: true says `--NAME is required`, a string says it in its own words. */
  required?: true | string;
  /** Only meaningful with this other option of the table: `--trace-rings needs --trace FILE`. */
  needs?: string;
  /**
   * Where one table serves sibling subcommands (`trace print|diagram|export|replay`): the ones this
   * option is for. `required` holds only there and help lists it only there; parsing accepts it for
   * every sibling, as it always has.
   */
  for?: readonly string[];
  /** Shown as one `[GROUP]` in the synopsis (trace's filters). */
  group?: string;
}

/** A value as typed, or what `parse` makes of it (parse throws its own CLI_USAGE errors). */
export interface StringOption extends OptionBase {
  kind: 'string';
  default?: string;
  parse?: (raw: string) => unknown;
}

/** Number(raw), then `valid`: else `--NAME must be EXPECT, got 'RAW'`. */
export interface NumberOption extends OptionBase {
  kind: 'number';
  default?: number;
  valid?: (n: number) => boolean;
  expect?: string;
}

/** BigInt(raw) (decimal, 0x, 0o, 0b): else `--NAME must be EXPECT, got 'RAW'`. */
export interface BigIntOption extends OptionBase {
  kind: 'bigint';
  expect: string;
}

/** Present or not; never takes a value. */
export interface FlagOption extends OptionBase {
  kind: 'flag';
}

/** Comma-separated, empty items dropped. */
export interface ListOption extends OptionBase {
  kind: 'list';
  default?: readonly string[];
  /** A word that stands for the empty list (`--probe none`). */
  none?: string;
  /** An error message for an item that is not allowed. */
  checkItem?: (item: string) => string | undefined;
}

/** Given any number of times, in order. */
export interface RepeatableOption extends OptionBase {
  kind: 'repeatable';
}

export type OptionSpec = StringOption | NumberOption | BigIntOption | FlagOption | ListOption | RepeatableOption;
export type OptionTable = Readonly<Record<string, OptionSpec>>;

export interface CommandSpec<T extends OptionTable = OptionTable> {
  /** As typed after the program name: 'net', 'trace replay'. */
  name: string;
  options: T;
  /** The sibling this is, where the table is shared (see OptionBase.for). */
  sub?: string;
  /** Positional arguments, for the help text ('FILE'); without it none are accepted. */
  positionals?: string;
  /** Groups of options of which exactly one must be given. */
  exactlyOne?: readonly (readonly string[])[];
  /** What the command does, a line or two for the help text. */
  summary?: string;
}

type ValueOf<O> = O extends FlagOption
  ? boolean
  : O extends NumberOption
    ? number
    : O extends BigIntOption
      ? bigint
      : O extends ListOption | RepeatableOption
        ? string[]
        : O extends { parse: (raw: string) => infer V }
          ? V
          : string;

type AlwaysSet<O> = O extends FlagOption | RepeatableOption
  ? true
  : O extends { default: unknown }
    ? true
    : O extends { for: readonly string[] }
      ? false
      : O extends { required: true | string }
        ? true
        : false;

export type OptionValues<T extends OptionTable> = {
  -readonly [K in keyof T]: AlwaysSet<T[K]> extends true ? ValueOf<T[K]> : ValueOf<T[K]> | undefined;
};

export interface Parsed<T extends OptionTable> {
  values: OptionValues<T>;
  positionals: string[];
}

/** `--help` was asked for: print `text` and exit 0 (backend/tools/cli.ts main does). */
export class CliHelp extends Error {
  readonly code = 'CLI_HELP';
  constructor(readonly text: string) {
    super('help requested');
    this.name = 'CliHelp';
  }
}

/** `valid`/`expect` for an integer in [min, max]: `--queues must be 1..128, got '0'`. */
export function intRange(min: number, max: number): Pick<NumberOption, 'valid' | 'expect'> {
  return { valid: (n) => Number.isInteger(n) && n >= min && n <= max, expect: `${min}..${max}` };
}

/** A usage error (exit 2 and the usage text, backend/tools/cli.ts main). */
export function usage(msg: string): never {
  throw new BackendError('CLI_USAGE', msg);
}

function appliesTo(o: OptionSpec, sub: string | undefined): boolean {
  return o.for === undefined || sub === undefined || o.for.includes(sub);
}

/** Given with something in it: an empty value counts as missing (`--socket ''`), as it always has. */
function isGiven(v: string | boolean | string[] | undefined): boolean {
  return v !== undefined && v !== '' && v !== false;
}

function flagText(name: string, o: OptionSpec): string {
  return o.arg ? `--${name} ${o.arg}` : `--${name}`;
}

/** The value of one option as given (`raw`), converted and checked. */
function convert(name: string, o: OptionSpec, raw: string | string[] | boolean): unknown {
  const bad = (expect: string, text: string): never => usage(`--${name} must be ${expect}, got '${text}'`);
  switch (o.kind) {
    case 'flag':
    case 'repeatable':
      return raw;
    case 'string':
      return o.parse ? o.parse(raw as string) : raw;
    case 'number': {
      const n = Number(raw);
      if (o.valid && !o.valid(n)) bad(o.expect ?? 'a number', raw as string);
      return n;
    }
    case 'bigint':
      try {
        return BigInt(raw as string);
      } catch {
        return bad(o.expect, raw as string);
      }
    case 'list': {
      if (o.none !== undefined && raw === o.none) return [];
      const items = (raw as string).split(',').filter(Boolean);
      for (const item of items) {
        const why = o.checkItem?.(item);
        if (why !== undefined) usage(why);
      }
      return items;
    }
  }
}

function absent(o: OptionSpec): unknown {
  if (o.kind === 'flag') return false;
  if (o.kind === 'repeatable') return [];
  if (o.kind === 'list' && o.default !== undefined) return [...o.default];
  return 'default' in o ? o.default : undefined;
}

/** Parses `argv` (what follows the subcommand's name) against the command's table. */
export function parseOptions<T extends OptionTable>(cmd: CommandSpec<T>, argv: string[]): Parsed<T> {
  const config: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, o] of Object.entries(cmd.options)) {
    config[name] = o.kind === 'flag' ? { type: 'boolean' } : o.kind === 'repeatable' ? { type: 'string', multiple: true } : { type: 'string' };
  }
  const parsed = parseArgs({ args: argv, options: config, strict: true, allowPositionals: cmd.positionals !== undefined });
  const raw = parsed.values as Record<string, string | boolean | string[] | undefined>;
  if (raw.help) throw new CliHelp(formatHelp([cmd]));
  const values: Record<string, unknown> = {};
  for (const [name, o] of Object.entries(cmd.options)) {
    const given = raw[name];
    if (!isGiven(given) && o.required !== undefined && appliesTo(o, cmd.sub)) {
      usage(o.required === true ? `--${name} is required` : o.required);
    }
    values[name] = given === undefined ? absent(o) : convert(name, o, given);
  }
  for (const [name, o] of Object.entries(cmd.options)) {
    const other = o.needs !== undefined ? cmd.options[o.needs] : undefined;
    if (other && isGiven(raw[name]) && !isGiven(raw[o.needs!])) usage(`--${name} needs ${flagText(o.needs!, other)}`);
  }
  for (const group of cmd.exactlyOne ?? []) {
    if (group.filter((name) => isGiven(raw[name])).length !== 1) {
      const names = group.map((name) => flagText(name, cmd.options[name]!));
      usage(`${cmd.name} needs exactly one of ${names.slice(0, -1).join(', ')} or ${names.at(-1)}`);
    }
  }
  return { values: values as OptionValues<T>, positionals: parsed.positionals };
}

const WIDTH = 100;

/** `vhost-user-ts CMD FILE --socket PATH [--client] ...`, wrapped under the command's name. */
export function formatSynopsis(cmd: CommandSpec): string {
  const head = `  vhost-user-ts ${cmd.name}${cmd.positionals ? ` ${cmd.positionals}` : ''}`;
  const words: string[] = [];
  const done = new Set<string>();
  for (const [name, o] of Object.entries(cmd.options)) {
    if (done.has(name) || !appliesTo(o, cmd.sub)) continue;
    const one = cmd.exactlyOne?.find((g) => g.includes(name));
    if (one) {
      for (const n of one) done.add(n);
      words.push(`(${one.map((n) => flagText(n, cmd.options[n]!)).join(' | ')})`);
    } else if (o.group !== undefined) {
      if (!done.has(`[${o.group}]`)) words.push(`[${o.group}]`);
      done.add(`[${o.group}]`);
    } else if (o.required !== undefined) words.push(flagText(name, o));
    else words.push(`[${flagText(name, o)}]${o.kind === 'repeatable' ? '...' : ''}`);
  }
  const indent = ' '.repeat(Math.min(head.length + 1, 40));
  const lines = [head];
  for (const w of words) {
    const last = lines.length - 1;
    if (lines[last]!.length + 1 + w.length > WIDTH) lines.push(indent + w);
    else lines[last] += ` ${w}`;
  }
  return lines.join('\n');
}

/** One line per option: flag and placeholder, help, and the default where there is one. */
export function formatOptions(tables: readonly CommandSpec[]): string {
  const rows: [string, string][] = [];
  const seen = new Set<string>();
  for (const cmd of tables) {
    for (const [name, o] of Object.entries(cmd.options)) {
      if (seen.has(name) || !appliesTo(o, cmd.sub)) continue;
      seen.add(name);
      const d = absent(o);
      const shown = Array.isArray(d) ? (d.length ? d.join(',') : undefined) : typeof d === 'boolean' ? undefined : d;
      const extra = [
        o.kind === 'repeatable' ? 'repeatable' : undefined,
        shown !== undefined ? `default ${/ /.test(String(shown)) ? `'${String(shown)}'` : String(shown)}` : undefined,
        o.group,
        o.needs !== undefined ? `with --${o.needs}` : undefined,
      ].filter((s) => s !== undefined);
      rows.push([`  ${flagText(name, o)}`, `${o.help}${extra.length ? ` (${extra.join(', ')})` : ''}`]);
    }
  }
  const w = Math.max(...rows.map(([f]) => f.length)) + 2;
  return rows.map(([f, h]) => wrap(h, WIDTH - w).map((l, i) => (i === 0 ? f.padEnd(w) : ' '.repeat(w)) + l).join('\n')).join('\n');
}

/** Words of `text` in lines of at most `width` characters (a longer word stands alone). */
function wrap(text: string, width: number): string[] {
  const lines = [''];
  for (const word of text.split(' ')) {
    const last = lines.length - 1;
    if (lines[last] === '') lines[last] = word;
    else if (lines[last]!.length + 1 + word.length > width) lines.push(word);
    else lines[last] += ` ${word}`;
  }
  return lines;
}

/** The synopses of one command or of siblings sharing a table, then what they do. */
export function formatSynopses(cmds: readonly CommandSpec[]): string {
  const summary = cmds.find((c) => c.summary)?.summary;
  return [...cmds.map(formatSynopsis), ...(summary ? [summary.replace(/^/gm, '      ')] : [])].join('\n');
}

/** The help text of one command, or of siblings sharing a table (`trace`): synopses, summary, options. */
export function formatHelp(cmds: readonly CommandSpec[]): string {
  return ['usage:', formatSynopses(cmds), '', formatOptions(cmds), ''].join('\n');
}
