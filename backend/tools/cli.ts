/**
 * vhost-user-ts command line: `net` (here), `trace print|diagram|export|replay` and `proxy`
 * (trace/cli.ts), `conform` (conform/cli.ts). Each subcommand's options are a table (options.ts) that
 * both parses and prints `--help`; the usage text below is made from the same tables.
 *
 * Logging: DEBUG=vhost:* (namespaces vhost:proto, vhost:session, vhost:vq, vhost:net, vhost:tap, ...).
 */
import { DEFAULT_BUSY_POLL_US } from '../net/device/net-device.ts';
import { DEFAULT_SNAPLEN, startNet, type NetOptions } from './app.ts';
import { CONFORM_COMMAND, runConform } from './conform/cli.ts';
import { ENDPOINT_OPTIONS } from './endpoint-options.ts';
import { CliHelp, formatOptions, formatSynopses, intRange, parseOptions, usage, type CommandSpec } from './options.ts';
import { PROXY_COMMAND, TRACE_COMMANDS, runProxyCommand, runTraceCommand } from './trace/cli.ts';

export const NET_COMMAND = {
  name: 'net',
  options: {
    ...ENDPOINT_OPTIONS,
    trace: { kind: 'string', arg: 'FILE', help: 'record every vhost-user message, both directions, to FILE (msgpack)' },
    'trace-rings': {
      kind: 'flag',
      needs: 'trace',
      help: 'also record kicks, calls and every chain (head, descriptors, length, the first --snaplen frame bytes)',
    },
    snaplen: { kind: 'number', arg: 'N', ...intRange(14, 65536), help: `frame bytes kept per chain by --trace-rings (default ${DEFAULT_SNAPLEN})` },
    'busy-poll-us': {
      kind: 'number',
      arg: 'N',
      ...intRange(0, 1_000_000),
      help: `after a TX ring runs empty, poll it N µs before sleeping on kicks (default ${DEFAULT_BUSY_POLL_US}, 0 = off)`,
    },
  },
} as const satisfies CommandSpec;

const USAGE = [
  'usage:',
  formatSynopses([NET_COMMAND]),
  formatSynopses(Object.values(TRACE_COMMANDS)),
  formatSynopses([PROXY_COMMAND]),
  formatSynopses([CONFORM_COMMAND]),
  '',
  formatOptions([NET_COMMAND]),
  '  DEBUG=vhost:*            debug logging',
  '',
  '`vhost-user-ts COMMAND --help` (`trace SUBCOMMAND --help`) describes the options of each command.',
].join('\n');

export function parseNetArgs(argv: string[]): NetOptions {
  const { values: v } = parseOptions(NET_COMMAND, argv);
  return {
    socket: v.socket,
    client: v.client,
    queuePairs: v.queues,
    port: v.port ?? null,
    trace: v.trace ?? null,
    ...(v['protocol-features'] !== undefined ? { protocolFeatures: v['protocol-features'] } : {}),
    ...(v['busy-poll-us'] !== undefined ? { busyPollUs: v['busy-poll-us'] } : {}),
    ...(v['trace-rings'] ? { traceRings: true } : {}),
    ...(v.snaplen !== undefined ? { snaplen: v.snaplen } : {}),
  };
}

async function runNet(argv: string[]): Promise<void> {
  const opts = parseNetArgs(argv);
  const { native } = await import('../../native/index.ts');
  const app = startNet(native, opts);
  const where = app.endpoints.map((e) => e.label).join(', ');
  process.stderr.write(`vhost-user-ts: net device on ${where}${opts.port ? ` port ${opts.port.kind}` : ''}\n`);
  for (const ep of app.endpoints) {
    ep.on('session', () => process.stderr.write(`vhost-user-ts: ${ep.label}: frontend connected\n`));
    ep.on('disconnect', (r) => process.stderr.write(`vhost-user-ts: ${ep.label}: frontend gone (${r})\n`));
  }
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`vhost-user-ts: ${sig}, shutting down\n`);
    for (const p of app.ports) process.stderr.write(`vhost-user-ts: port ${p.name}: ${JSON.stringify(p.stats)}\n`);
    app.close().then(
      () => process.exit(0),
      (e) => {
        process.stderr.write(`vhost-user-ts: error while closing: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === 'net') await runNet(rest);
    else if (cmd === 'trace') await runTraceCommand(rest);
    else if (cmd === 'proxy') await runProxyCommand(rest);
    else if (cmd === 'conform') await runConform(rest);
    else if (cmd === '--help' || cmd === '-h' || cmd === 'help') process.stdout.write(USAGE + '\n');
    else usage(cmd ? `unknown command '${cmd}'` : 'no command given');
    return 0;
  } catch (e) {
    if (e instanceof CliHelp) {
      process.stdout.write(e.text);
      return 0;
    }
    const err = e as Error & { code?: string; syscall?: string };
    const where = err.syscall ? ` (${err.syscall})` : '';
    // node:util parseArgs reports unknown/ill-typed options with ERR_PARSE_ARGS_* codes.
    const isUsage = err.code === 'CLI_USAGE' || err.code?.startsWith('ERR_PARSE_ARGS') === true;
    process.stderr.write(`vhost-user-ts: ${err.code ? `[${err.code}] ` : ''}${err.message}${where}\n`);
    if (isUsage) process.stderr.write(USAGE + '\n');
    return isUsage ? 2 : 1;
  }
}

const code = await main(process.argv.slice(2));
if (code !== 0) process.exit(code);
