/**
 * protocol/: the pure vhost-user codec (bytes <-> typed messages, driven by one table), the
 * tracer, and a scripted front-end for tests. No sockets, no session state; only trace.ts touches
 * the file system.
 */
export * from './constants.ts';
export * from './features.ts';
export * from './errors.ts';
export {
  LITTLE_ENDIAN,
  LayoutSizeError,
  U64_MAX,
  addOverflows,
  array,
  bytes,
  struct,
  u8,
  u16,
  u32,
  u64,
  type Field,
  type Layout,
  type LayoutValue,
  type PayloadError,
  type StructLayout,
} from './layout.ts';
export * from './payloads.ts';
export * from './messages.ts';
export * from './header.ts';
export * from './framer.ts';
export * from './codec.ts';
export { formatPayload } from './format.ts';
export * from './trace.ts';
export * from './frontend.ts';
