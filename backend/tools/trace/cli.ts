/**
 * The `trace` and `proxy` subcommands (backend/tools/cli.ts dispatches here):
 *
 *   trace print FILE   [filters]                       one line per record
 *   trace diagram FILE [filters] [--html OUT.html]     sequence diagram (text to stdout, or HTML file)
 *   trace export FILE  [filters] --pcapng OUT.pcapng   ring frames as pcapng (tshark/Wireshark)
 *   trace replay FILE  --socket PATH [--endpoint E] [--timeout-ms N]
 *   proxy (--listen A | --connect-frontend A) --connect B [--trace FILE]
 *
 * filters: --message NAME[,NAME] --ring N --from MS --to MS --direction rx|tx --kind msg|ring --endpoint NAME
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { BackendError } from '../../core/errors.ts';
import { filterFromArgs, filterRecords } from './filters.ts';

export const TRACE_USAGE = `  vhost-user-ts trace print FILE [filters]
  vhost-user-ts trace diagram FILE [filters] [--html OUT.html]
  vhost-user-ts trace export FILE [filters] --pcapng OUT.pcapng
  vhost-user-ts trace replay FILE --socket PATH [--endpoint NAME] [--timeout-ms N] [--ignore NAME[,NAME]]
      filters: --message NAME[,NAME] --ring N --from MS --to MS --direction rx|tx --kind msg|ring
               --endpoint NAME (socket path or proxy connection label)
  vhost-user-ts proxy (--listen A | --connect-frontend A) --connect B [--trace FILE]
      sits between a frontend (on A) and a backend (on B), forwards everything and records both
      directions (and the back-end channel) to FILE`;

function usage(msg: string): never {
  throw new BackendError('CLI_USAGE', msg);
}

const FILTER_OPTIONS = {
  message: { type: 'string' },
  ring: { type: 'string' },
  from: { type: 'string' },
  to: { type: 'string' },
  direction: { type: 'string' },
  kind: { type: 'string' },
} as const;

const NEEDS = 'trace needs: print FILE | diagram FILE | export FILE --pcapng OUT | replay FILE --socket PATH';

export async function runTraceCommand(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<void> {
  const [sub, ...rest] = argv;
  if (!sub || !['print', 'diagram', 'export', 'replay'].includes(sub)) usage(NEEDS);
  const { values, positionals } = parseArgs({
    args: rest,
    options: {
      ...FILTER_OPTIONS,
      html: { type: 'string' },
      pcapng: { type: 'string' },
      socket: { type: 'string' },
      endpoint: { type: 'string' },
      'timeout-ms': { type: 'string' },
      ignore: { type: 'string' },
    },
    strict: true,
    allowPositionals: true,
  });
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
    if (!values.pcapng) usage('trace export needs --pcapng OUT');
    const { tracePcapng } = await import('./pcapng.ts');
    const header = await readTraceHeader(file);
    const recs = filterRecords(await readTraceFile(file), filter);
    const res = tracePcapng(recs, header);
    writeFileSync(values.pcapng, res.bytes);
    out(`wrote ${res.packets} frame(s) on ${res.interfaces.length} interface(s) to ${values.pcapng}\n`);
    if (res.packets === 0) out('(no ring frames in this trace: record with `net --trace FILE --trace-rings`)\n');
    return;
  }
  // replay
  if (!values.socket) usage('trace replay needs --socket PATH');
  let timeoutMs: number | undefined;
  if (values['timeout-ms'] !== undefined) {
    timeoutMs = Number(values['timeout-ms']);
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) usage(`--timeout-ms must be a positive integer, got '${values['timeout-ms']}'`);
  }
  const { replayTrace, formatReplay } = await import('./replay.ts');
  const { native } = await import('../../../native/index.ts');
  const res = await replayTrace(await readTraceFile(file), {
    native,
    socket: values.socket,
    ...(values.endpoint !== undefined ? { endpoint: values.endpoint } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(values.ignore !== undefined ? { ignore: values.ignore.split(',').filter(Boolean) } : {}),
  });
  for (const l of formatReplay(res)) out(l + '\n');
  if (res.divergences.length > 0) {
    // Exit 1 (not a usage error): the backend did not reproduce the recording.
    throw Object.assign(new Error(`${res.divergences.length} divergence(s) from the recording`), { code: 'TRACE_REPLAY_DIVERGED' });
  }
}

/** `proxy`: runs until SIGINT/SIGTERM. */
export async function runProxyCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string' },
      'connect-frontend': { type: 'string' },
      connect: { type: 'string' },
      trace: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (!values.connect) usage('proxy needs --connect B (the backend socket)');
  if (!values.listen === !values['connect-frontend']) usage('proxy needs exactly one of --listen A or --connect-frontend A');
  const frontend = (values.listen ?? values['connect-frontend'])!;
  const { native } = await import('../../../native/index.ts');
  const { TraceRecorder } = await import('../../../protocol/index.ts');
  const { VhostUserProxy } = await import('../proxy.ts');
  const tracer = values.trace ? new TraceRecorder(values.trace, { source: 'proxy' }) : null;
  const proxy = new VhostUserProxy({
    native,
    frontend,
    client: values['connect-frontend'] !== undefined,
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
