/**
 * Per-ring state as vhost-user.rst "Ring states" defines it: two independent booleans, started
 * (SET_VRING_KICK .. GET_VRING_BASE) and enabled (SET_VRING_ENABLE, or implicitly when
 * VHOST_USER_F_PROTOCOL_FEATURES is not negotiated), plus the configuration that arrives piecemeal
 * (NUM, ADDR, BASE) and the three eventfds.
 */
import type { Fd, Poller } from '../../native/types.ts';
import type { Virtqueue } from '../../virtqueue/index.ts';

export interface RingAddr {
  flags: number;
  descUva: bigint;
  usedUva: bigint;
  availUva: bigint;
  logGpa: bigint;
}

export class RingState {
  num = 0;
  addr: RingAddr | null = null;
  /**
   * SET_VRING_BASE value as received: split rings use bits 0-15 (next avail index); packed rings
   * the 32-bit encoding of avail/used positions and wrap counters (vhost-user.rst "Vring descriptor
   * indices for packed virtqueues"). GET_VRING_BASE answers in the same form.
   */
  base = 0;
  started = false;
  enabled = false;
  kickFd: Fd | null = null;
  callFd: Fd | null = null;
  errFd: Fd | null = null;
  kickPoller: Poller | null = null;
  /** SET_VRING_KICK with NOFD: no kicks will come, so the ring is polled while it is ready. */
  pollTimer: NodeJS.Timeout | null = null;
  /** The engine object while the ring is ready (started, enabled, mapped). */
  queue: Virtqueue | null = null;
  /** Memory generation the queue was built against; a new memory table restarts the queue. */
  memGeneration = -1;
  /** Sticky guest error: the ring stays down until reconfigured (SET_VRING_BASE/ADDR/KICK). */
  broken: Error | null = null;
  /** In-band call (VRING_CALL on the backend channel) awaiting its ack / wanted again meanwhile. */
  inbandCallInFlight = false;
  inbandCallAgain = false;
  /** A used-buffer notification was due while there was no call fd (nor in-band calls): owed to the next one. */
  callOwed = false;
  constructor(readonly index: number) {}
}
