/**
 * `vhost-user-ts conform` in-process: a net device on one vhost-user socket, served exactly as
 * `vhost-user-ts net` serves it, with the conformance engine on the session's trace option, the
 * probes scheduled once a connection has a started ring, and the reconnect probe (which needs to
 * drop the connection: the endpoint is closed and a new one opened on the same path).
 */
import createDebug from 'debug';
import type { NativeBinding } from '../../../native/types.ts';
import { NetDevice } from '../../net/device/net-device.ts';
import { VhostUserEndpoint } from '../../core/server.ts';
import { TapPort } from '../../net/ports/tap.ts';
import type { Port } from '../../net/ports/port.ts';
import { BackendError } from '../../core/errors.ts';
import type { PortSpec } from '../app.ts';
import { ConformEngine } from './engine.ts';
import { probeConfigChange, probeIotlb, type ProbeName } from './probes.ts';

const log = createDebug('vhost:conform');

export interface ConformOptions {
  socket: string;
  client: boolean;
  queuePairs: number;
  port: PortSpec | null;
  protocolFeatures?: bigint;
  probes: readonly ProbeName[];
  /** Delay between a connection's first started ring and the probes. Default 1000 ms. */
  probeDelayMs?: number;
  /** Reconnect probe: drop the first connection this long after its first ring started. Default 3000 ms. */
  reconnectAfterMs?: number;
  /** Reconnect probe: the frontend must be back with a started ring within this. Default 20000 ms. */
  reconnectTimeoutMs?: number;
  sampleMs?: number;
}

export class ConformRunner {
  readonly engine: ConformEngine;
  readonly device: NetDevice;
  endpoint: VhostUserEndpoint;
  private readonly ports: Port[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly probed = new Set<number>();
  private reconnectState: 'idle' | 'armed' | 'dropped' | 'done' = 'idle';
  private closed = false;

  constructor(
    private readonly native: NativeBinding,
    private readonly opts: ConformOptions,
  ) {
    if (opts.port?.kind === 'vhost') throw new BackendError('CLI_USAGE', 'conform supports --port tap:NAME only');
    this.device = new NetDevice({ queuePairs: opts.queuePairs, label: opts.socket });
    if (opts.port?.kind === 'tap') {
      const tap = new TapPort(native, opts.port.name);
      this.ports.push(tap);
      this.device.attachPort(tap);
    }
    this.engine = new ConformEngine({ deviceRings: this.device.maxRings, ...(opts.sampleMs !== undefined ? { sampleMs: opts.sampleMs } : {}) });
    if (opts.probes.includes('reconnect')) this.reconnectState = 'armed';
    this.engine.onMessage((ev) => {
      if (ev.rec.name !== 'SET_VRING_KICK' || ev.error) return;
      const n = this.engine.sessions;
      if (this.probed.has(n)) return;
      this.probed.add(n);
      this.later(this.opts.probeDelayMs ?? 1000, () => void this.runProbes(n));
      if (this.reconnectState === 'armed' && n === 1) this.later(this.opts.reconnectAfterMs ?? 3000, () => this.dropConnection());
    });
    this.endpoint = this.makeEndpoint();
  }

  private makeEndpoint(): VhostUserEndpoint {
    const ep = new VhostUserEndpoint({
      path: this.opts.socket,
      client: this.opts.client,
      device: this.device,
      native: this.native,
      ...(this.opts.protocolFeatures !== undefined ? { protocolFeatures: this.opts.protocolFeatures } : {}),
      trace: this.engine.trace,
    });
    this.engine.attach(ep);
    return ep;
  }

  start(): void {
    this.endpoint.start();
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  private async runProbes(sessionNo: number): Promise<void> {
    if (this.engine.sessions !== sessionNo || !this.engine.model) return;
    if (this.opts.probes.includes('iotlb')) await probeIotlb(this.engine);
    if (this.opts.probes.includes('config')) await probeConfigChange(this.engine);
  }

  /**
   * VU-RCN-001: drop the connection (close the endpoint, open a new one on the same path) and wait
   * for the frontend to come back and set the device up again: SET_OWNER, features, a memory table
   * and a started ring, in the new connection.
   */
  private dropConnection(): void {
    if (this.reconnectState !== 'armed') return;
    this.reconnectState = 'dropped';
    log('reconnect probe: dropping the connection');
    this.endpoint.close();
    this.endpoint = this.makeEndpoint();
    this.endpoint.start();
    const deadline = Date.now() + (this.opts.reconnectTimeoutMs ?? 20_000);
    const poll = () => {
      const m = this.engine.models[1];
      const ringUp = m && [...m.rings.values()].some((r) => r.started && r.addr !== null) && m.regions.length > 0;
      if (ringUp) {
        this.reconnectState = 'done';
        const missing = ['SET_OWNER', 'SET_FEATURES'].filter((n) => !m.requests.includes(n));
        if (!m.requests.includes('SET_MEM_TABLE') && !m.requests.includes('ADD_MEM_REG')) missing.push('a memory table');
        if (missing.length) this.engine.record('VU-RCN-001', 'fail', `reconnected without ${missing.join(', ')}`);
        else this.engine.record('VU-RCN-001', 'pass');
        return;
      }
      if (Date.now() > deadline) {
        this.reconnectState = 'done';
        this.engine.record('VU-RCN-001', 'fail', m ? 'reconnected but no ring was started again' : 'the frontend did not reconnect');
        return;
      }
      this.later(50, poll);
    };
    this.later(50, poll);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.engine.stop();
    this.endpoint.close();
    for (const p of this.ports) p.close();
  }
}
