/** Hand-built Ethernet/IP/TCP frames and a receiver-side checksum check, for offload tests. */
import { fold, sum16 } from '../../backend/net/frame/offload.ts';

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

/** Receiver-side TCP check: pseudo header + segment sums to 0xffff. */
export function tcpValid(seg: Uint8Array, ipv6: boolean): boolean {
  const l3 = 14;
  const l4 = ipv6 ? 54 : 34;
  let sum = ipv6 ? sum16(seg, l3 + 8, l3 + 40) : sum16(seg, l3 + 12, l3 + 20);
  sum += 6 + (seg.length - l4);
  return fold(sum16(seg, l4, seg.length, sum)) === 0xffff;
}

