/** A RARP announcement for `mac` (RFC 903), as sent after migration so switches learn the port. */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6); // broadcast
  f.set(mac, 6);
  const dv = new DataView(f.buffer);
  dv.setUint16(12, 0x8035); // ETH_P_RARP
  dv.setUint16(14, 1); // hardware type Ethernet
  dv.setUint16(16, 0x0800); // protocol IPv4
  f[18] = 6;
  f[19] = 4;
  dv.setUint16(20, 3); // reverse request
  f.set(mac, 22);
  f.set(mac, 32);
  return f;
}
