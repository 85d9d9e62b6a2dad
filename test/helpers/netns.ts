/**
 * Network namespaces and persistent TAP devices for tests against real peers.
 *
 * A persistent tap (`ip tuntap add ... vnet_hdr`) outlives the process that has it open: a backend that
 * crashes (SIGKILL) leaves the device, its addresses and its MAC in place, and a restarted backend attaches
 * to the same device (TUNSETIFF on an existing name). While no process has it open the kernel keeps its
 * carrier off, so frames routed to it are dropped.
 */
import { execFileSync } from 'node:child_process';

export const sh = (cmd: string, args: readonly string[]): string =>
  execFileSync(cmd, [...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** `ip netns exec NS cmd args...`. */
export const inNetns = (ns: string, cmd: string, args: readonly string[]): string => sh('ip', ['netns', 'exec', ns, cmd, ...args]);

export interface PersistentTap {
  ns: string;
  name: string;
  mac: string;
  /** `ip -s link` counters of the tap as the namespace sees it (rx = frames the backend wrote). */
  stats(): { rxPackets: number; rxDropped: number; txPackets: number; txDropped: number; carrier: boolean };
  /** Deletes the namespace (and the tap in it). Idempotent. */
  remove(): void;
}

/**
 * Creates namespace `ns` (lo up) with a persistent vnet_hdr tap `name` carrying `cidr`, link up. The
 * namespace is deleted first if it exists (a crashed earlier run).
 */
export function persistentTap(ns: string, name: string, cidr: string): PersistentTap {
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    /* none */
  }
  sh('ip', ['netns', 'add', ns]);
  const remove = () => {
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      /* gone */
    }
  };
  try {
    inNetns(ns, 'ip', ['link', 'set', 'lo', 'up']);
    inNetns(ns, 'ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap', 'vnet_hdr']);
    inNetns(ns, 'ip', ['addr', 'add', cidr, 'dev', name]);
    inNetns(ns, 'ip', ['link', 'set', name, 'up']);
    // No IPv6 on the tap: no DAD / RS / MLD frames towards the guest while a test counts traffic.
    inNetns(ns, 'sysctl', ['-q', '-w', `net.ipv6.conf.${name}.disable_ipv6=1`]);
  } catch (e) {
    remove();
    throw e;
  }
  const link = JSON.parse(inNetns(ns, 'ip', ['-j', 'link', 'show', name])) as Array<{ address: string }>;
  return {
    ns,
    name,
    mac: link[0]!.address,
    stats() {
      const j = JSON.parse(inNetns(ns, 'ip', ['-j', '-s', 'link', 'show', name])) as Array<{
        flags: string[];
        stats64: { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } };
      }>;
      const s = j[0]!.stats64;
      return {
        rxPackets: s.rx.packets,
        rxDropped: s.rx.dropped,
        txPackets: s.tx.packets,
        txDropped: s.tx.dropped,
        carrier: !j[0]!.flags.includes('NO-CARRIER'),
      };
    },
    remove,
  };
}
