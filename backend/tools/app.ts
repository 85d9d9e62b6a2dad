/**
 * Wiring: from parsed options to running endpoints, devices and ports. The CLI is a thin layer over
 * this so tests can start exactly what a user starts, in-process.
 */
import createDebug from 'debug';
import type { NativeBinding } from '../../native/types.ts';
import { TraceRecorder, type TraceMessageRecord, type TraceRingRecord } from '../../protocol/index.ts';
import { NetDevice } from '../net/device/net-device.ts';
import { VhostUserEndpoint } from '../core/server.ts';
import { portPair } from '../net/ports/pair.ts';
import { TapPort } from '../net/ports/tap.ts';
import { VfioPort } from '../net/ports/vfio/port.ts';
import { normalizePciAddress } from '../net/ports/vfio/vfio.ts';
import type { Port } from '../net/ports/port.ts';
import { BackendError } from '../core/errors.ts';

const log = createDebug('vhost:app');

export type PortSpec =
  | { kind: 'tap'; name: string }
  | { kind: 'vhost'; path: string; client: boolean }
  | { kind: 'vfio'; address: string; mode?: 'irq' | 'poll' };

export interface NetOptions {
  socket: string;
  client: boolean;
  queuePairs: number;
  port: PortSpec | null;
  trace: string | null;
  protocolFeatures?: bigint;
  /** Busy-poll window after a TX ring runs empty, µs (0 = off; default: the device's). */
  busyPollUs?: number;
  /** With `trace`: also record ring events (kicks, calls, chains with the first `snaplen` frame bytes). */
  traceRings?: boolean;
  /** Frame bytes kept per chain when tracing rings (default DEFAULT_SNAPLEN). */
  snaplen?: number;
}

export const DEFAULT_SNAPLEN = 256;

export function parsePortSpec(spec: string): PortSpec {
  const m = /^(tap|vhost|vfio):(.+)$/.exec(spec);
  if (!m) throw new BackendError('CLI_USAGE', `bad --port '${spec}': expected tap:NAME, vhost:PATH[,client] or vfio:PCI_ADDRESS[,poll|,irq]`);
  if (m[1] === 'vfio') {
    // vfio:0000:00:03.0[,poll|,irq]: a NIC bound to vfio-pci, driven by our poll-mode driver (ports/vfio/).
    const [addr, ...opts] = m[2]!.split(',');
    let address: string;
    try {
      address = normalizePciAddress(addr!);
    } catch (e) {
      throw new BackendError('CLI_USAGE', (e as Error).message);
    }
    const bad = opts.filter((o) => o !== 'poll' && o !== 'irq');
    if (bad.length || opts.length > 1) throw new BackendError('CLI_USAGE', `bad vfio port option(s) '${opts.join(',')}': 'poll' or 'irq'`);
    return opts.length ? { kind: 'vfio', address, mode: opts[0] as 'irq' | 'poll' } : { kind: 'vfio', address };
  }
  if (m[1] === 'tap') {
    if (m[2]!.length > 15) throw new BackendError('CLI_USAGE', `tap name '${m[2]}' longer than 15 characters`);
    return { kind: 'tap', name: m[2]! };
  }
  const parts = m[2]!.split(',');
  const extra = parts.slice(1).filter((p) => p !== 'client');
  if (extra.length) throw new BackendError('CLI_USAGE', `bad --port option(s) ${extra.join(',')}: only 'client' is known`);
  return { kind: 'vhost', path: parts[0]!, client: parts.includes('client') };
}

export interface RunningNet {
  endpoints: VhostUserEndpoint[];
  devices: NetDevice[];
  ports: Port[];
  tracer: TraceRecorder | null;
  close(): Promise<void>;
}

export function startNet(native: NativeBinding, o: NetOptions): RunningNet {
  const tracer = o.trace ? new TraceRecorder(o.trace, { source: 'net' }) : null;
  const rings = tracer !== null && o.traceRings === true;
  const devices: NetDevice[] = [];
  const endpoints: VhostUserEndpoint[] = [];
  const ports: Port[] = [];
  const mk = (path: string, client: boolean) => {
    const ringSink = rings ? (rec: TraceRingRecord) => tracer!.record({ ...rec, endpoint: path }) : null;
    const device = new NetDevice({
      queuePairs: o.queuePairs,
      label: path,
      ...(o.busyPollUs !== undefined ? { busyPollUs: o.busyPollUs } : {}),
      ...(ringSink ? { ringTrace: { record: ringSink, snaplen: o.snaplen ?? DEFAULT_SNAPLEN } } : {}),
    });
    const ep = new VhostUserEndpoint({
      path,
      client,
      device,
      native,
      ...(o.protocolFeatures !== undefined ? { protocolFeatures: o.protocolFeatures } : {}),
      ...(tracer ? { trace: (rec: TraceMessageRecord) => tracer.record({ ...rec, endpoint: path }) } : {}),
    });
    // Kicks and calls are the session's: hand it the sink before its first message.
    if (ringSink) ep.on('session', (s) => (s.ringTrace = ringSink));
    devices.push(device);
    endpoints.push(ep);
    return device;
  };
  const main = mk(o.socket, o.client);
  if (o.port?.kind === 'tap') {
    const tap = new TapPort(native, o.port.name);
    ports.push(tap);
    main.attachPort(tap);
  } else if (o.port?.kind === 'vfio') {
    const nic = new VfioPort(native, o.port.address, o.port.mode ? { mode: o.port.mode } : {});
    ports.push(nic);
    main.attachPort(nic);
  } else if (o.port?.kind === 'vhost') {
    const other = mk(o.port.path, o.port.client);
    const [a, b] = portPair(o.socket, o.port.path);
    ports.push(a, b);
    main.attachPort(a);
    other.attachPort(b);
  }
  for (const ep of endpoints) ep.start();
  log('started %d endpoint(s)', endpoints.length);
  return {
    endpoints,
    devices,
    ports,
    tracer,
    async close() {
      for (const ep of endpoints) ep.close();
      for (const p of ports) p.close();
      if (tracer) await tracer.close();
    },
  };
}
