/**
 * A live session without sockets or the addon: the real NetDevice and REQUEST_HANDLERS on the fake
 * native binding (native/fake.ts), requests encoded with the codec and handed to Session.handleFrame,
 * every reply and trace record kept. What a frontend would see over a socket, for tests that must ask
 * the product (not a constant) what it offers or how it answers.
 */
import { createFakeNative, type FakeNative } from '../../native/fake.ts';
import { Session, type SessionNative } from '../../backend/core/session.ts';
import { REQUEST_HANDLERS } from '../../backend/core/handlers/index.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import { HEADER_SIZE, decode, encode, readHeader, type VhostMessage } from '../../protocol/index.ts';
import type { TraceRecord } from '../../protocol/index.ts';

export interface LiveSession {
  session: Session;
  device: NetDevice;
  fake: FakeNative;
  /** Every trace record the session produced (requests and replies). */
  records: TraceRecord[];
  /** Sends request `id` and returns the decoded replies it caused. */
  request(id: number, payload?: unknown, o?: { needReply?: boolean; flags?: number }): VhostMessage[];
  /** Sends raw bytes as one frame. */
  raw(request: number, flags: number, payload?: Uint8Array): VhostMessage[];
  close(): void;
}

export function liveSession(o: { queuePairs?: number; native?: (fake: FakeNative) => SessionNative } = {}): LiveSession {
  const fake = createFakeNative();
  const device = new NetDevice({ queuePairs: o.queuePairs ?? 1, busyPollUs: 0, label: 'live' });
  const records: TraceRecord[] = [];
  const replies: VhostMessage[] = [];
  const session = new Session({
    device,
    handlers: REQUEST_HANDLERS,
    native: o.native?.(fake) ?? fake.native,
    label: 'live',
    trace: (r) => void records.push(r),
    send(bytes, fds) {
      const h = readHeader(bytes);
      replies.push(decode('frontend', { request: h.request, flags: h.flags, payload: bytes.slice(HEADER_SIZE), fds: [...fds] }));
    },
  });
  const frame = (request: number, flags: number, payload: Uint8Array): VhostMessage[] => {
    const before = replies.length;
    session.handleFrame({ request, flags, payload, fds: [] });
    return replies.slice(before);
  };
  return {
    session,
    device,
    fake,
    records,
    request(id, payload, ro = {}) {
      const enc = encode('frontend', id, { payload: payload ?? null, needReply: ro.needReply ?? false, ...(ro.flags !== undefined ? { flags: ro.flags } : {}) });
      const h = readHeader(enc.bytes);
      return frame(id, h.flags, enc.bytes.slice(HEADER_SIZE));
    },
    raw: (request, flags, payload = new Uint8Array(0)) => frame(request, flags, payload),
    close() {
      session.close();

    },
  };
}
