/**
 * A tiny struct DSL for vhost-user payloads: fields (u8/u16/u32/u64/bytes/array/nested struct) in
 * wire order, composed into a `Layout<T>` that can decode, encode and syntactically validate a
 * payload. Fixed-size structs come from `struct()`; the few variable-size payloads (memory table,
 * device config, shmem config, opaque bytes) are hand-written `Layout`s in payloads.ts.
 *
 * vhost-user.rst "Message Specification": "All numbers are in the machine native byte order".
 * We read the host's order once; on every platform Node runs vhost-user on this is little endian.
 * u64 fields decode as bigint (addresses and feature masks use all 64 bits); u8/u16/u32 as number.
 */

/** A syntactic validation failure: stable code (for tests/conformance) + human message. */
export interface PayloadError {
  code: string;
  message: string;
}

/** Thrown by `Layout.decode` when the byte length does not fit the layout. */
export class LayoutSizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LayoutSizeError';
  }
}

/** A payload layout: bytes <-> value, plus a syntax-only validator (rust-vmm `is_valid`). */
export interface Layout<T> {
  /** Stable name, used in the table, in describe() and in traces. */
  readonly name: string;
  /** Smallest payload size decode() accepts. */
  readonly minSize: number;
  /** Largest payload size decode() accepts. */
  readonly maxSize: number;
  /** Bytes that encode(value) writes. */
  sizeOf(value: T): number;
  /** Decode a whole payload; throws LayoutSizeError when `bytes.length` does not fit. */
  decode(bytes: Uint8Array): T;
  /** Encode into `out`, which is exactly `sizeOf(value)` bytes; throws RangeError/TypeError on bad values. */
  encode(value: T, out: Uint8Array): void;
  /** Syntax only: field ranges, reserved bits, overflow. Never feature/state dependent. */
  validate(value: T): PayloadError | null;
}

/** The decoded value type of a Layout. */
export type LayoutValue<L> = L extends Layout<infer T> ? T : never;

export const LITTLE_ENDIAN: boolean = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---- fields ----

/** One fixed-size field of a struct. */
export interface Field<T> {
  readonly size: number;
  read(dv: DataView, offset: number): T;
  write(dv: DataView, offset: number, value: T): void;
}
export type FieldValue<F> = F extends Field<infer T> ? T : never;

function uint(bits: 8 | 16 | 32): Field<number> {
  const max = 2 ** bits - 1;
  const check = (v: number): void => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
      throw new RangeError(`u${bits} field: ${String(v)} is not an integer in 0..${max}`);
    }
  };
  switch (bits) {
    case 8:
      return { size: 1, read: (dv, o) => dv.getUint8(o), write: (dv, o, v) => (check(v), dv.setUint8(o, v)) };
    case 16:
      return {
        size: 2,
        read: (dv, o) => dv.getUint16(o, LITTLE_ENDIAN),
        write: (dv, o, v) => (check(v), dv.setUint16(o, v, LITTLE_ENDIAN)),
      };
    case 32:
      return {
        size: 4,
        read: (dv, o) => dv.getUint32(o, LITTLE_ENDIAN),
        write: (dv, o, v) => (check(v), dv.setUint32(o, v, LITTLE_ENDIAN)),
      };
  }
}

export const u8: Field<number> = uint(8);
export const u16: Field<number> = uint(16);
export const u32: Field<number> = uint(32);
export const U64_MAX = (1n << 64n) - 1n;
export const u64: Field<bigint> = {
  size: 8,
  read: (dv, o) => dv.getBigUint64(o, LITTLE_ENDIAN),
  write: (dv, o, v) => {
    if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
      throw new RangeError(`u64 field: ${String(v)} is not a bigint in 0..2^64-1`);
    }
    dv.setBigUint64(o, v, LITTLE_ENDIAN);
  },
};

/** `n` raw bytes, decoded as a copy. */
export function bytes(n: number): Field<Uint8Array> {
  return {
    size: n,
    read: (dv, o) => new Uint8Array(dv.buffer.slice(dv.byteOffset + o, dv.byteOffset + o + n)),
    write: (dv, o, v) => {
      if (!(v instanceof Uint8Array) || v.length !== n) {
        throw new RangeError(`bytes(${n}) field: expected a Uint8Array of length ${n}`);
      }
      new Uint8Array(dv.buffer, dv.byteOffset + o, n).set(v);
    },
  };
}

/** `count` consecutive elements. */
export function array<T>(elem: Field<T>, count: number): Field<T[]> {
  return {
    size: elem.size * count,
    read: (dv, o) => Array.from({ length: count }, (_, i) => elem.read(dv, o + i * elem.size)),
    write: (dv, o, v) => {
      if (!Array.isArray(v) || v.length !== count) throw new RangeError(`array field: expected ${count} elements`);
      v.forEach((x, i) => elem.write(dv, o + i * elem.size, x));
    },
  };
}

// ---- structs ----

type Fields = Record<string, Field<any>>;
export type StructValue<F extends Fields> = { [K in keyof F]: FieldValue<F[K]> };

export interface StructLayout<T> extends Layout<T> {
  /** The struct as a field, to nest it in another struct. */
  readonly field: Field<T>;
  /** Byte offset of each field (wire order). */
  readonly offsets: Readonly<Record<string, number>>;
  /** Encoded size. */
  readonly size: number;
}

export interface StructOptions<T> {
  /**
   * Encoded size when the C struct has trailing alignment padding (e.g. vhost_iotlb_msg is 26
   * bytes of fields in a 32-byte struct). Defaults to the sum of the field sizes.
   */
  size?: number;
  /** Smallest size decode() accepts (defaults to `size`): lets us take both packed and padded senders. */
  minSize?: number;
  validate?: (value: T) => PayloadError | null;
}

/** A fixed-size struct; field order = wire order. */
export function struct<F extends Fields>(
  name: string,
  fields: F,
  options: StructOptions<StructValue<F>> = {},
): StructLayout<StructValue<F>> {
  type T = StructValue<F>;
  const entries = Object.entries(fields);
  const offsets: Record<string, number> = {};
  let fieldsEnd = 0;
  for (const [k, f] of entries) {
    offsets[k] = fieldsEnd;
    fieldsEnd += f.size;
  }
  const size = options.size ?? fieldsEnd;
  const minSize = options.minSize ?? size;
  if (size < fieldsEnd || minSize < fieldsEnd || minSize > size) throw new Error(`struct ${name}: bad size options`);
  const read = (dv: DataView, base: number): T => {
    const out: Record<string, unknown> = {};
    for (const [k, f] of entries) out[k] = f.read(dv, base + offsets[k]!);
    return out as T;
  };
  const write = (dv: DataView, base: number, value: T): void => {
    if (value === null || typeof value !== 'object') throw new TypeError(`struct ${name}: expected an object`);
    for (const [k, f] of entries) {
      const v = (value as Record<string, unknown>)[k];
      try {
        f.write(dv, base + offsets[k]!, v);
      } catch (e) {
        throw new RangeError(`${name}.${k}: ${(e as Error).message}`);
      }
    }
  };
  return {
    name,
    size,
    minSize,
    maxSize: size,
    offsets,
    field: { size, read, write },
    sizeOf: () => size,
    decode(b) {
      if (b.length < minSize || b.length > size) {
        throw new LayoutSizeError(
          `${name}: payload is ${b.length} bytes, expected ${minSize === size ? size : `${minSize}..${size}`}`,
        );
      }
      if (b.length === size) return read(view(b), 0);
      // A shorter-but-acceptable payload only lacks trailing alignment padding.
      const padded = new Uint8Array(size);
      padded.set(b);
      return read(view(padded), 0);
    },
    encode(value, out) {
      out.fill(0, 0, size);
      write(view(out), 0, value);
    },
    validate: options.validate ?? (() => null),
  };
}

/** Checked a + b <= 2^64 - 1 (rust-vmm `checked_add`); u64 arithmetic must never wrap. */
export function addOverflows(a: bigint, b: bigint): boolean {
  return a + b > U64_MAX;
}

export function perr(code: string, message: string): PayloadError {
  return { code, message };
}
