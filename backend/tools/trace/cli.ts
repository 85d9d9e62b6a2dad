/**
 * The `trace` and `proxy` subcommands (backend/tools/cli.ts dispatches here):
 *
 *   trace print FILE   [filters]                       one line per record
 *   trace diagram FILE [filters] [--html OUT.html]     sequence diagram (text to stdout, or HTML file)
 *   trace export FILE  [filters] --pcapng OUT.pcapng   ring frames as pcapng (tshark/Wireshark)
 *   trace replay FILE  --socket PATH [--endpoint E] [--timeout-ms N] [--ignore NAME[,NAME]]
 *   proxy (--listen A | --connect-frontend A) --connect B [--trace FILE]
 *
 * Their options are the tables below (options.ts parses them and prints `--help` from them).
 */
import { writeFileSync } from 'node:fs';
import { CliHelp, formatHelp, parseOptions, usage, type CommandSpec, type OptionTable } from '../options.ts';
import { filterFromArgs, filterRecords } from './filters.ts';
import { DEFAULT_REPLY_TIMEOUT_MS } from './replay.ts';

const SUBCOMMANDS = ['print', 'diagram', 'export', 'replay'] as const;
type TraceSub = (typeof SUBCOMMANDS)[number];
const FILTERED = ['print', 'diagram', 'export'] as const;

/**
 * One table for the four trace subcommands: each accepts every option (as it always has), `for` says
 * which ones it is meant for. The filters are strings here and checked by filterFromArgs (filters.ts).
 */
const TRACE_OPTIONS = {
  message: {
    kind: 'string',
    arg: 'NAME[,NAME]',
    group: 'filters',
    for: FILTERED,
    help: 'only these messages (VHOST_USER_ prefix and case optional); drops ring records',
  },
  ring: { kind: 'string', arg: 'N', group: 'filters', for: FILTERED, help: 'only ring N: its ring records and the messages about it' },
  from: { kind: 'string', arg: 'MS', group: 'filters', for: FILTERED, help: 'only records from MS milliseconds after the first one' },
  to: { kind: 'string', arg: 'MS', group: 'filters', for: FILTERED, help: 'only records up to MS milliseconds after the first one' },
  direction: {
    kind: 'string',
    arg: 'rx|tx',
    group: 'filters',
    for: FILTERED,
    help: 'rx: sent by the frontend, kicks, frames to the guest; tx: sent by the backend, calls, frames from the guest',
  },
  kind: { kind: 'string', arg: 'msg|ring', group: 'filters', for: FILTERED, help: 'only messages or only ring events' },
  html: { kind: 'string', arg: 'OUT.html', for: ['diagram'], help: 'write the diagram as HTML to OUT.html instead of text to stdout' },
  pcapng: {
    kind: 'string',
    arg: 'OUT.pcapng',
    for: ['export'],
    required: 'trace export needs --pcapng OUT',
    help: 'write the ring frames (--trace-rings recordings) as pcapng to OUT.pcapng',
  },
  socket: { kind: 'string', arg: 'PATH', for: ['replay'], required: 'trace replay needs --socket PATH', help: 'the backend to replay against' },
  endpoint: {
    kind: 'string',
    arg: 'NAME',
    for: SUBCOMMANDS,
    help: 'only records of this endpoint (socket path or proxy connection label); replay: default the first in the file',
  },
  'timeout-ms': {
    kind: 'number',
    arg: 'N',
    for: ['replay'],
    valid: (n: number) => Number.isInteger(n) && n > 0,
    expect: 'a positive integer',
    help: `wait N ms for each reply (default ${DEFAULT_REPLY_TIMEOUT_MS})`,
  },
  ignore: { kind: 'list', arg: 'NAME[,NAME]', for: ['replay'], help: 'do not compare the reply payloads of these requests (e.g. GET_VRING_BASE)' },
} as const satisfies OptionTable;

function traceCommand<S extends TraceSub>(sub: S) {
  return { name: `trace ${sub}`, sub, options: TRACE_OPTIONS, positionals: 'FILE' } as const satisfies CommandSpec;
}

export const TRACE_COMMANDS = {
  print: traceCommand('print'),
  diagram: traceCommand('diagram'),
  export: traceCommand('export'),
  replay: traceCommand('replay'),
} as const;

export const PROXY_COMMAND = {
  name: 'proxy',
  summary:
    'sits between a frontend (on A) and a backend (on B), forwards everything and records both\n' +
    'directions (and the back-end channel) to FILE',
  exactlyOne: [['listen', 'connect-frontend']],
  options: {
    listen: { kind: 'string', arg: 'A', help: 'listen for frontends on A' },
    'connect-frontend': { kind: 'string', arg: 'A', help: 'connect to a frontend listening on A, and again when it goes' },
    connect: {
      kind: 'string',
      arg: 'B',
      required: 'proxy needs --connect B (the backend socket)',
      help: 'the backend, connected once per frontend connection',
    },
    trace: { kind: 'string', arg: 'FILE', help: 'record every message of both channels, both directions, to FILE' },
  },
} as const satisfies CommandSpec;

const NEEDS = 'trace needs: print FILE | diagram FILE | export FILE --pcapng OUT | replay FILE --socket PATH';

export async function runTraceCommand(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === '--help' || sub === '-h') throw new CliHelp(formatHelp(Object.values(TRACE_COMMANDS)));
  if (!sub || !(SUBCOMMANDS as readonly string[]).includes(sub)) usage(NEEDS);
  const { values, positionals } = parseOptions(TRACE_COMMANDS[sub as TraceSub], rest);
  const file = positionals[0];
  if (!file || positionals.length > 1) usage(NEEDS);
  const filter = filterFromArgs(values);
  const { readTraceFile, readTraceHeader, formatRecord } = await import('../../../protocol/index.ts');

  if (sub === 'print') {
    const recs = filterRecords(await readTraceFile(file), filter);
    for (const r of recs) out(formatRecord(r) + '\n');
    return;
  }
  if (sub === 'diagram') {
    const { htmlDiagram, textDiagram } = await import('./diagram.ts');
    const recs = filterRecords(await readTraceFile(file), filter);
    if (values.html) {
      writeFileSync(values.html, htmlDiagram(recs, file));
      out(`wrote ${recs.length} record(s) to ${values.html}\n`);
    } else out(textDiagram(recs));
    return;
  }
  if (sub === 'export') {
    const pcapng = values.pcapng!; // required for export
    const { tracePcapng } = await import('./pcapng.ts');
    const header = await readTraceHeader(file);
    const recs = filterRecords(await readTraceFile(file), filter);
    const res = tracePcapng(recs, header);
    writeFileSync(pcapng, res.bytes);
    out(`wrote ${res.packets} frame(s) on ${res.interfaces.length} interface(s) to ${pcapng}\n`);
    if (res.packets === 0) out('(no ring frames in this trace: record with `net --trace FILE --trace-rings`)\n');
    return;
  }
  // replay
  const { replayTrace, formatReplay } = await import('./replay.ts');
  const { native } = await import('../../../native/index.ts');
  const res = await replayTrace(await readTraceFile(file), {
    native,
    socket: values.socket!, // required for replay
    ...(values.endpoint !== undefined ? { endpoint: values.endpoint } : {}),
    ...(values['timeout-ms'] !== undefined ? { timeoutMs: values['timeout-ms'] } : {}),
    ...(values.ignore !== undefined ? { ignore: values.ignore } : {}),
  });
  for (const l of formatReplay(res)) out(l + '\n');
  if (res.divergences.length > 0) {
    // Exit 1 (not a usage error): the backend did not reproduce the recording.
    throw Object.assign(new Error(`${res.divergences.length} divergence(s) from the recording`), { code: 'TRACE_REPLAY_DIVERGED' });
  }
}

/** `proxy`: runs until SIGINT/SIGTERM. */
export async function runProxyCommand(argv: string[]): Promise<void> {
  const { values } = parseOptions(PROXY_COMMAND, argv);
  // Exactly one of the two is given (PROXY_COMMAND.exactlyOne).
  const frontend = (values.listen || values['connect-frontend'])!;
  const { native } = await import('../../../native/index.ts');
  const { TraceRecorder } = await import('../../../protocol/index.ts');
  const { VhostUserProxy } = await import('../proxy.ts');
  const tracer = values.trace ? new TraceRecorder(values.trace, { source: 'proxy' }) : null;
  const proxy = new VhostUserProxy({
    native,
    frontend,
    client: !values.listen,
    backend: values.connect,
    ...(tracer ? { trace: (rec) => tracer.record(rec) } : {}),
  });
  proxy.on('connect', (l) => process.stderr.write(`vhost-user-ts: proxy ${l}: frontend connected, backend connected\n`));
  proxy.on('disconnect', (l, r) => process.stderr.write(`vhost-user-ts: proxy ${l}: closed (${r})\n`));
  proxy.start();
  process.stderr.write(`vhost-user-ts: proxy ${values.listen ? 'listening on' : 'connecting to'} ${frontend}, backend ${values.connect}\n`);
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`vhost-user-ts: ${sig}, shutting down (${proxy.connections} connection(s) proxied)\n`);
    proxy.close();
    (tracer ? tracer.close() : Promise.resolve()).then(
      () => process.exit(0),
      (e: Error) => {
        process.stderr.write(`vhost-user-ts: error while closing the trace: ${e.message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}
