/**
 * The fixtures' single-file (ldm layout) checkpoints, rebuilt from their `model/` folders instead of
 * tracked: each is diffusers' conversion script's output (test/fixtures/models/README.md), and every byte
 * of its data is a byte copy of a tensor of `model/` (renamed, reshaped or, for OpenCLIP's in_proj, q/k/v
 * one after the other). `single-file.json` keeps the script's header verbatim and its data as the model
 * tensors to copy, in order; the rebuilt file must hash to the SHA-256 of the script's output, so it is
 * that file, byte for byte — the tests still check the engine against diffusers' mapping, not against
 * itself. Tracked, the two files were 18 MB of a 55 MiB tree.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** One run of the data: a model tensor's bytes (its file relative to `model/`, its name). */
export interface Piece {
  file: string;
  tensor: string;
}

export interface SingleFileManifest {
  /** SHA-256 and length of the conversion script's output. */
  sha256: string;
  bytes: number;
  /** The header as the script wrote it (JSON text, padding included). */
  header: string;
  pieces: Piece[];
}

export const SINGLE_FILE_FIXTURES = ["sd1", "sd2"].map((name) => join("test/fixtures/models", name));

interface Entry {
  begin: number;
  end: number;
}

/**
 * A safetensors file split into its header text and each tensor's bytes; read here, not by the engine's
 * reader, so that the fixture which checks the engine's loaders is built without them.
 */
export function readTensors(path: string): { header: string; data: Buffer; tensors: Map<string, Entry> } {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = buf.subarray(8, 8 + n).toString("utf8");
  const json = JSON.parse(header) as Record<string, { data_offsets?: [number, number] }>;
  const tensors = new Map<string, Entry>();
  for (const [name, v] of Object.entries(json)) {
    if (name === "__metadata__" || !v.data_offsets) continue;
    tensors.set(name, { begin: v.data_offsets[0], end: v.data_offsets[1] });
  }
  return { header, data: buf.subarray(8 + n), tensors };
}

const MODEL_FILES = [
  "unet/diffusion_pytorch_model.safetensors",
  "vae/diffusion_pytorch_model.safetensors",
  "text_encoder/model.safetensors",
];

/** The bytes of a manifest's file, assembled from `modelDir`; throws unless they hash as recorded. */
export function assembleSingleFile(manifest: SingleFileManifest, modelDir: string): Buffer {
  const files = new Map<string, ReturnType<typeof readTensors>>();
  const open = (file: string) => {
    const f = files.get(file) ?? readTensors(join(modelDir, file));
    files.set(file, f);
    return f;
  };
  const header = Buffer.from(manifest.header, "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  const parts: Buffer[] = [length, header];
  for (const p of manifest.pieces) {
    const f = open(p.file);
    const t = f.tensors.get(p.tensor);
    if (!t) throw new Error(`single-file fixture: ${p.file} has no tensor ${p.tensor}`);
    parts.push(f.data.subarray(t.begin, t.end));
  }
  const out = Buffer.concat(parts);
  const sha256 = createHash("sha256").update(out).digest("hex");
  if (out.length !== manifest.bytes || sha256 !== manifest.sha256) {
    throw new Error(
      `single-file fixture from ${modelDir}: ${out.length} bytes, sha256 ${sha256}; ` +
        `the conversion script's output is ${manifest.bytes} bytes, sha256 ${manifest.sha256}`,
    );
  }
  return out;
}

/** Writes `<fixture>/single-file.safetensors` from its manifest where it is missing (vitest's globalSetup). */
export function ensureSingleFileFixtures(fixtures: readonly string[] = SINGLE_FILE_FIXTURES): void {
  for (const dir of fixtures) {
    const target = join(dir, "single-file.safetensors");
    if (existsSync(target)) continue;
    const manifest = JSON.parse(readFileSync(join(dir, "single-file.json"), "utf8")) as SingleFileManifest;
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, assembleSingleFile(manifest, join(dir, "model")));
    renameSync(tmp, target);
  }
}

/**
 * The manifest of `file` (the script's output) over `modelDir`: each tensor's bytes as the model tensors
 * that hold them, matched by content (where several tensors hold equal bytes any one will do); throws where
 * no run of model tensors makes a tensor's bytes. Used once, to replace the tracked file
 * (single-file-script/manifest.ts).
 */
export function manifestOf(file: string, modelDir: string): SingleFileManifest {
  const bytes = readFileSync(file);
  const { header, data, tensors } = readTensors(file);
  const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
  const byContent = new Map<string, { file: string; tensor: string }>();
  const lengths = new Set<number>();
  for (const f of MODEL_FILES) {
    const m = readTensors(join(modelDir, f));
    for (const [tensor, e] of m.tensors) {
      if (e.end === e.begin) continue;
      byContent.set(`${e.end - e.begin}:${hash(m.data.subarray(e.begin, e.end))}`, { file: f, tensor });
      lengths.add(e.end - e.begin);
    }
  }
  const longestFirst = [...lengths].sort((a, b) => b - a);
  const pieces: Piece[] = [];
  // The data in file order, each tensor as a run of whole model tensors, longest match first at each
  // position (safetensors data has no gaps: the header's offsets tile it).
  const entries = [...tensors].sort(([, a], [, b]) => a.begin - b.begin);
  for (const [name, e] of entries) {
    for (let pos = e.begin; pos < e.end; ) {
      const key = (l: number) => `${l}:${hash(data.subarray(pos, pos + l))}`;
      const len = longestFirst.find((l) => pos + l <= e.end && byContent.has(key(l)));
      if (len === undefined)
        throw new Error(
          `${file}: no model tensor in ${modelDir} holds ${name}'s bytes from ${pos - e.begin} on`,
        );
      pieces.push(byContent.get(key(len)) as Piece);
      pos += len;
    }
  }
  return { sha256: hash(bytes), bytes: bytes.length, header, pieces };
}
