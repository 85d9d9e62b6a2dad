/**
 * vhost-user-ts command line.
 *
 *   vhost-user-ts net --socket PATH [--client] [--queues N] [--port tap:NAME|vhost:PATH2[,client]|vfio:PCI[,poll]]
 *                     [--trace FILE] [--protocol-features HEX] [--busy-poll-us N]
 *   vhost-user-ts trace print|diagram|export|replay FILE ...   (backend/tools/trace/cli.ts)
 *   vhost-user-ts proxy (--listen A | --connect-frontend A) --connect B [--trace FILE]
 *
 * Logging: DEBUG=vhost:* (namespaces vhost:proto, vhost:session, vhost:vq, vhost:net, vhost:tap, ...).
 */
import { parseArgs } from 'node:util';
import { BackendError } from '../core/errors.ts';
import { parsePortSpec, startNet, type NetOptions } from './app.ts';
import { TRACE_USAGE, runProxyCommand, runTraceCommand } from './trace/cli.ts';

const USAGE = `usage:
  vhost-user-ts net --socket PATH [--client] [--queues N] [--port tap:NAME|vhost:PATH2[,client]|vfio:PCI[,poll]]
                    [--trace FILE [--trace-rings] [--snaplen N]] [--protocol-features HEX] [--busy-poll-us N]
${TRACE_USAGE}
  vhost-user-ts conform --socket PATH [--report FILE.json|FILE.html]... [--probe iotlb,config,reconnect|none]
                        [--frontend TEXT] [--queues N] [--port tap:NAME] [--client] [--duration S] [--strict]

  --socket PATH     vhost-user socket (we listen; with --client we connect to a frontend listening there)
  --queues N        queue pairs offered (GET_QUEUE_NUM), default 1
  --port SPEC       uplink: tap:NAME (kernel tap device) or vhost:PATH2 (switch to a second vhost-user device)
                    or vfio:0000:00:03.0 (a NIC bound to vfio-pci, see qemu-scripts/vfio-bind.sh; e1000e or virtio-net;
                    ,poll polls instead of waiting for interrupts)
  --trace FILE      record every vhost-user message, both directions, to FILE (msgpack)
  --trace-rings     with --trace: also record kicks, calls and every chain (head, descriptors, length,
                    the first --snaplen bytes of the frame, default 256)
  --busy-poll-us N  after a TX ring runs empty, poll it N µs before sleeping on kicks (default 50, 0 = off)
  DEBUG=vhost:*     debug logging`;

function usage(msg: string): never {
  throw new BackendError('CLI_USAGE', msg);
}

export function parseNetArgs(argv: string[]): NetOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      client: { type: 'boolean', default: false },
      queues: { type: 'string', default: '1' },
      port: { type: 'string' },
      trace: { type: 'string' },
      'protocol-features': { type: 'string' },
      'busy-poll-us': { type: 'string' },
      'trace-rings': { type: 'boolean', default: false },
      snaplen: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (!values.socket) usage('--socket is required');
  const queuePairs = Number(values.queues);
  if (!Number.isInteger(queuePairs) || queuePairs < 1 || queuePairs > 128) usage(`--queues must be 1..128, got '${values.queues}'`);
  let protocolFeatures: bigint | undefined;
  if (values['protocol-features'] !== undefined) {
    try {
      protocolFeatures = BigInt(values['protocol-features']);
    } catch {
      usage(`--protocol-features must be a number (e.g. 0x8009), got '${values['protocol-features']}'`);
    }
  }
  let busyPollUs: number | undefined;
  if (values['busy-poll-us'] !== undefined) {
    busyPollUs = Number(values['busy-poll-us']);
    if (!Number.isInteger(busyPollUs) || busyPollUs < 0 || busyPollUs > 1_000_000) {
      usage(`--busy-poll-us must be 0..1000000, got '${values['busy-poll-us']}'`);
    }
  }
  if (values['trace-rings'] && !values.trace) usage('--trace-rings needs --trace FILE');
  let snaplen: number | undefined;
  if (values.snaplen !== undefined) {
    snaplen = Number(values.snaplen);
    if (!Number.isInteger(snaplen) || snaplen < 14 || snaplen > 65536) usage(`--snaplen must be 14..65536, got '${values.snaplen}'`);
  }
  return {
    socket: values.socket,
    client: values.client ?? false,
    queuePairs,
    port: values.port ? parsePortSpec(values.port) : null,
    trace: values.trace ?? null,
    ...(protocolFeatures !== undefined ? { protocolFeatures } : {}),
    ...(busyPollUs !== undefined ? { busyPollUs } : {}),
    ...(values['trace-rings'] ? { traceRings: true } : {}),
    ...(snaplen !== undefined ? { snaplen } : {}),
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

async function runTrace(argv: string[]): Promise<void> {
  await runTraceCommand(argv);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === 'net') await runNet(rest);
    else if (cmd === 'trace') await runTrace(rest);
    else if (cmd === 'proxy') await runProxyCommand(rest);
    else if (cmd === 'conform') await (await import('./conform/cli.ts')).runConform(rest);
    else if (cmd === '--help' || cmd === '-h' || cmd === 'help') process.stdout.write(USAGE + '\n');
    else usage(cmd ? `unknown command '${cmd}'` : 'no command given');
    return 0;
  } catch (e) {
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
