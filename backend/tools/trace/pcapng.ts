/**
 * `trace export --pcapng`: the frames seen on the rings ('chain' ring records) as a pcapng file that
 * tshark / Wireshark open. Written by hand (pcapng, draft-ietf-opsawg-pcapng): one Section Header
 * Block, one Interface Description Block per (endpoint, ring, direction) with LINKTYPE_ETHERNET and
 * nanosecond timestamps (if_tsresol 9), one Enhanced Packet Block per chain with its direction in
 * epb_flags. Frames are as recorded: cut at the recorder's snap length, with the original length.
 * All blocks little-endian (the byte-order magic tells readers).
 */
import { chainDetail, type TraceHeader, type TraceRecord } from '../../../protocol/index.ts';

const SHB = 0x0a0d0d0a;
const IDB = 0x00000001;
const EPB = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
export const LINKTYPE_ETHERNET = 1;
const OPT_END = 0;
const OPT_COMMENT = 1;
const SHB_USERAPPL = 4;
const IF_NAME = 2;
const IF_DESCRIPTION = 3;
const IF_TSRESOL = 9;
const EPB_FLAGS = 2;
/** epb_flags bits 0-1: 01 inbound, 10 outbound (from the guest's point of view, as a NIC sees it). */
const INBOUND = 1;
const OUTBOUND = 2;

const pad4 = (n: number) => (n + 3) & ~3;

function option(code: number, value: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + pad4(value.length));
  const dv = new DataView(out.buffer);
  dv.setUint16(0, code, true);
  dv.setUint16(2, value.length, true);
  out.set(value, 4);
  return out;
}

const text = (s: string) => new TextEncoder().encode(s);

function options(opts: Uint8Array[]): Uint8Array {
  if (opts.length === 0) return new Uint8Array(0);
  return concat([...opts, option(OPT_END, new Uint8Array(0))]);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** type, total length, body (padded), total length again. */
function block(type: number, body: Uint8Array): Uint8Array {
  const len = 12 + pad4(body.length);
  const out = new Uint8Array(len);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, type, true);
  dv.setUint32(4, len, true);
  out.set(body, 8);
  dv.setUint32(len - 4, len, true);
  return out;
}

function shb(appl: string): Uint8Array {
  const fixed = new Uint8Array(16);
  const dv = new DataView(fixed.buffer);
  dv.setUint32(0, BYTE_ORDER_MAGIC, true);
  dv.setUint16(4, 1, true); // major
  dv.setUint16(6, 0, true); // minor
  dv.setBigInt64(8, -1n, true); // section length unknown
  return block(SHB, concat([fixed, options([option(SHB_USERAPPL, text(appl))])]));
}

function idb(name: string, description: string, snaplen: number): Uint8Array {
  const fixed = new Uint8Array(8);
  const dv = new DataView(fixed.buffer);
  dv.setUint16(0, LINKTYPE_ETHERNET, true);
  dv.setUint32(4, snaplen, true);
  return block(
    IDB,
    concat([fixed, options([option(IF_NAME, text(name)), option(IF_DESCRIPTION, text(description)), option(IF_TSRESOL, Uint8Array.of(9))])]),
  );
}

function epb(ifId: number, tsNs: bigint, frame: Uint8Array, origLen: number, flags: number, comment: string): Uint8Array {
  const fixed = new Uint8Array(20);
  const dv = new DataView(fixed.buffer);
  dv.setUint32(0, ifId, true);
  const ts = BigInt.asUintN(64, tsNs);
  dv.setUint32(4, Number(ts >> 32n), true);
  dv.setUint32(8, Number(ts & 0xffffffffn), true);
  dv.setUint32(12, frame.length, true);
  dv.setUint32(16, Math.max(origLen, frame.length), true);
  const data = new Uint8Array(pad4(frame.length));
  data.set(frame);
  const f = new Uint8Array(4);
  new DataView(f.buffer).setUint32(0, flags, true);
  return block(EPB, concat([fixed, data, options([option(EPB_FLAGS, f), option(OPT_COMMENT, text(comment))])]));
}

export interface PcapngResult {
  bytes: Uint8Array;
  packets: number;
  interfaces: string[];
}

/**
 * Build a pcapng file from trace records. `header` (readTraceHeader) gives the wall-clock origin;
 * without wallNs (older files) timestamps count from the epoch.
 */
export function tracePcapng(records: readonly TraceRecord[], header: Pick<TraceHeader, 't' | 'wallNs'> | null, snaplen = 65535): PcapngResult {
  const parts: Uint8Array[] = [shb('vhost-user-ts trace export')];
  const ifIds = new Map<string, number>();
  const interfaces: string[] = [];
  const origin = header?.wallNs !== undefined ? header.wallNs - header.t : -(records[0]?.t ?? 0n);
  let packets = 0;
  for (const rec of records) {
    if (rec.kind !== 'ring') continue;
    const c = chainDetail(rec);
    if (c === null) continue;
    const ep = rec.endpoint ?? '';
    const key = `${ep}\u0000${rec.queue}\u0000${c.dir}`;
    let id = ifIds.get(key);
    if (id === undefined) {
      id = interfaces.length;
      const name = `q${rec.queue}-${c.dir}${ep ? `@${ep}` : ''}`;
      interfaces.push(name);
      ifIds.set(key, id);
      parts.push(idb(name, `vhost-user ring ${rec.queue} ${c.dir === 'tx' ? 'guest TX (frames the guest sent)' : 'guest RX (frames given to the guest)'}`, snaplen));
    }
    const flags = c.dir === 'tx' ? OUTBOUND : INBOUND;
    parts.push(epb(id, origin + rec.t, c.frame, c.frameLen, flags, `head=${c.head} descs=${c.descs} len=${c.len}`));
    packets++;
  }
  return { bytes: concat(parts), packets, interfaces };
}

/** Minimal reader (tests): block types and, for EPBs, interface id, captured/original length and data. */
export function parsePcapng(bytes: Uint8Array): { type: number; ifId?: number; capLen?: number; origLen?: number; data?: Uint8Array; linktype?: number }[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: { type: number; ifId?: number; capLen?: number; origLen?: number; data?: Uint8Array; linktype?: number }[] = [];
  let off = 0;
  while (off + 12 <= bytes.length) {
    const type = dv.getUint32(off, true);
    const len = dv.getUint32(off + 4, true);
    if (len < 12 || len % 4 !== 0 || off + len > bytes.length || dv.getUint32(off + len - 4, true) !== len) {
      throw new Error(`bad pcapng block at ${off}`);
    }
    if (type === EPB) {
      const capLen = dv.getUint32(off + 20, true);
      out.push({ type, ifId: dv.getUint32(off + 8, true), capLen, origLen: dv.getUint32(off + 24, true), data: bytes.slice(off + 28, off + 28 + capLen) });
    } else if (type === IDB) {
      out.push({ type, linktype: dv.getUint16(off + 8, true) });
    } else out.push({ type });
    off += len;
  }
  return out;
}
