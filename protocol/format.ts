/**
 * One-line human rendering of decoded payloads, shared by describe() (debug('vhost:proto')) and the
 * trace printer. Addresses and masks in hex, counts in decimal, feature masks with their names,
 * zero padding omitted.
 */
import { ProtoF, VirtioF, featureNames } from './features.ts';

const FEATURE_FIELDS: Readonly<Record<string, Readonly<Record<string, number>>>> = {
  GET_FEATURES: VirtioF,
  SET_FEATURES: VirtioF,
  GET_PROTOCOL_FEATURES: ProtoF,
  SET_PROTOCOL_FEATURES: ProtoF,
};

/** Fields rendered in decimal; everything else numeric is hex. */
const DECIMAL = new Set(['index', 'num', 'nregions', 'size', 'numQueues', 'queueSize', 'shmid', 'offset']);

function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

function isZeroPadding(key: string, v: unknown): boolean {
  if (!key.startsWith('padding')) return false;
  if (v === 0 || v === 0n) return true;
  return v instanceof Uint8Array && v.every((b) => b === 0);
}

function toHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

export function formatBytes(b: Uint8Array, max = 32): string {
  if (b.length === 16) {
    const h = toHex(b);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  if (b.length === 6) return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
  const shown = toHex(b.subarray(0, max));
  return b.length > max ? `${shown}…(${b.length} bytes)` : `<${shown}>`;
}

export function formatValue(key: string, v: unknown): string {
  if (typeof v === 'bigint') return DECIMAL.has(key) && key !== 'offset' && key !== 'size' ? v.toString() : hex(v);
  if (typeof v === 'number') return DECIMAL.has(key) ? String(v) : hex(v);
  if (typeof v === 'boolean') return String(v);
  if (v instanceof Uint8Array) return formatBytes(v);
  if (Array.isArray(v)) return `[${v.map((x) => formatValue(key, x)).join(', ')}]`;
  if (v !== null && typeof v === 'object') return `{${formatFields(v as Record<string, unknown>)}}`;
  return String(v);
}

function formatFields(obj: Record<string, unknown>): string {
  return Object.entries(obj)
    .filter(([k, v]) => v !== undefined && !isZeroPadding(k, v))
    .map(([k, v]) => `${k}=${formatValue(k, v)}`)
    .join(' ');
}

/**
 * Render a decoded payload. `name` (the request name) lets feature masks show their bit names;
 * `isReply` is needed because an acked SET_FEATURES carries a status, not a mask.
 */
export function formatPayload(name: string, payload: unknown, isReply = false): string {
  if (payload === null || payload === undefined) return '';
  if (typeof payload === 'bigint') return hex(payload);
  if (payload instanceof Uint8Array) return formatBytes(payload);
  if (typeof payload !== 'object') return String(payload);
  const p = payload as Record<string, unknown>;
  const table = FEATURE_FIELDS[name];
  const featureMask = table && typeof p.value === 'bigint' && (name.startsWith('GET_') ? isReply : !isReply);
  if (featureMask) return `${hex(p.value as bigint)} <${featureNames(p.value as bigint, table).join('|')}>`;
  if (Object.keys(p).length === 1 && typeof p.value === 'bigint') return hex(p.value);
  if ('value' in p && ('index' in p || 'mac' in p)) {
    // vring_fd / rarp_mac also carry the raw u64; the decoded fields say it better.
    const { value: _raw, ...rest } = p;
    return formatFields(rest);
  }
  return formatFields(p);
}
