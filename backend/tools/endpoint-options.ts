/**
 * The options of a served vhost-user endpoint, the same for `net` and `conform` (one table: the
 * socket, its mode, the queue pairs offered, the uplink port and the protocol features offered).
 */
import { parsePortSpec } from './app.ts';
import { intRange, type OptionTable } from './options.ts';

export const ENDPOINT_OPTIONS = {
  socket: {
    kind: 'string',
    arg: 'PATH',
    required: true,
    help: 'vhost-user socket (we listen; with --client we connect to a frontend listening there)',
  },
  client: { kind: 'flag', help: 'connect to a frontend that listens (QEMU server=on, virtio-user server=1); reconnect when it goes' },
  queues: { kind: 'number', arg: 'N', ...intRange(1, 128), default: 1, help: 'queue pairs offered by GET_QUEUE_NUM' },
  port: {
    kind: 'string',
    arg: 'SPEC',
    // An empty --port is no port, as it always was.
    parse: (raw: string) => (raw ? parsePortSpec(raw) : null),
    help: 'uplink: tap:NAME (kernel tap), vhost:PATH2[,client] (a second vhost-user device), vfio:PCI[,poll|,irq] (NIC on vfio-pci)',
  },
  'protocol-features': {
    kind: 'bigint',
    arg: 'HEX',
    expect: 'a number (e.g. 0x8009)',
    help: 'offer only these protocol features (GET_PROTOCOL_FEATURES)',
  },
} as const satisfies OptionTable;
