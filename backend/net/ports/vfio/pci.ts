/**
 * PCI configuration space helpers (PCI Local Bus 3.0 §6.1-6.2 header, §6.7 capability list) over any
 * config accessor: a VfioDevice in production, a byte array in unit tests.
 */

export interface ConfigSpace {
  cfgRead(offset: number, width: 1 | 2 | 4): number;
  cfgWrite(offset: number, width: 1 | 2 | 4, value: number): void;
}

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_CAPABILITY_LIST = 0x34;
/** Command register bits (§6.2.2). */
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
/** Status bit 4: the capability list pointer at 0x34 is valid. */
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;

/**
 * Memory decoding + bus mastering on: without bus master the device cannot DMA (QEMU's e1000e drops RX
 * frames and never fetches TX descriptors, e1000x_rx_ready / pci_dma_*). INTx stays enabled unless asked.
 */
export function enableBusMaster(cfg: ConfigSpace, intxDisable = false): number {
  let cmd = cfg.cfgRead(PCI_COMMAND, 2);
  cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  if (intxDisable) cmd |= PCI_COMMAND_INTX_DISABLE;
  cfg.cfgWrite(PCI_COMMAND, 2, cmd);
  return cfg.cfgRead(PCI_COMMAND, 2);
}

export interface PciCap {
  id: number;
  offset: number;
}

/** Walks the capability list (§6.7); stops at 48 entries, so a looping list cannot hang us. */
export function listCapabilities(cfg: ConfigSpace): PciCap[] {
  const caps: PciCap[] = [];
  if ((cfg.cfgRead(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST) === 0) return caps;
  // The bottom two bits of every pointer are reserved (§6.7).
  let at = cfg.cfgRead(PCI_CAPABILITY_LIST, 1) & 0xfc;
  const seen = new Set<number>();
  while (at >= 0x40 && !seen.has(at) && caps.length < 48) {
    seen.add(at);
    caps.push({ id: cfg.cfgRead(at, 1), offset: at });
    at = cfg.cfgRead(at + 1, 1) & 0xfc;
  }
  return caps;
}
