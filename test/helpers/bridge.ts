/**
 * A network namespace with a Linux bridge, for tests where the guest moves between two backends (live
 * migration): each backend's TAP device is a port of the bridge, the bridge carries the host address.
 *
 *   netns NS:  br0 10.0.x.1/24 ── tapA (source backend)  ── guest (before)
 *                              └─ tapB (destination backend) ── guest (after)
 *
 * The bridge forwards a frame for the guest's MAC to the port it last learned that MAC on, so after the
 * switchover traffic follows the guest only once the guest sent something through the destination port (its
 * gratuitous ARPs on VIRTIO_NET_S_ANNOUNCE, or a RARP the backend injects on SEND_RARP). `fdbPort(mac)` shows
 * where the bridge thinks the guest is.
 *
 * STP stays off (the kernel default), so an enslaved port forwards at once (no listening/learning delay).
 */
import { execFile } from 'node:child_process';
import { inNetns, sh } from './netns.ts';

/** Where the bridge had a MAC, from `at` (Date.now()) on; port undefined = not in the FDB. */
export interface FdbChange {
  at: number;
  port: string | undefined;
}

export interface FdbWatch {
  /** Every change seen, the first entry is the state when watching started. */
  readonly changes: FdbChange[];
  /** First time the MAC was seen on `port` (at or after `since`), or undefined. */
  movedTo(port: string, since?: number): number | undefined;
  stop(): void;
}

export interface BridgeNetns {
  ns: string;
  bridge: string;
  /** The bridge's address with prefix, e.g. 10.0.7.1/24. */
  cidr: string;
  /** Makes `dev` (already in the namespace) a port of the bridge, link up, no IPv6 (quiet wire). */
  enslave(dev: string): void;
  /** Waits until `dev` exists in the namespace (a backend creates its tap when it starts), then enslaves it. */
  attach(dev: string, timeoutMs?: number): Promise<void>;
  /** The bridge port the FDB has `mac` on, or undefined. */
  fdbPort(mac: string): string | undefined;
  /**
   * Polls the FDB for `mac` every `intervalMs` (asynchronously: the test's event loop keeps serving QMP and
   * consoles) and records each change with its time, e.g. when the guest's announce reached the bridge.
   */
  watchFdb(mac: string, intervalMs?: number): FdbWatch;
  /** Deletes the namespace (and everything in it). Idempotent. */
  remove(): void;
}

function tryDel(ns: string): void {
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    /* none */
  }
}

export function linkExists(ns: string, dev: string): boolean {
  try {
    inNetns(ns, 'ip', ['link', 'show', dev]);
    return true;
  } catch {
    return false;
  }
}

/** Creates namespace `ns` (deleted first if a crashed run left it) with bridge `bridge` carrying `cidr`. */
export function bridgeNetns(ns: string, cidr: string, bridge = 'br0'): BridgeNetns {
  tryDel(ns);
  sh('ip', ['netns', 'add', ns]);
  try {
    inNetns(ns, 'ip', ['link', 'set', 'lo', 'up']);
    inNetns(ns, 'ip', ['link', 'add', bridge, 'type', 'bridge']);
    inNetns(ns, 'sysctl', ['-q', '-w', `net.ipv6.conf.${bridge}.disable_ipv6=1`]);
    inNetns(ns, 'ip', ['addr', 'add', cidr, 'dev', bridge]);
    inNetns(ns, 'ip', ['link', 'set', bridge, 'up']);
  } catch (e) {
    tryDel(ns);
    throw e;
  }
  const enslave = (dev: string) => {
    try {
      inNetns(ns, 'sysctl', ['-q', '-w', `net.ipv6.conf.${dev}.disable_ipv6=1`]);
    } catch {
      /* a device without IPv6 conf */
    }
    inNetns(ns, 'ip', ['link', 'set', dev, 'master', bridge]);
    inNetns(ns, 'ip', ['link', 'set', dev, 'up']);
  };
  const fdbPortOf = (json: string, mac: string) =>
    (JSON.parse(json) as Array<{ mac: string; ifname: string; state?: string }>).find(
      (e) => e.mac.toLowerCase() === mac.toLowerCase() && e.ifname !== bridge && e.state !== 'permanent',
    )?.ifname;
  return {
    ns,
    bridge,
    cidr,
    enslave,
    watchFdb(mac, intervalMs = 25) {
      const changes: FdbChange[] = [];
      let stopped = false;
      const poll = () => {
        if (stopped) return;
        execFile('ip', ['netns', 'exec', ns, 'bridge', '-j', 'fdb', 'show', 'br', bridge], (err, out) => {
          if (stopped) return;
          if (!err) {
            const port = fdbPortOf(out, mac);
            if (changes.length === 0 || changes.at(-1)!.port !== port) changes.push({ at: Date.now(), port });
          }
          setTimeout(poll, intervalMs);
        });
      };
      poll();
      return {
        changes,
        movedTo: (port, since = 0) => changes.find((c) => c.port === port && c.at >= since)?.at,
        stop: () => {
          stopped = true;
        },
      };
    },
    async attach(dev, timeoutMs = 10_000) {
      const end = Date.now() + timeoutMs;
      while (!linkExists(ns, dev)) {
        if (Date.now() > end) throw Object.assign(new Error(`no device ${dev} in netns ${ns} after ${timeoutMs} ms`), { code: 'BRIDGE_NO_DEV' });
        await new Promise((r) => setTimeout(r, 50));
      }
      enslave(dev);
    },
    fdbPort: (mac) => fdbPortOf(inNetns(ns, 'bridge', ['-j', 'fdb', 'show', 'br', bridge]), mac),
    remove: () => tryDel(ns),
  };
}
