/**
 * Socket glue for protocol/frontend.ts: a ScriptedFrontend connected over a real AF_UNIX socket
 * (real SCM_RIGHTS), so loopback tests exercise exactly the path QEMU uses.
 */
import type { NativeBinding, Fd, Poller } from '../../native/types.ts';
import { POLL_READABLE, POLL_DISCONNECT } from '../../native/types.ts';
import { ScriptedFrontend, type ScriptedFrontendOptions, type VhostMessage, type VringAddr } from '../../protocol/index.ts';

export interface SocketFrontend {
  fe: ScriptedFrontend;
  fd: Fd;
  /** Resolves when the backend closes the connection. */
  closed: Promise<void>;
  close(): void;
}

export function connectFrontend(
  native: NativeBinding,
  target: { path: string } | { fd: Fd },
  opts: ScriptedFrontendOptions = {},
): SocketFrontend {
  const fd = 'fd' in target ? target.fd : native.unixConnect(target.path);
  let onData: ((chunk: Uint8Array, fds: number[]) => void) | null = null;
  let poller: Poller | null = null;
  let open = true;
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));
  const buf = new Uint8Array(65536);
  const close = () => {
    if (!open) return;
    open = false;
    poller?.close();
    native.close(fd);
    fe.close('closed');
    resolveClosed();
  };
  const fe = new ScriptedFrontend(
    {
      send(bytes, fds) {
        let off = 0;
        let first = true;
        while (off < bytes.length) {
          const n = native.sendmsg(fd, bytes, off, bytes.length - off, first ? fds : []);
          if (n === null) throw new Error('test frontend: socket full');
          off += n;
          first = false;
        }
      },
      onData(cb) {
        onData = cb;
      },
    },
    opts,
  );
  poller = new native.Poller(fd, (err) => {
    if (err) return close();
    for (;;) {
      const r = native.recvmsg(fd, buf, 0, buf.length, 8);
      if (r === null) return;
      if (r.byteLen === 0) return close();
      onData?.(buf.slice(0, r.byteLen), r.fds);
    }
  });
  poller.start(POLL_READABLE | POLL_DISCONNECT);
  return { fe, fd, closed, close };
}

/**
 * SET_VRING_ADDR for rings at guest addresses desc / avail / used (split: descriptor table,
 * available and used rings; packed: descriptor ring, driver and device areas) in a guest memory
 * the frontend maps at user address `uvaBase` (gpa 0 there), as QEMU and DPDK send user addresses;
 * no used-ring logging.
 */
export function vringAddrAt(index: number, uvaBase: number, desc: number, avail: number, used: number): VringAddr {
  return {
    index,
    flags: 0,
    descUserAddr: BigInt(uvaBase + desc),
    usedUserAddr: BigInt(uvaBase + used),
    availUserAddr: BigInt(uvaBase + avail),
    logGuestAddr: 0n,
  };
}

/** The u64 of a reply: with REPLY_ACK, 0 = success (vhost-user.rst "REPLY_ACK"). */
export const ack = (m: VhostMessage | null): bigint => (m!.payload as { value: bigint }).value;
