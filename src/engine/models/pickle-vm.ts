/**
 * A restricted unpickler: it runs the pickle opcodes a torch.save of a state dict uses (protocols 2–5)
 * and nothing else. It never imports or calls anything: a GLOBAL is handed to `hooks.global`, a REDUCE
 * or NEWOBJ to `hooks.call`, a BUILD to `hooks.build`, a persistent id to `hooks.persistentLoad`, and
 * the hooks (torch-pickle.ts) decide what those mean — the same design as torch's own
 * `weights_only=True` loader. Every count is bounded (stack, marks, memo, objects, integer size), so a
 * hostile file can fail but not exhaust memory or recurse without end.
 */
import { ModelFileError } from "./errors.js";

/** What a pickle can hold here. Tuples are PyTuple, lists are arrays, dicts are PyDict. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PyObject;

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

/** A dict keyed by the key's value (strings, numbers) or identity (objects). */
export class PyDict {
  readonly map = new Map<PyValue, PyValue>();
}

/** Whatever the hooks make of globals: references to allowed names, storages, tensors, inert stand-ins. */
export abstract class PyObject {}

export interface PickleHooks {
  global(module: string, name: string): PyValue;
  call(callable: PyValue, args: readonly PyValue[]): PyValue;
  build(target: PyValue, state: PyValue): void;
  persistentLoad(pid: PyValue): PyValue;
}

/** Far above a state dict's needs (a 3.4 GB UNet's pickle has ~20 000 objects), far below harm. */
export const PICKLE_LIMITS = {
  stack: 1_000_000,
  marks: 10_000,
  memo: 1_000_000,
  objects: 10_000_000,
  longBytes: 64,
};

export function unpickle(data: Uint8Array, hooks: PickleHooks, file: string): PyValue {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const stack: PyValue[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();
  let objects = 0;
  let pos = 0;

  const fail = (problem: string): never => {
    throw new ModelFileError(file, `data.pkl: ${problem} (at byte ${pos})`);
  };
  const need = (n: number): number => {
    if (n < 0 || pos + n > data.length) fail("ends in the middle of an opcode (truncated or damaged pickle)");
    const at = pos;
    pos += n;
    return at;
  };
  const u8 = () => data[need(1)] as number;
  const u16 = () => view.getUint16(need(2), true);
  const u32 = () => view.getUint32(need(4), true);
  const u64 = (): number => {
    const v = view.getBigUint64(need(8), true);
    if (v > BigInt(data.length)) fail(`declares a length of ${v} bytes, more than the pickle holds`);
    return Number(v);
  };
  const bytes = (n: number) => data.subarray(need(n), pos);
  const text = (n: number): string => {
    try {
      return utf8.decode(bytes(n));
    } catch {
      return fail("holds a string that is not UTF-8");
    }
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) fail("ends in the middle of a GLOBAL name");
    return text(end - pos + 1).slice(0, -1);
  };
  const push = (v: PyValue) => {
    if (stack.length >= PICKLE_LIMITS.stack) fail(`pushes more than ${PICKLE_LIMITS.stack} values`);
    stack.push(v);
  };
  const made = <T extends PyValue>(v: T): T => {
    if (++objects > PICKLE_LIMITS.objects) fail(`builds more than ${PICKLE_LIMITS.objects} objects`);
    return v;
  };
  const pop = (): PyValue => {
    if (stack.length <= (marks.at(-1) ?? 0)) fail("pops from an empty stack");
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length <= (marks.at(-1) ?? 0)) fail("reads an empty stack");
    return stack[stack.length - 1] as PyValue;
  };
  const popMark = (): PyValue[] => {
    const m = marks.pop();
    if (m === undefined) fail("closes a MARK that was never opened");
    return stack.splice(m as number);
  };
  const put = (index: number) => {
    if (!memo.has(index) && memo.size >= PICKLE_LIMITS.memo)
      fail(`memoizes more than ${PICKLE_LIMITS.memo} values`);
    memo.set(index, top());
  };
  const get = (index: number) => {
    if (!memo.has(index)) fail(`reads memo entry ${index}, which was never stored`);
    push(memo.get(index) as PyValue);
  };
  const list = (v: PyValue): PyValue[] =>
    Array.isArray(v) ? v : fail("appends to something that is not a list");
  const dict = (v: PyValue): PyDict =>
    v instanceof PyDict ? v : fail("sets an item on something that is not a dict");
  const setItems = (target: PyDict, items: PyValue[]) => {
    if (items.length % 2) fail("sets a key without a value");
    for (let i = 0; i < items.length; i += 2) target.map.set(items[i] as PyValue, items[i + 1] as PyValue);
  };
  const long = (n: number): number | bigint => {
    if (n > PICKLE_LIMITS.longBytes) fail(`holds a ${n}-byte integer`);
    const b = bytes(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i] as number);
    if (n > 0 && (b[n - 1] as number) & 0x80) v -= 1n << BigInt(8 * n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail("uses a pickle protocol newer than 5");
        break;
      case 0x95: // FRAME: a length hint only
        need(8);
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length)
          fail("stops with a stack that does not hold exactly one value");
        return stack[0] as PyValue;
      case 0x28: // MARK
        if (marks.length >= PICKLE_LIMITS.marks) fail(`nests more than ${PICKLE_LIMITS.marks} MARKs`);
        marks.push(stack.length);
        break;
      case 0x29: // EMPTY_TUPLE
        push(made(new PyTuple([])));
        break;
      case 0x5d: // EMPTY_LIST
        push(made([]));
        break;
      case 0x7d: // EMPTY_DICT
        push(made(new PyDict()));
        break;
      case 0x74: // TUPLE
        push(made(new PyTuple(popMark())));
        break;
      case 0x85: // TUPLE1
      case 0x86: // TUPLE2
      case 0x87: {
        // TUPLE3
        const n = op - 0x84;
        const items: PyValue[] = [];
        for (let i = 0; i < n; i++) items.unshift(pop());
        push(made(new PyTuple(items)));
        break;
      }
      case 0x6c: // LIST
        push(made(popMark()));
        break;
      case 0x64: {
        // DICT
        const d = made(new PyDict());
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        list(top()).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        list(top()).push(...items);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(dict(top()), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(dict(top()), items);
        break;
      }
      case 0x4a: // BININT
        push(view.getInt32(need(4), true));
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x8a: // LONG1
        push(long(u8()));
        break;
      case 0x8b: // LONG4
        push(long(u32()));
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x47: // BINFLOAT (big-endian)
        push(view.getFloat64(need(8), false));
        break;
      case 0x58: // BINUNICODE
      case 0x54: // BINSTRING (torch.load decodes Python 2 strings as UTF-8)
        push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
      case 0x55: // SHORT_BINSTRING
        push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        push(text(u64()));
        break;
      case 0x42: // BINBYTES
        push(made(bytes(u32())));
        break;
      case 0x43: // SHORT_BINBYTES
        push(made(bytes(u8())));
        break;
      case 0x8e: // BINBYTES8
        push(made(bytes(u64())));
        break;
      case 0x71: // BINPUT
        put(u8());
        break;
      case 0x72: // LONG_BINPUT
        put(u32());
        break;
      case 0x94: // MEMOIZE
        put(memo.size);
        break;
      case 0x68: // BINGET
        get(u8());
        break;
      case 0x6a: // LONG_BINGET
        get(u32());
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        push(made(hooks.global(module, line())));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("names a global with non-strings");
        push(made(hooks.global(module as string, name as string)));
        break;
      }
      case 0x52: {
        // REDUCE: callable(*args)
        const args = pop();
        const callable = pop();
        if (!(args instanceof PyTuple)) fail("calls with arguments that are not a tuple");
        push(made(hooks.call(callable, (args as PyTuple).items)));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args)
        const args = pop();
        const cls = pop();
        if (!(args instanceof PyTuple)) fail("creates an object with arguments that are not a tuple");
        push(made(hooks.call(cls, (args as PyTuple).items)));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
        pop();
        const args = pop();
        const cls = pop();
        if (!(args instanceof PyTuple)) fail("creates an object with arguments that are not a tuple");
        push(made(hooks.call(cls, (args as PyTuple).items)));
        break;
      }
      case 0x62: {
        // BUILD: obj.__setstate__(state)
        const state = pop();
        hooks.build(top(), state);
        break;
      }
      case 0x51: // BINPERSID
        push(made(hooks.persistentLoad(pop())));
        break;
      case 0x30: // POP
        if (marks.length && marks.at(-1) === stack.length) marks.pop();
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      default:
        fail(
          `uses pickle opcode 0x${op.toString(16).padStart(2, "0")}, which a torch.save state dict never holds; refused`,
        );
    }
  }
}
