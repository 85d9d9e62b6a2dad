/**
 * The request-handler table: one handler per frontend request id, in families. The session is handed
 * this table (it does not import it); the table row of protocol/messages.ts (payload, fds, reply
 * kind, required feature) is enforced before a handler runs, and REPLY_ACK is generic.
 */
import type { HandlerTable } from '../session.ts';
import { DEVICE_HANDLERS } from './device.ts';
import { MEMORY_HANDLERS } from './memory.ts';
import { NEGOTIATION_HANDLERS } from './negotiation.ts';
import { RING_HANDLERS } from './rings.ts';

export const REQUEST_HANDLERS: HandlerTable = Object.freeze({
  ...NEGOTIATION_HANDLERS,
  ...MEMORY_HANDLERS,
  ...RING_HANDLERS,
  ...DEVICE_HANDLERS,
});

/** Frontend request ids this backend implements (the rest get a clear error reply). */
export function supportedRequests(): number[] {
  return Object.keys(REQUEST_HANDLERS).map(Number);
}
