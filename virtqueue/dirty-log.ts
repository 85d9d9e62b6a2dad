/**
 * The dirty log of live migration (vhost-user.rst "Migration", "Dirty log"): a bitmap shared with
 * the frontend (SET_LOG_BASE with LOG_SHMFD), one bit per 4 KiB page of guest physical memory.
 * "The log is a bitmap with one bit per page ... written to using an atomic OR": the frontend
 * reads and clears bits concurrently (QEMU syncs it with atomic exchanges), so a plain
 * read-modify-write here could drop a bit it is clearing or set at the same moment.
 *
 * Bit layout: page p is bit (p % 8) of byte (p / 8). QEMU reads the map as little-endian u64
 * words (bit p % 64 of word p / 64), which is the same bit on a little-endian host; every
 * vhost-user host we run on is little-endian (x86-64).
 *
 * Writes that fall outside the bitmap (the frontend sized it for less memory than it gave us) are
 * not written anywhere: they are counted in `overflows`, and the session reports them, because
 * such a page would silently migrate stale.
 */
import createDebug from 'debug';

const log = createDebug('vhost:log');

/** vhost-user.rst: "VHOST_LOG_PAGE 0x1000". */
export const LOG_PAGE = 0x1000;
const LOG_PAGE_SHIFT = 12;

export class DirtyLog {
  /** Pages marked (counting repeats), for diagnostics and tests. */
  marks = 0;
  /** Writes (partly) beyond the end of the bitmap. */
  overflows = 0;
  /** Highest guest physical address + 1 the bitmap covers. */
  readonly coveredBytes: number;

  /** `bits` is the mapped log area (SET_LOG_BASE mmap_offset .. + mmap_size). */
  constructor(readonly bits: Uint8Array) {
    this.coveredBytes = bits.length * 8 * LOG_PAGE;
  }

  /** Marks every page touched by [gpa, gpa + byteLen). */
  mark(gpa: number, byteLen: number): void {
    if (byteLen <= 0) return;
    const first = Math.floor(gpa / LOG_PAGE);
    const last = Math.floor((gpa + byteLen - 1) / LOG_PAGE);
    const bits = this.bits;
    const limit = bits.length * 8;
    for (let p = first; p <= last; p++) {
      if (p >= limit) {
        if (this.overflows++ === 0) log('write at gpa 0x%s is beyond the log (%d bytes)', gpa.toString(16), bits.length);
        return;
      }
      const byte = p >>> 3;
      const bit = 1 << (p & 7);
      // Skip the locked OR when the bit is already set (the common case for repeated writes).
      if ((bits[byte]! & bit) === 0) Atomics.or(bits, byte, bit);
      this.marks++;
    }
  }

  /** Is the page holding `gpa` marked? (tests, diagnostics) */
  isDirty(gpa: number): boolean {
    const p = gpa >>> LOG_PAGE_SHIFT;
    if (gpa >= this.coveredBytes) return false;
    return (this.bits[p >>> 3]! & (1 << (p & 7))) !== 0;
  }

  /** Page numbers currently marked, ascending (tests, diagnostics). */
  dirtyPages(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.bits.length; i++) {
      const b = this.bits[i]!;
      if (b === 0) continue;
      for (let j = 0; j < 8; j++) if (b & (1 << j)) out.push(i * 8 + j);
    }
    return out;
  }
}
