/**
 * Wiring: from parsed options to running endpoints, devices and ports. The CLI is a thin layer over
 * this so tests can start exactly what a user starts, in-process.
 */
import createDebug from 'debug';
import type { NativeBinding } from '../native/types.ts';
import { TraceRecorder, type TraceMessageRecord } from '../protocol/index.ts';
import { NetDevice } from './devices/net/net-device.ts';
import { VhostUserEndpoint } from './server.ts';
import { portPair } from './ports/pair.ts';
import { TapPort } from './ports/tap.ts';
import type { Port } from './ports/port.ts';
import { BackendError } from './errors.ts';

const log = createDebug('vhost:app');

export type PortSpec = { kind: 'tap'; name: string } | { kind: 'vhost'; path: string; client: boolean };

export interface NetOptions {
  socket: string;
  client: boolean;
  queuePairs: number;
  port: PortSpec | null;
  trace: string | null;
  protocolFeatures?: bigint;
  /** Busy-poll window after a TX ring runs empty, µs (0 = off; default: the device's). */
  busyPollUs?: number;
}

export function parsePortSpec(spec: string): PortSpec {
  const m = /^(tap|vhost):(.+)$/.exec(spec);
  if (!m) throw new BackendError('CLI_USAGE', `bad --port '${spec}': expected tap:NAME or vhost:PATH[,client]`);
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
  const tracer = o.trace ? new TraceRecorder(o.trace) : null;
  const devices: NetDevice[] = [];
  const endpoints: VhostUserEndpoint[] = [];
  const ports: Port[] = [];
  const mk = (path: string, client: boolean) => {
    const device = new NetDevice({
      queuePairs: o.queuePairs,
      label: path,
      ...(o.busyPollUs !== undefined ? { busyPollUs: o.busyPollUs } : {}),
    });
    const ep = new VhostUserEndpoint({
      path,
      client,
      device,
      native,
      ...(o.protocolFeatures !== undefined ? { protocolFeatures: o.protocolFeatures } : {}),
      ...(tracer ? { trace: (rec: TraceMessageRecord) => tracer.record({ ...rec, endpoint: path }) } : {}),
    });
    devices.push(device);
    endpoints.push(ep);
    return device;
  };
  const main = mk(o.socket, o.client);
  if (o.port?.kind === 'tap') {
    const tap = new TapPort(native, o.port.name);
    ports.push(tap);
    main.attachPort(tap);
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
