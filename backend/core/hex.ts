/** Addresses and feature masks in log lines and error messages, as the spec and QEMU print them. */
export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}
