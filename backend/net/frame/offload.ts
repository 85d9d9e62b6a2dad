/**
 * Software fallbacks for virtio-net offloads, used when a frame carries offload work (partial
 * checksum, TCP segmentation) that the receiving guest did not negotiate:
 * - completeChecksum: VIRTIO_NET_HDR_F_NEEDS_CSUM (virtio v1.2 §5.1.6.2: "the checksum ... starting
 *   at csum_start ... placed at offset csum_offset"), RFC 1071 one's complement sum;
 * - segmentTcp: GSO_TCPV4 / GSO_TCPV6 into gso_size segments (what the kernel's TSO would do),
 *   each with correct IP lengths, IPv4 id and header checksum, TCP sequence, flags and checksum.
 * Pure functions over byte arrays; every offset comes from the frame itself and is bounds-checked,
 * because the frame (and its header) came from a guest.
 */

const ETH_P_IPV4 = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_VLAN = 0x8100;
const IPPROTO_TCP = 6;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;
/** UDP's checksum field is at offset 6; a computed 0 is sent as 0xffff there (RFC 768). */
const UDP_CSUM_OFFSET = 6;

/** 32-bit accumulation of big-endian 16-bit words over b[start, end) (odd tail padded with zero). */
export function sum16(b: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if (i < end) sum += b[i]! << 8;
  return sum;
}

export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
function get16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}
function get32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}
function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
}

/**
 * Completes a partial checksum in place: the field at csumStart+csumOffset holds the pseudo-header
 * sum the sender put there; the result covers [csumStart, byteLen). False if the offsets are outside
 * the frame (a hostile header): the frame is then left untouched.
 */
export function completeChecksum(frame: Uint8Array, byteLen: number, csumStart: number, csumOffset: number): boolean {
  const at = csumStart + csumOffset;
  if (csumStart >= byteLen || at + 2 > byteLen || byteLen > frame.length) return false;
  let c = ~fold(sum16(frame, csumStart, byteLen)) & 0xffff;
  if (c === 0 && csumOffset === UDP_CSUM_OFFSET) c = 0xffff;
  put16(frame, at, c);
  return true;
}

export interface TcpLayout {
  l3: number;
  l4: number;
  payload: number;
  ipv6: boolean;
}

/** Finds the IPv4/IPv6 + TCP headers of an Ethernet frame (optionally one VLAN tag); null if not TCP. */
export function parseTcp(frame: Uint8Array, byteLen: number): TcpLayout | null {
  if (byteLen < 14) return null;
  let l3 = 14;
  let type = get16(frame, 12);
  if (type === ETH_P_VLAN) {
    if (byteLen < 18) return null;
    type = get16(frame, 16);
    l3 = 18;
  }
  let l4: number;
  let ipv6: boolean;
  if (type === ETH_P_IPV4) {
    if (byteLen < l3 + 20) return null;
    const ihl = (frame[l3]! & 0x0f) * 4;
    if (ihl < 20 || frame[l3 + 9] !== IPPROTO_TCP) return null;
    l4 = l3 + ihl;
    ipv6 = false;
  } else if (type === ETH_P_IPV6) {
    // Extension headers are not walked: a TCP segment behind one is left to the guest stack.
    if (byteLen < l3 + 40 || frame[l3 + 6] !== IPPROTO_TCP) return null;
    l4 = l3 + 40;
    ipv6 = true;
  } else return null;
  if (byteLen < l4 + 20) return null;
  const doff = (frame[l4 + 12]! >> 4) * 4;
  if (doff < 20 || byteLen < l4 + doff) return null;
  return { l3, l4, payload: l4 + doff, ipv6 };
}

/** Full TCP checksum of the segment in seg[0, byteLen) with layout `t` (field zeroed first). */
function tcpChecksum(seg: Uint8Array, byteLen: number, t: TcpLayout): void {
  put16(seg, t.l4 + 16, 0);
  const tcpLen = byteLen - t.l4;
  let sum = t.ipv6 ? sum16(seg, t.l3 + 8, t.l3 + 40) : sum16(seg, t.l3 + 12, t.l3 + 20);
  sum += IPPROTO_TCP + tcpLen;
  sum = sum16(seg, t.l4, byteLen, sum);
  put16(seg, t.l4 + 16, ~fold(sum) & 0xffff);
}

/**
 * Splits a TCP frame into segments of at most `mss` payload bytes, calling `emit(seg, segLen)` for
 * each with a fully checksummed frame in `scratch` (reused: valid during the call). emit returns false
 * to stop early. Returns the number of segments emitted, or -1 if the frame is not segmentable TCP.
 */
export function segmentTcp(
  frame: Uint8Array,
  byteLen: number,
  mss: number,
  scratch: Uint8Array,
  emit: (seg: Uint8Array, segLen: number) => boolean,
): number {
  const t = parseTcp(frame, byteLen);
  if (!t || mss <= 0) return -1;
  const hdrBytes = t.payload;
  if (hdrBytes + mss > scratch.length) return -1;
  const seq0 = get32(frame, t.l4 + 4);
  const flags0 = frame[t.l4 + 13]!;
  const ipId0 = t.ipv6 ? 0 : get16(frame, t.l3 + 4);
  const ihl = t.l4 - t.l3;
  let n = 0;
  for (let off = hdrBytes; off < byteLen || (off === hdrBytes && byteLen === hdrBytes); off += mss) {
    const segPayload = Math.min(mss, byteLen - off);
    const segLen = hdrBytes + segPayload;
    scratch.set(frame.subarray(0, hdrBytes), 0);
    scratch.set(frame.subarray(off, off + segPayload), hdrBytes);
    const first = off === hdrBytes;
    const last = off + segPayload >= byteLen;
    if (t.ipv6) {
      put16(scratch, t.l3 + 4, segLen - t.l4);
    } else {
      put16(scratch, t.l3 + 2, segLen - t.l3);
      put16(scratch, t.l3 + 4, (ipId0 + n) & 0xffff);
      put16(scratch, t.l3 + 10, 0);
      put16(scratch, t.l3 + 10, ~fold(sum16(scratch, t.l3, t.l3 + ihl)) & 0xffff);
    }
    put32(scratch, t.l4 + 4, (seq0 + (off - hdrBytes)) >>> 0);
    let flags = flags0;
    if (!last) flags &= ~(TCP_FIN | TCP_PSH);
    if (!first) flags &= ~TCP_CWR;
    scratch[t.l4 + 13] = flags;
    tcpChecksum(scratch, segLen, t);
    n++;
    if (!emit(scratch, segLen)) break;
    if (segPayload === 0) break;
  }
  return n;
}
