/**
 * Hand-built Ethernet/IP/TCP frames and a receiver-side checksum check, for offload tests. The check
 * uses its own RFC 1071 checksum (`onesSum`, end-around carry at every word), not the production
 * sum16/fold it judges; test/unit/checksum-kat.test.ts holds both to known answers (RFC 1071's
 * example, and frames whose checksums the Linux kernel computed).
 */

/**
 * RFC 1071 one's complement sum of big-endian 16-bit words over b[start, end), an odd last byte
 * padded with zero, added to `sum` (itself a 16-bit one's complement sum). Written independently of
 * backend/net/frame/offload.ts: the carry is wrapped at every word, never deferred.
 */
export function onesSum(b: Uint8Array, start: number, end: number, sum = 0): number {
  for (let i = start; i < end; i += 2) {
    const word = i + 1 < end ? b[i]! * 256 + b[i + 1]! : b[i]! * 256;
    sum += word;
    if (sum > 0xffff) sum -= 0xffff;
  }
  return sum;
}

/** The Internet checksum field value for b[start, end): the complement of onesSum. */
export function internetChecksum(b: Uint8Array, start: number, end: number, sum = 0): number {
  return 0xffff - onesSum(b, start, end, sum);
}

/** Receiver-side IPv4 header check (RFC 791): the header, checksum included, sums to 0xffff. */
export function ipv4HeaderValid(f: Uint8Array, l3 = 14): boolean {
  return onesSum(f, l3, l3 + (f[l3]! & 0x0f) * 4) === 0xffff;
}

/** Receiver-side TCP (proto 6) or UDP (17) check over pseudo header + segment (RFC 793, 768, 8200 8.1). */
export function l4Valid(seg: Uint8Array, ipv6: boolean, proto = 6, l3 = 14): boolean {
  const l4 = ipv6 ? l3 + 40 : l3 + (seg[l3]! & 0x0f) * 4;
  const len = seg.length - l4;
  let sum = ipv6 ? onesSum(seg, l3 + 8, l3 + 40) : onesSum(seg, l3 + 12, l3 + 20);
  sum = onesSum(Uint8Array.of(0, proto, len >> 8, len & 0xff), 0, 4, sum);
  return onesSum(seg, l4, seg.length, sum) === 0xffff;
}

export function ipv4Tcp(payloadLen: number, flags = 0x18 | 0x01): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20 + payloadLen);
  const dv = new DataView(f.buffer);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, 20 + 20 + payloadLen);
  dv.setUint16(18, 0x1234); // id
  f[22] = 64;
  f[23] = 6;
  f.set([10, 0, 2, 15, 10, 0, 2, 1], 26);
  dv.setUint16(34, 40000);
  dv.setUint16(36, 5001);
  dv.setUint32(38, 0xfffffff0); // seq close to wrap
  f[46] = 5 << 4;
  f[47] = flags;
  for (let i = 0; i < payloadLen; i++) f[54 + i] = (i * 13) & 0xff;
  return f;
}

export function ipv6Tcp(payloadLen: number): Uint8Array {
  const f = new Uint8Array(14 + 40 + 20 + payloadLen);
  const dv = new DataView(f.buffer);
  dv.setUint16(12, 0x86dd);
  f[14] = 0x60;
  dv.setUint16(18, 20 + payloadLen);
  f[20] = 6;
  f[21] = 64;
  for (let i = 0; i < 32; i++) f[22 + i] = i + 1;
  dv.setUint16(54, 1234);
  dv.setUint16(56, 80);
  dv.setUint32(58, 1000);
  f[66] = 5 << 4;
  f[67] = 0x18;
  for (let i = 0; i < payloadLen; i++) f[74 + i] = (i * 7) & 0xff;
  return f;
}

/** Receiver-side TCP check: pseudo header + segment sums to 0xffff (the IPv4 header: ipv4HeaderValid). */
export function tcpValid(seg: Uint8Array, ipv6: boolean): boolean {
  return l4Valid(seg, ipv6, 6);
}

