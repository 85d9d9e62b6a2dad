/**
 * Poll-mode driver for the Intel 82574L (QEMU's `-device e1000e`), after the 82574 GbE Controller
 * datasheet (rev 3.4): §4.6 initialization sequence, §7.1 receive (legacy descriptors), §7.2 transmit
 * (legacy descriptors), §10.2 register descriptions. One RX and one TX queue, legacy descriptors, 2 KiB
 * buffers, no offloads (the port does checksum/TSO in software), promiscuous (we are a switch uplink).
 *
 * Pure logic over two interfaces, so unit tests run it on fake BAR memory: `Regs` (32-bit MMIO, BAR0) and a
 * DMA allocator. Everything is allocated in init(); rxBurst/txFrame only touch preallocated views.
 *
 * MMIO ordering: on x86 stores are not reordered with other stores, and V8 emits typed-array stores in
 * program order, so "write the descriptor, then the tail register" needs no explicit barrier (ixy's note).
 */
import createDebug from 'debug';
import type { DmaChunk } from './dma.ts';

const log = createDebug('vhost:vfio:e1000e');

/** 32-bit register access to BAR0. */
export interface Regs {
  read(off: number): number;
  write(off: number, value: number): void;
}

/** Regs over the mmap()ed BAR (an external ArrayBuffer): 32-bit aligned loads and stores only. */
export class BarRegs implements Regs {
  private readonly u32: Uint32Array;
  constructor(ab: ArrayBuffer) {
    this.u32 = new Uint32Array(ab);
  }
  read(off: number): number {
    return this.u32[off >>> 2]!;
  }
  write(off: number, value: number): void {
    this.u32[off >>> 2] = value;
  }
}

export interface DmaAllocator {
  alloc(byteLen: number, align?: number): DmaChunk;
}

/** Register offsets (§10.2 "Register Summary"). */
export const REG = {
  CTRL: 0x0000,
  STATUS: 0x0008,
  EECD: 0x0010,
  EERD: 0x0014,
  CTRL_EXT: 0x0018,
  ICR: 0x00c0,
  ITR: 0x00c4,
  IMS: 0x00d0,
  IMC: 0x00d8,
  RCTL: 0x0100,
  TCTL: 0x0400,
  TIPG: 0x0410,
  RDBAL: 0x2800,
  RDBAH: 0x2804,
  RDLEN: 0x2808,
  RDH: 0x2810,
  RDT: 0x2818,
  RDTR: 0x2820,
  TDBAL: 0x3800,
  TDBAH: 0x3804,
  TDLEN: 0x3808,
  TDH: 0x3810,
  TDT: 0x3818,
  RFCTL: 0x5008,
  MTA: 0x5200,
  RAL0: 0x5400,
  RAH0: 0x5404,
  // Statistics (§10.2.6), all clear-on-read.
  CRCERRS: 0x4000,
  MPC: 0x4010,
  GPRC: 0x4074,
  BPRC: 0x4078,
  MPRC: 0x407c,
  GPTC: 0x4080,
  GORCL: 0x4088,
  GORCH: 0x408c,
  GOTCL: 0x4090,
  GOTCH: 0x4094,
  RNBC: 0x40a0,
  TPR: 0x40d0,
  TPT: 0x40d4,
} as const;

export const CTRL_SLU = 1 << 6; // set link up
export const CTRL_ASDE = 1 << 5; // auto-speed detection
export const CTRL_LRST = 1 << 3;
export const CTRL_RST = 1 << 26; // device reset, self-clearing
export const CTRL_PHY_RST = 1 << 31;
export const STATUS_LU = 1 << 1;
export const RCTL_EN = 1 << 1;
export const RCTL_SBP = 1 << 2;
export const RCTL_UPE = 1 << 3; // unicast promiscuous
export const RCTL_MPE = 1 << 4; // multicast promiscuous
export const RCTL_BAM = 1 << 15; // accept broadcast
export const RCTL_SECRC = 1 << 26; // strip the Ethernet CRC
/** RCTL.BSIZE = 00 with BSEX = 0: 2048-byte receive buffers. */
export const RCTL_BSIZE_2048 = 0;
export const RFCTL_EXTEN = 1 << 15; // extended RX descriptors (we want legacy: clear)
export const TCTL_EN = 1 << 1;
export const TCTL_PSP = 1 << 3; // pad short packets
export const TCTL_CT_SHIFT = 4;
export const TCTL_COLD_SHIFT = 12;
/** IPGT 8, IPGR1 8, IPGR2 6: the 82574's recommended TIPG for copper (§10.2.5). */
export const TIPG_DEFAULT = 0x00602008;
export const EERD_START = 1 << 0;
export const EERD_DONE = 1 << 1;
export const EERD_ADDR_SHIFT = 2;
export const EERD_DATA_SHIFT = 16;
export const RAH_AV = 1 << 31;
/** Interrupt causes (ICR/IMS bits). */
export const ICR_TXDW = 1 << 0;
export const ICR_LSC = 1 << 2;
export const ICR_RXDMT0 = 1 << 4;
export const ICR_RXO = 1 << 6;
export const ICR_RXT0 = 1 << 7;

/** Legacy descriptors are 16 bytes (§7.1.4 receive, §7.2.10.1 transmit). */
export const DESC_BYTES = 16;
export const RXD_STAT_DD = 0x01;
export const RXD_STAT_EOP = 0x02;
/** Frame errors that make a received frame unusable: CE, SE, SEQ, CXE, RXE (IPE/TCPE are checksum verdicts only). */
export const RXD_ERR_FRAME = 0x01 | 0x02 | 0x04 | 0x10 | 0x80;
export const TXD_CMD_EOP = 0x01;
export const TXD_CMD_IFCS = 0x02;
export const TXD_CMD_RS = 0x08;
export const TXD_STAT_DD = 0x01;

export const BUF_BYTES = 2048;

export interface E1000eOptions {
  /** Descriptors per ring: a multiple of 8 (RDLEN/TDLEN are multiples of 128 bytes), 8..4096. */
  rxRing?: number;
  txRing?: number;
  /** Time budget for reset and EEPROM reads (busy-waited: init is synchronous). */
  timeoutMs?: number;
}

export interface E1000eStats {
  /** Good packets/octets received/transmitted as counted by the device (GPRC/GPTC/GORC/GOTC). */
  rxPackets: number;
  txPackets: number;
  rxOctets: number;
  txOctets: number;
  /** Missed (no descriptor/FIFO full: MPC) and receive-no-buffers (RNBC) events. */
  missed: number;
  noBuffers: number;
  crcErrors: number;
  broadcastRx: number;
  multicastRx: number;
}

/** Answer of the RX handler: 'ok' the frame was taken, 'drop' it was refused, 'busy' keep it and stop. */
export type RxVerdict = 'ok' | 'drop' | 'busy';

export class E1000e {
  readonly rxSize: number;
  readonly txSize: number;
  mac = new Uint8Array(6);
  readonly stats: E1000eStats = {
    rxPackets: 0,
    txPackets: 0,
    rxOctets: 0,
    txOctets: 0,
    missed: 0,
    noBuffers: 0,
    crcErrors: 0,
    broadcastRx: 0,
    multicastRx: 0,
  };
  /** Frames dropped by the driver: RX with frame errors or spread over several buffers. */
  rxErrors = 0;

  private rxRing!: DataView;
  private txRing!: DataView;
  private rxBufs: Uint8Array[] = [];
  private txBufs: Uint8Array[] = [];
  private rxIova: number[] = [];
  private txIova: number[] = [];
  /** Next RX descriptor the device will complete. */
  private rxNext = 0;
  /** Next free TX descriptor (= our copy of TDT) and oldest not yet reclaimed one. */
  private txTail = 0;
  private txClean = 0;
  /** TDT value last written (txFlush writes only when it changed). */
  private txPublished = 0;
  private readonly timeoutMs: number;

  constructor(
    private readonly regs: Regs,
    private readonly dma: DmaAllocator,
    opts: E1000eOptions = {},
  ) {
    this.rxSize = opts.rxRing ?? 256;
    this.txSize = opts.txRing ?? 256;
    for (const n of [this.rxSize, this.txSize]) {
      if (!Number.isInteger(n) || n < 8 || n > 4096 || n % 8 !== 0) throw new RangeError(`ring size ${n}: must be a multiple of 8 in 8..4096`);
    }
    this.timeoutMs = opts.timeoutMs ?? 200;
  }

  /** DMA bytes init() will allocate (for sizing the pool). */
  static dmaBytes(rxRing = 256, txRing = 256): number {
    return (rxRing + txRing) * (DESC_BYTES + BUF_BYTES) + 2 * 128;
  }

  /** The §4.6 sequence. The caller has enabled bus mastering (PCI command register) before. */
  init(): void {
    const r = this.regs;
    // §4.6.1: mask all interrupts before the reset, and again after it (the reset re-enables nothing, but
    // a pending cause would fire as soon as a vector is wired up).
    r.write(REG.IMC, 0xffffffff);
    // §4.6.2 global reset: CTRL.RST self-clears; wait for it (QEMU resets synchronously, silicon in ~1 us)
    // and then the datasheet's minimum 1 ms before touching other registers.
    r.write(REG.CTRL, r.read(REG.CTRL) | CTRL_RST);
    this.spinUntil(() => (r.read(REG.CTRL) & CTRL_RST) === 0, 'CTRL.RST to clear');
    this.spinFor(1);
    r.write(REG.IMC, 0xffffffff);
    r.read(REG.ICR); // clear-on-read: drop causes latched during reset
    this.readMac();
    // §4.6.4 link: set link up with auto speed detection; the (emulated) PHY auto-negotiates.
    let ctrl = r.read(REG.CTRL);
    ctrl = (ctrl | CTRL_SLU | CTRL_ASDE) & ~(CTRL_LRST | CTRL_PHY_RST);
    r.write(REG.CTRL, ctrl);
    // §4.6.5: statistics registers are clear-on-read: read them once to start from zero.
    this.readStats();
    for (const k of Object.keys(this.stats) as (keyof E1000eStats)[]) this.stats[k] = 0;
    this.initRx();
    this.initTx();
    log('init done: mac %s, link %s', formatMac(this.mac), this.linkUp ? 'up' : 'down');
  }

  /** MAC from RAL0/RAH0 (loaded from the EEPROM at reset) or, if not valid, from EEPROM words 0-2 via EERD. */
  private readMac(): void {
    const r = this.regs;
    const rah = r.read(REG.RAH0);
    if (rah & RAH_AV) {
      const ral = r.read(REG.RAL0);
      this.mac.set([ral & 0xff, (ral >>> 8) & 0xff, (ral >>> 16) & 0xff, ral >>> 24, rah & 0xff, (rah >>> 8) & 0xff]);
      return;
    }
    for (let w = 0; w < 3; w++) {
      const v = this.eepromRead(w);
      this.mac[2 * w] = v & 0xff;
      this.mac[2 * w + 1] = v >>> 8;
    }
    // Program RAR0 so the filter (and anyone reading RAL/RAH) sees it.
    r.write(REG.RAL0, (this.mac[0]! | (this.mac[1]! << 8) | (this.mac[2]! << 16) | (this.mac[3]! << 24)) >>> 0);
    r.write(REG.RAH0, (this.mac[4]! | (this.mac[5]! << 8) | RAH_AV) >>> 0);
  }

  /** One 16-bit EEPROM word through EERD (§10.2.2.4). */
  eepromRead(word: number): number {
    const r = this.regs;
    r.write(REG.EERD, ((word << EERD_ADDR_SHIFT) | EERD_START) >>> 0);
    let v = 0;
    this.spinUntil(() => ((v = r.read(REG.EERD)) & EERD_DONE) !== 0, 'EERD.DONE');
    return v >>> EERD_DATA_SHIFT;
  }

  /** §4.6.6 receive initialization with legacy descriptors. */
  private initRx(): void {
    const r = this.regs;
    const ring = this.dma.alloc(this.rxSize * DESC_BYTES, 128);
    this.rxRing = new DataView(ring.bytes.buffer, ring.bytes.byteOffset, ring.byteLen);
    for (let i = 0; i < this.rxSize; i++) {
      const b = this.dma.alloc(BUF_BYTES, BUF_BYTES);
      this.rxBufs.push(b.bytes);
      this.rxIova.push(b.iova);
      this.writeRxDesc(i);
    }
    for (let i = 0; i < 128; i++) r.write(REG.MTA + 4 * i, 0);
    r.write(REG.RFCTL, r.read(REG.RFCTL) & ~RFCTL_EXTEN);
    r.write(REG.RDBAL, ring.iova >>> 0);
    r.write(REG.RDBAH, Math.floor(ring.iova / 2 ** 32));
    r.write(REG.RDLEN, this.rxSize * DESC_BYTES);
    r.write(REG.RDH, 0);
    // RDT = size - 1, not size (i.e. 0): RDH == RDT means "no descriptors for hardware", so one slot always
    // stays empty (ixy's "intentionally off by one").
    r.write(REG.RDT, this.rxSize - 1);
    r.write(REG.RDTR, 0);
    r.write(REG.RCTL, RCTL_EN | RCTL_UPE | RCTL_MPE | RCTL_BAM | RCTL_SECRC | RCTL_BSIZE_2048);
    this.rxNext = 0;
  }

  /** §4.6.7 transmit initialization with legacy descriptors. */
  private initTx(): void {
    const r = this.regs;
    const ring = this.dma.alloc(this.txSize * DESC_BYTES, 128);
    this.txRing = new DataView(ring.bytes.buffer, ring.bytes.byteOffset, ring.byteLen);
    for (let i = 0; i < this.txSize; i++) {
      const b = this.dma.alloc(BUF_BYTES, BUF_BYTES);
      this.txBufs.push(b.bytes);
      this.txIova.push(b.iova);
      // All descriptors start "done" so reclaim treats the empty ring as clean.
      this.txRing.setUint8(i * DESC_BYTES + 12, TXD_STAT_DD);
    }
    r.write(REG.TDBAL, ring.iova >>> 0);
    r.write(REG.TDBAH, Math.floor(ring.iova / 2 ** 32));
    r.write(REG.TDLEN, this.txSize * DESC_BYTES);
    r.write(REG.TDH, 0);
    r.write(REG.TDT, 0);
    r.write(REG.TIPG, TIPG_DEFAULT);
    // CT 0x0f and COLD 0x3f: the datasheet's full-duplex values; PSP pads runts to 64 bytes.
    r.write(REG.TCTL, TCTL_EN | TCTL_PSP | (0x0f << TCTL_CT_SHIFT) | (0x3f << TCTL_COLD_SHIFT));
    this.txTail = this.txClean = this.txPublished = 0;
  }

  private writeRxDesc(i: number): void {
    const o = i * DESC_BYTES;
    const iova = this.rxIova[i]!;
    this.rxRing.setUint32(o, iova >>> 0, true);
    this.rxRing.setUint32(o + 4, Math.floor(iova / 2 ** 32), true);
    this.rxRing.setUint32(o + 8, 0, true); // length, checksum
    this.rxRing.setUint32(o + 12, 0, true); // status, errors, special
  }

  get linkUp(): boolean {
    return (this.regs.read(REG.STATUS) & STATUS_LU) !== 0;
  }

  /** True when the next RX descriptor is done (a DMA memory read, no MMIO). */
  get rxPending(): boolean {
    return (this.rxRing.getUint8(this.rxNext * DESC_BYTES + 12) & RXD_STAT_DD) !== 0;
  }

  /**
   * Hands up to `max` received frames to `handler` (the frame is buf[0, len), valid during the call). A 'busy'
   * answer leaves that frame in the ring for the next burst. Returns the frames consumed.
   */
  rxBurst(handler: (buf: Uint8Array, len: number) => RxVerdict, max = 32): number {
    let n = 0;
    let i = this.rxNext;
    const ring = this.rxRing;
    for (; n < max; n++) {
      const o = i * DESC_BYTES;
      const status = ring.getUint8(o + 12);
      if ((status & RXD_STAT_DD) === 0) break;
      const errors = ring.getUint8(o + 13);
      const len = ring.getUint16(o + 8, true);
      if ((status & RXD_STAT_EOP) === 0 || (errors & RXD_ERR_FRAME) !== 0 || len === 0) {
        // Frames longer than one buffer cannot occur without RCTL.LPE; treat fragments like errors.
        this.rxErrors++;
      } else if (handler(this.rxBufs[i]!, len) === 'busy') {
        break;
      }
      this.writeRxDesc(i);
      i = i + 1 === this.rxSize ? 0 : i + 1;
    }
    if (n > 0) {
      this.rxNext = i;
      // Hand the processed descriptors back: RDT = the last one processed (one behind rxNext).
      this.regs.write(REG.RDT, i === 0 ? this.rxSize - 1 : i - 1);
    }
    return n;
  }

  /** Reclaims transmitted descriptors (DD set by the device because we asked with RS). Returns free slots. */
  txReclaim(): number {
    const ring = this.txRing;
    while (this.txClean !== this.txTail && (ring.getUint8(this.txClean * DESC_BYTES + 12) & TXD_STAT_DD) !== 0) {
      this.txClean = this.txClean + 1 === this.txSize ? 0 : this.txClean + 1;
    }
    return this.txFree;
  }

  get txFree(): number {
    // One slot stays empty: TDT == TDH means "nothing to send".
    return (this.txClean - this.txTail - 1 + this.txSize) % this.txSize;
  }

  /**
   * The TX buffer the next frame goes to (fill it, then txCommit(len)), or null when the ring is full even
   * after reclaiming. Lets callers build a frame in place (software checksum, TSO segments): one copy.
   */
  txBuffer(): Uint8Array | null {
    if (this.txFree === 0 && this.txReclaim() === 0) return null;
    return this.txBufs[this.txTail]!;
  }

  /** Queues the frame in txBuffer()[0, len). Not visible to the device until txFlush(). */
  txCommit(len: number): void {
    const i = this.txTail;
    const o = i * DESC_BYTES;
    const iova = this.txIova[i]!;
    const ring = this.txRing;
    ring.setUint32(o, iova >>> 0, true);
    ring.setUint32(o + 4, Math.floor(iova / 2 ** 32), true);
    ring.setUint16(o + 8, len, true);
    ring.setUint8(o + 10, 0); // CSO
    ring.setUint8(o + 11, TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
    ring.setUint8(o + 12, 0); // status: the device sets DD
    ring.setUint8(o + 13, 0); // CSS
    ring.setUint16(o + 14, 0, true);
    this.txTail = i + 1 === this.txSize ? 0 : i + 1;
  }

  /** Copies one frame into the ring; false when full. */
  txFrame(frame: Uint8Array, len: number): boolean {
    if (len > BUF_BYTES) throw new RangeError(`frame of ${len} bytes exceeds the ${BUF_BYTES}-byte TX buffer`);
    const buf = this.txBuffer();
    if (buf === null) return false;
    buf.set(len === frame.length ? frame : frame.subarray(0, len));
    this.txCommit(len);
    return true;
  }

  /** Publishes queued frames: one TDT write per burst. */
  txFlush(): void {
    if (this.txTail !== this.txPublished) {
      this.regs.write(REG.TDT, this.txTail);
      this.txPublished = this.txTail;
    }
  }

  /** Interrupt causes to signal (IMS); ITR 0 = no throttling. */
  enableInterrupts(mask = ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC): void {
    this.regs.write(REG.ITR, 0);
    this.regs.write(REG.IMS, mask);
  }

  disableInterrupts(): void {
    this.regs.write(REG.IMC, 0xffffffff);
  }

  /** Reads (and so clears) the interrupt causes. */
  readIcr(): number {
    return this.regs.read(REG.ICR);
  }

  /** Adds the clear-on-read statistics registers to `stats`. */
  readStats(): E1000eStats {
    const r = this.regs;
    const s = this.stats;
    s.rxPackets += r.read(REG.GPRC);
    s.txPackets += r.read(REG.GPTC);
    // 64-bit octet counters: the low half must be read first (reading the high half clears both).
    s.rxOctets += r.read(REG.GORCL) + r.read(REG.GORCH) * 2 ** 32;
    s.txOctets += r.read(REG.GOTCL) + r.read(REG.GOTCH) * 2 ** 32;
    s.missed += r.read(REG.MPC);
    s.noBuffers += r.read(REG.RNBC);
    s.crcErrors += r.read(REG.CRCERRS);
    s.broadcastRx += r.read(REG.BPRC);
    s.multicastRx += r.read(REG.MPRC);
    return s;
  }

  /** Stops RX and TX (RCTL/TCTL.EN off) and masks interrupts, so DMA memory may be released. */
  stop(): void {
    const r = this.regs;
    r.write(REG.IMC, 0xffffffff);
    r.write(REG.RCTL, r.read(REG.RCTL) & ~RCTL_EN);
    r.write(REG.TCTL, r.read(REG.TCTL) & ~TCTL_EN);
  }

  private spinUntil(cond: () => boolean, what: string): void {
    const end = Date.now() + this.timeoutMs;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`e1000e: timeout waiting for ${what}`);
    }
  }

  private spinFor(ms: number): void {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      /* busy wait: init only */
    }
  }
}

export function formatMac(m: Uint8Array): string {
  return Array.from(m, (b) => b.toString(16).padStart(2, '0')).join(':');
}
