/**
 * Reader for torch.save files (torch ≥ 1.6): `pytorch_model.bin`, `diffusion_pytorch_model.bin`, `.pt`,
 * `.pth`, `.ckpt`, and sharded `*.bin.index.json` checkpoints. The file is a zip archive (stored-zip.ts)
 * under one folder, `<prefix>/` (the name it was saved as, or "archive"): `data.pkl` pickles the object
 * with every storage replaced by a persistent id ('storage', torch.<Type>Storage, key, location, numel),
 * `data/<key>` holds each storage's bytes, `byteorder` says "little" (absent before torch 2.1: little,
 * as every machine that wrote them), `version` or `.data/version` the format version.
 *
 * The pickle is parsed, never executed (pickle-vm.ts): only torch's tensor-rebuilding functions,
 * OrderedDict and the storage types are understood, and each tensor becomes a TensorEntry (dtype, shape,
 * absolute byte offset into the archive) read lazily, exactly like a safetensors entry. Any other global
 * (`os.system`, `builtins.eval`, a pytorch_lightning callback) becomes an inert stand-in that is refused,
 * naming it, where a tensor or the state dict is needed, and ignored elsewhere (a .ckpt's training
 * state). Tied tensors share one storage record; a tensor must be contiguous and lie inside its record.
 */
import { closeSync, readSync } from "node:fs";
import { crc32 } from "node:zlib";
import { ModelFileError } from "./errors.js";
import { type PickleHooks, PyDict, PyObject, PyTuple, type PyValue, unpickle } from "./pickle-vm.js";
import { readStoredZip, type ZipEntry } from "./stored-zip.js";
import {
  DTYPE_BYTES,
  isShardedIndex,
  openModelFile,
  readFileRange,
  readShardedIndex,
  type TensorDType,
  type TensorEntry,
  type TensorFile,
  tensorFile,
} from "./tensor-file.js";

/** torch's typed storage classes, as its persistent ids name them. */
const STORAGE_DTYPES: Readonly<Record<string, TensorDType>> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  Float8_e4m3fnStorage: "F8_E4M3",
  Float8_e5m2Storage: "F8_E5M2",
  DoubleStorage: "F64",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};
/** The only callables a state dict needs; everything else is a stand-in (Opaque). */
const REBUILDERS = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
]);
/** data.pkl of a state dict is ~100 bytes per tensor; a full training .ckpt's is a few MB. */
const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
/** Where checkpoints nest their weights when the top level is not the state dict itself. */
const NESTED_STATE_DICTS = ["state_dict", "model", "module"];

/** An allowed global: a rebuilding function, OrderedDict, or a storage type. */
class Global extends PyObject {
  constructor(readonly qualified: string) {
    super();
  }
}

/** The value of a global this reader does not build: inert, and refused wherever it is needed. */
class Opaque extends PyObject {
  constructor(readonly qualified: string) {
    super();
  }
}

class Storage extends PyObject {
  constructor(
    readonly key: string,
    readonly dtype: TensorDType,
    readonly numel: number,
  ) {
    super();
  }
}

class Tensor extends PyObject {
  constructor(
    readonly storage: Storage,
    readonly storageOffset: number,
    readonly shape: readonly number[],
  ) {
    super();
  }
}

/** A torch.save file, or a sharded `*.bin.index[.<variant>].json`, as named tensors read by offset. */
export function openTorchFile(path: string): TensorFile {
  return tensorFile(
    path,
    isShardedIndex(path) ? readShardedIndex(path, readTorchEntries) : readTorchEntries(path),
  );
}

/** The tensors of one torch.save file: the top-level dict's, or those of its `state_dict`. */
export function readTorchEntries(file: string): TensorEntry[] {
  refuseOtherFormats(file);
  const records = readStoredZip(file);
  const first = records.keys().next().value;
  const slash = first?.indexOf("/") ?? -1;
  if (first === undefined || slash <= 0) {
    throw new ModelFileError(
      file,
      "is a zip archive but not a torch.save file (its entries are not under one folder)",
    );
  }
  const prefix = first.slice(0, slash + 1);
  const record = (name: string): ZipEntry | undefined => records.get(prefix + name);
  if (record("constants.pkl") || record("code/__torch__.py")) {
    throw new ModelFileError(file, "is a TorchScript archive (torch.jit.save), not a torch.save state dict");
  }
  const pkl = record("data.pkl");
  if (!pkl || !(record("version") || record(".data/version"))) {
    throw new ModelFileError(
      file,
      `is a zip archive but not a torch.save file (no ${prefix}data.pkl and version)`,
    );
  }
  const byteorder = record("byteorder");
  if (byteorder) {
    const order = new TextDecoder().decode(
      readFileRange(file, byteorder.offset, Math.min(byteorder.size, 16), "byteorder"),
    );
    if (order !== "little") {
      throw new ModelFileError(file, `was written ${order}-endian; only little-endian torch files are read`);
    }
  }
  if (pkl.size > MAX_PICKLE_BYTES) {
    throw new ModelFileError(
      file,
      `has a ${pkl.size}-byte data.pkl (limit ${MAX_PICKLE_BYTES}); not a state dict`,
    );
  }
  const pickle = readFileRange(file, pkl.offset, pkl.size, "data.pkl");
  if (crc32(pickle) !== pkl.crc32)
    throw new ModelFileError(file, "data.pkl fails its CRC-32 check (damaged file)");
  const root = unpickle(pickle, torchHooks(file), file);
  return stateDictEntries(file, root, (key) => record(`data/${key}`));
}

/** Legacy (pre-1.6) torch.save files are a bare pickle stream; TorchScript's preview format starts "PYTORCH1". */
function refuseOtherFormats(file: string): void {
  const head = new Uint8Array(8);
  const fd = openModelFile(file);
  let n: number;
  try {
    n = readSync(fd, head, 0, 8, 0);
  } finally {
    closeSync(fd);
  }
  if (n >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return;
  if (n >= 2 && head[0] === 0x80) {
    throw new ModelFileError(
      file,
      "is in torch's legacy (pre-1.6) serialization format, which cannot be read without running its pickles; re-save it with torch ≥ 1.6 or convert it to safetensors",
    );
  }
  throw new ModelFileError(file, "is not a torch.save file (it does not start with a zip header)");
}

function torchHooks(file: string): PickleHooks {
  const storages = new Map<string, Storage>();
  const fail = (problem: string): never => {
    throw new ModelFileError(file, `data.pkl: ${problem}`);
  };
  const opaqueIn = (args: readonly PyValue[]): Opaque | undefined =>
    args.find((a) => a instanceof Opaque) as Opaque | undefined;
  return {
    global(module, name) {
      const qualified = `${module}.${name}`;
      if (REBUILDERS.has(qualified) || (module === "torch" && name in STORAGE_DTYPES))
        return new Global(qualified);
      return new Opaque(qualified);
    },
    call(callable, args) {
      if (callable instanceof Opaque) return callable;
      if (!(callable instanceof Global)) return fail("calls something that is not a global");
      switch (callable.qualified) {
        case "collections.OrderedDict":
          if (args.length > 0) fail("builds an OrderedDict from arguments, which torch.save never writes");
          return new PyDict();
        case "torch._utils._rebuild_tensor_v2": {
          const stand = opaqueIn(args);
          if (stand) fail(`builds a tensor from ${stand.qualified}, which this reader does not build`);
          return rebuildTensor(args, fail);
        }
        case "torch._utils._rebuild_parameter":
        case "torch._utils._rebuild_parameter_with_state":
          if (!(args[0] instanceof Tensor))
            return fail(`${callable.qualified} wraps something that is not a tensor`);
          return args[0];
        default:
          return fail(`calls ${callable.qualified}, which torch.save never calls`);
      }
    },
    build(target, _state) {
      // OrderedDict's state is the state dict's `_metadata` (module versions), which loading ignores too.
      if (target instanceof PyDict || target instanceof Opaque) return;
      fail("sets the state of an object that is not a dict");
    },
    persistentLoad(pid) {
      const [kind, type, key, , numel] = pid instanceof PyTuple ? pid.items : [];
      if (type instanceof Opaque) {
        fail(
          `names ${type.qualified} as a storage type; only ${Object.keys(STORAGE_DTYPES).join(", ")} are read`,
        );
      }
      if (kind !== "storage" || !(type instanceof Global) || typeof key !== "string" || !isCount(numel)) {
        return fail("has a persistent id that is not a torch storage");
      }
      const dtype = STORAGE_DTYPES[type.qualified.slice("torch.".length)];
      if (!dtype) return fail(`names ${type.qualified} as a storage type`);
      const known = storages.get(key);
      if (known && (known.dtype !== dtype || known.numel !== numel)) {
        fail(`storage ${key} is declared twice with different types or sizes`);
      }
      const storage = known ?? new Storage(key, dtype, numel);
      storages.set(key, storage);
      return storage;
    },
  };
}

/** `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`. */
function rebuildTensor(args: readonly PyValue[], fail: (problem: string) => never): Tensor {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof Storage)) return fail("rebuilds a tensor without a storage");
  const shape = size instanceof PyTuple ? size.items : [];
  const strides = stride instanceof PyTuple ? stride.items : [];
  if (
    !isCount(offset) ||
    !shape.every(isCount) ||
    !strides.every(isCount) ||
    strides.length !== shape.length
  ) {
    return fail(`rebuilds a tensor of storage ${storage.key} with an invalid offset, size or stride`);
  }
  const dims = shape as number[];
  // Contiguous (row-major) strides; a dimension of size 1 may carry any stride, as torch allows.
  let expected = 1;
  for (let d = dims.length - 1; d >= 0; d--) {
    const n = dims[d] as number;
    if (n !== 1 && strides[d] !== expected && expected > 0) {
      return fail(
        `a tensor of storage ${storage.key} is not contiguous (size [${dims.join(", ")}], stride [${strides.join(", ")}]); save it with .contiguous() or as safetensors`,
      );
    }
    expected *= n;
  }
  if (offset + expected > storage.numel) {
    return fail(
      `a tensor of storage ${storage.key} spans elements ${offset}…${offset + expected} of a ${storage.numel}-element storage`,
    );
  }
  return new Tensor(storage, offset, dims);
}

function isCount(v: PyValue | undefined): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** The state dict's tensors as entries located in the archive's storage records. */
function stateDictEntries(
  file: string,
  root: PyValue,
  record: (key: string) => ZipEntry | undefined,
): TensorEntry[] {
  if (root instanceof Opaque) {
    throw new ModelFileError(
      file,
      `holds a pickled ${root.qualified} object, not a state dict; save model.state_dict() or convert it to safetensors`,
    );
  }
  if (!(root instanceof PyDict))
    throw new ModelFileError(file, "does not hold a dict of tensors (a state dict)");
  const holdsTensors = (d: PyDict) => [...d.map.values()].some((v) => v instanceof Tensor);
  let dict = root;
  if (!holdsTensors(root)) {
    const nested = NESTED_STATE_DICTS.map((k) => root.map.get(k)).find(
      (v) => v instanceof PyDict && holdsTensors(v),
    );
    if (nested instanceof PyDict) dict = nested;
    else {
      const stand = NESTED_STATE_DICTS.map((k) => root.map.get(k)).find((v) => v instanceof Opaque);
      if (stand instanceof Opaque) {
        throw new ModelFileError(
          file,
          `holds its weights as a pickled ${stand.qualified} object, which this reader does not build; convert it to safetensors`,
        );
      }
    }
  }
  const entries: TensorEntry[] = [];
  for (const [name, value] of dict.map) {
    if (typeof name !== "string") throw new ModelFileError(file, "has a state dict key that is not a string");
    if (value instanceof Opaque) {
      throw new ModelFileError(
        file,
        `tensor "${name}" is a ${value.qualified} object, which this reader does not build`,
      );
    }
    if (!(value instanceof Tensor)) continue;
    const { storage } = value;
    const itemSize = DTYPE_BYTES[storage.dtype];
    const rec = record(storage.key);
    if (!rec)
      throw new ModelFileError(file, `tensor "${name}": its storage record data/${storage.key} is missing`);
    if (rec.size !== storage.numel * itemSize) {
      throw new ModelFileError(
        file,
        `tensor "${name}": storage record data/${storage.key} holds ${rec.size} bytes, but ${storage.numel} ${storage.dtype} elements need ${storage.numel * itemSize}`,
      );
    }
    const numel = value.shape.reduce((a, b) => a * b, 1);
    entries.push({
      name,
      dtype: storage.dtype,
      shape: value.shape,
      offset: rec.offset + value.storageOffset * itemSize,
      length: numel * itemSize,
      file,
    });
  }
  if (entries.length === 0) throw new ModelFileError(file, "holds no tensors");
  return entries;
}
