/**
 * `vhost-user-ts conform --socket PATH [--report out.html|out.json ...]`: serve one frontend with the
 * net device while the conformance engine judges it; the report is written whenever a connection
 * ends and on SIGTERM/SIGINT (then the process exits 0, or 3 with --strict when a MUST rule failed).
 */
import { parseArgs } from 'node:util';
import { BackendError } from '../../core/errors.ts';
import { parsePortSpec } from '../app.ts';
import { PROBES, type ProbeName } from './probes.ts';
import type { ConformOptions } from './runner.ts';

export const CONFORM_USAGE = `  vhost-user-ts conform --socket PATH [--client] [--queues N] [--port tap:NAME] [--protocol-features HEX]
                        [--report FILE.json|FILE.html]... [--probe iotlb,config,reconnect|none]
                        [--frontend TEXT] [--duration S] [--strict]
      serve one frontend and check what it does against the vhost-user spec and the virtio ring rules
      (spec-notes/conformance.md); the report is written when a connection ends and on SIGTERM`;

export interface ConformCliOptions extends ConformOptions {
  reports: string[];
  frontend: string;
  durationS: number | null;
  strict: boolean;
}

function usage(msg: string): never {
  throw new BackendError('CLI_USAGE', msg);
}

export function parseConformArgs(argv: string[]): ConformCliOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      client: { type: 'boolean', default: false },
      queues: { type: 'string', default: '1' },
      port: { type: 'string' },
      'protocol-features': { type: 'string' },
      report: { type: 'string', multiple: true },
      probe: { type: 'string', default: 'iotlb,config' },
      frontend: { type: 'string', default: 'unnamed frontend' },
      duration: { type: 'string' },
      strict: { type: 'boolean', default: false },
      'reconnect-after-ms': { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (!values.socket) usage('conform: --socket is required');
  const queuePairs = Number(values.queues);
  if (!Number.isInteger(queuePairs) || queuePairs < 1 || queuePairs > 128) usage(`--queues must be 1..128, got '${values.queues}'`);
  const probes = values.probe === 'none' ? [] : values.probe!.split(',').filter(Boolean);
  for (const p of probes) if (!PROBES.includes(p as ProbeName)) usage(`unknown probe '${p}' (known: ${PROBES.join(', ')}, none)`);
  let protocolFeatures: bigint | undefined;
  if (values['protocol-features'] !== undefined) {
    try {
      protocolFeatures = BigInt(values['protocol-features']);
    } catch {
      usage(`--protocol-features must be a number, got '${values['protocol-features']}'`);
    }
  }
  const durationS = values.duration === undefined ? null : Number(values.duration);
  if (durationS !== null && !(durationS > 0)) usage(`--duration must be a positive number of seconds`);
  const reconnectAfter = values['reconnect-after-ms'] === undefined ? undefined : Number(values['reconnect-after-ms']);
  return {
    socket: values.socket,
    client: values.client ?? false,
    queuePairs,
    port: values.port ? parsePortSpec(values.port) : null,
    ...(protocolFeatures !== undefined ? { protocolFeatures } : {}),
    probes: probes as ProbeName[],
    ...(reconnectAfter !== undefined ? { reconnectAfterMs: reconnectAfter } : {}),
    reports: values.report ?? [],
    frontend: values.frontend!,
    durationS,
    strict: values.strict ?? false,
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
