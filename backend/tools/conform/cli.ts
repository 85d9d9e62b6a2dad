/**
 * `vhost-user-ts conform --socket PATH [--report out.html|out.json ...]`: serve one frontend with the
 * net device while the conformance engine judges it; the report is written whenever a connection
 * ends and on SIGTERM/SIGINT (then the process exits 0, or 3 with --strict when a MUST rule failed).
 */
import { ENDPOINT_OPTIONS } from '../endpoint-options.ts';
import { parseOptions, type CommandSpec } from '../options.ts';
import { PROBES, type ProbeName } from './probes.ts';
import type { ConformOptions } from './runner.ts';

export const CONFORM_COMMAND = {
  name: 'conform',
  summary:
    'serve one frontend and check what it does against the vhost-user spec and the virtio ring rules\n' +
    '(spec-notes/conformance.md); the report is written when a connection ends and on SIGTERM',
  options: {
    ...ENDPOINT_OPTIONS,
    socket: { ...ENDPOINT_OPTIONS.socket, required: 'conform: --socket is required' },
    port: { ...ENDPOINT_OPTIONS.port, arg: 'tap:NAME', help: 'uplink: a kernel tap device' },
    report: { kind: 'repeatable', arg: 'FILE.json|FILE.html', help: 'write the report to FILE, JSON or HTML by its name' },
    probe: {
      kind: 'list',
      arg: `${PROBES.join(',')}|none`,
      default: ['iotlb', 'config'],
      none: 'none',
      checkItem: (p: string) => (PROBES.includes(p as ProbeName) ? undefined : `unknown probe '${p}' (known: ${PROBES.join(', ')}, none)`),
      help: 'ask the frontend over the back-end channel (IOTLB miss, CONFIG_CHANGE) or force a reconnect',
    },
    frontend: { kind: 'string', arg: 'TEXT', default: 'unnamed frontend', help: 'names the frontend in the report' },
    duration: {
      kind: 'number',
      arg: 'S',
      valid: (n: number) => n > 0,
      expect: 'a positive number of seconds',
      help: 'write the report and exit after S seconds',
    },
    strict: { kind: 'flag', help: 'exit 3 when a MUST rule failed' },
    'reconnect-after-ms': {
      kind: 'number',
      arg: 'MS',
      help: 'reconnect probe: drop the connection MS after the first ring started (default 3000)',
    },
  },
} as const satisfies CommandSpec;

export interface ConformCliOptions extends ConformOptions {
  reports: string[];
  frontend: string;
  durationS: number | null;
  strict: boolean;
}

export function parseConformArgs(argv: string[]): ConformCliOptions {
  const { values: v } = parseOptions(CONFORM_COMMAND, argv);
  return {
    socket: v.socket,
    client: v.client,
    queuePairs: v.queues,
    port: v.port ?? null,
    ...(v['protocol-features'] !== undefined ? { protocolFeatures: v['protocol-features'] } : {}),
    probes: v.probe as ProbeName[],
    ...(v['reconnect-after-ms'] !== undefined ? { reconnectAfterMs: v['reconnect-after-ms'] } : {}),
    reports: v.report,
    frontend: v.frontend,
    durationS: v.duration ?? null,
    strict: v.strict,
  };
}

export async function runConform(argv: string[]): Promise<void> {
  const o = parseConformArgs(argv);
  const { native } = await import('../../../native/index.ts');
  const { ConformRunner } = await import('./runner.ts');
  const { buildReport, writeReport } = await import('./report.ts');
  const startedAt = new Date();
  const runner = new ConformRunner(native, o);
  const write = () => {
    const rep = buildReport(runner.engine, { frontend: o.frontend, socket: o.socket, startedAt });
    for (const f of o.reports) writeReport(f, rep);
    return rep;
  };
  const onEp = (ep: typeof runner.endpoint) => {
    ep.on('session', () => process.stderr.write(`vhost-user-ts conform: frontend connected (connection ${runner.engine.sessions})\n`));
    ep.on('disconnect', (r) => {
      process.stderr.write(`vhost-user-ts conform: frontend gone (${r})\n`);
      // After the engine's own 'disconnect' listener (registered first): the connection is judged.
      setImmediate(write);
    });
  };
  onEp(runner.endpoint);
  let seen = runner.endpoint;
  const watch = setInterval(() => {
    if (runner.endpoint !== seen) {
      seen = runner.endpoint;
      onEp(seen);
    }
  }, 20);
  watch.unref();
  runner.start();
  process.stderr.write(`vhost-user-ts conform: serving ${o.socket}${o.client ? ' (client)' : ''}, probes: ${o.probes.join(',') || 'none'}\n`);
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    runner.engine.sampleNow();
    const rep = write();
    runner.close();
    const s = rep.summary;
    process.stderr.write(
      `vhost-user-ts conform: ${why}: ${s.pass} pass, ${s.fail} fail (${s.mustFailures} MUST), ${s.divergence} divergence, ${s['not-applicable']} n/a\n`,
    );
    process.exit(o.strict && s.mustFailures > 0 ? 3 : 0);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  if (o.durationS !== null) setTimeout(() => stop(`${o.durationS} s elapsed`), o.durationS * 1000);
}
