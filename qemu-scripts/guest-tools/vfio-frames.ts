/**
 * Test frames of the VFIO guest tests, shared by the host test (test/integration/vfio-guest.test.ts) and the
 * scripted frontend inside the guest (vfio-frontend.ts): Ethernet frames of ethertype 0x88b5 (IEEE local
 * experimental) whose payload names the direction and a sequence number, with a length and byte pattern
 * derived from both, so a frame that arrives truncated, corrupted, duplicated or out of order is caught.
 */

export const FRONTEND_MAC = Uint8Array.of(0x02, 0x00, 0x00, 0x00, 0xfe, 0x01);
export const HOST_MAC = Uint8Array.of(0x02, 0x00, 0x00, 0x00, 0x40, 0x57);
export const ETHERTYPE = 0x88b5;
const MAGIC = [0x56, 0x55, 0x54, 0x56, 0x46, 0x49, 0x4f]; // "VUTVFIO"

/** 'o' = frontend -> NIC -> host (out), 'i' = host -> NIC -> frontend (in). */
export type Dir = 'o' | 'i';

export function frameLen(dir: Dir, seq: number): number {
  // 60..1514: minimum Ethernet payload to full MTU, different for each frame and direction.
  return 60 + ((seq * 131 + (dir === 'o' ? 0 : 57)) % 1455);
}

export function makeFrame(dir: Dir, seq: number): Uint8Array {
  const len = frameLen(dir, seq);
  const f = new Uint8Array(len);
  f.set(dir === 'o' ? HOST_MAC : FRONTEND_MAC, 0);
  f.set(dir === 'o' ? FRONTEND_MAC : HOST_MAC, 6);
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  f.set(MAGIC, 14);
  f[21] = dir.charCodeAt(0);
  f[22] = seq >> 8;
  f[23] = seq & 0xff;
  for (let i = 24; i < len; i++) f[i] = (i * 7 + seq * 13 + (dir === 'o' ? 1 : 2)) & 0xff;
  return f;
}

/** The sequence number of a well-formed test frame of direction `dir`, or an error string. */
export function checkFrame(dir: Dir, b: Uint8Array): number | string {
  if (b.length < 24) return `short frame (${b.length} bytes)`;
  if (b[12] !== ETHERTYPE >> 8 || b[13] !== (ETHERTYPE & 0xff)) return `ethertype 0x${((b[12]! << 8) | b[13]!).toString(16)}`;
  for (let i = 0; i < MAGIC.length; i++) if (b[14 + i] !== MAGIC[i]) return 'no VUTVFIO magic';
  if (b[21] !== dir.charCodeAt(0)) return `direction '${String.fromCharCode(b[21]!)}'`;
  const seq = (b[22]! << 8) | b[23]!;
  const want = makeFrame(dir, seq);
  if (b.length !== want.length) return `seq ${seq}: ${b.length} bytes, expected ${want.length}`;
  for (let i = 0; i < want.length; i++) if (b[i] !== want[i]) return `seq ${seq}: byte ${i} is ${b[i]}, expected ${want[i]}`;
  return seq;
}
