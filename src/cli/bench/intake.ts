/**
 * `bench intake`: what an upload costs before it is accepted (src/engine/intake). For each file — a
 * generated set of photos and hostile files, or the files named — the header/marker check alone
 * (probeImage, in this process) and the whole check and conversion in a warm decoder process, with
 * the verdict; then a burst of concurrent uploads through the pool (uploads per second). With
 * `--max-scans` raised, a scan bomb shows what the decode deadline saves.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { Command } from "commander";
import sharp from "sharp";
import { ImageInputError, probeImage } from "../../engine/image.js";
import { DecoderPool } from "../../engine/intake/pool.js";
import { UserFacingError } from "../../errors.js";
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from "../../spec/upload.js";
import { progressiveScanBomb, truncated, withoutHuffmanTables } from "./hostile-images.js";
import { median } from "./timing.js";

interface Flags {
  repeat: string;
  decoders: string;
  burst: string;
  maxScans: string;
  deadlineMs: string;
}

function positiveInt(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new UserFacingError(`${flag} must be a whole number ≥ 1 (got "${value}")`);
  return n;
}

const COFFEE = "test/fixtures/images/coffee.png";
const HEIC = "test/fixtures/images/chelsea.heic";

/** Photos at the sizes phones send, and the hostile files issue 13 found. */
async function generated(): Promise<Array<[string, Uint8Array]>> {
  const coffee = await readFile(COFFEE);
  const jpeg = (w: number, h: number, progressive = false) =>
    sharp(coffee).resize(w, h, { fit: "fill" }).jpeg({ quality: 85, progressive }).toBuffer();
  const portrait = await jpeg(400, 1200);
  return [
    ["JPEG 1280×853 (1.1 MP)", await jpeg(1280, 853)],
    ["JPEG 4032×3024 (12 MP, a phone's)", await jpeg(4032, 3024)],
    ["progressive JPEG 4032×3024", await jpeg(4032, 3024, true)],
    ["JPEG 8000×5000 (40 MP, the limit)", await jpeg(8000, 5000)],
    ["HEVC HEIC 192×128 (iPhone coding)", await readFile(HEIC)],
    ["scan bomb 4096² (2647 scans)", progressiveScanBomb(4096, 4096).bytes],
    ["JPEG without Huffman tables", withoutHuffmanTables(portrait)],
    ["PNG cut at 60 %", truncated(await sharp(coffee).png().toBuffer(), 0.6)],
  ];
}

const ms = (t: number) => (t < 10 ? `${t.toFixed(2)} ms` : `${t.toFixed(0)} ms`);

async function timed<T>(run: () => Promise<T>): Promise<[number, T | ImageInputError]> {
  const start = performance.now();
  try {
    const value = await run();
    return [performance.now() - start, value];
  } catch (error) {
    if (error instanceof ImageInputError) return [performance.now() - start, error];
    throw error;
  }
}

export function intakeBenchCommand(): Command {
  return new Command("intake")
    .description("check and convert uploads in the decoder processes: time per file, verdicts, uploads/s")
    .argument("[files...]", "files to feed (default: a generated set of photos and hostile files)")
    .option("--repeat <n>", "runs per file (the median is shown)", "3")
    .option("--decoders <n>", "decoder processes", "2")
    .option("--burst <n>", "concurrent 12 MP uploads for the throughput line (0: none)", "8")
    .option("--max-scans <n>", "the progressive-JPEG scan limit", String(DEFAULT_IMAGE_LIMITS.maxScans))
    .option("--deadline-ms <ms>", "the decode deadline", String(DEFAULT_IMAGE_LIMITS.decodeTimeoutMs))
    .action(async (files: string[], f: Flags) => {
      const repeat = positiveInt("--repeat", f.repeat);
      const burst = f.burst === "0" ? 0 : positiveInt("--burst", f.burst);
      const limits: ImageLimits = {
        ...DEFAULT_IMAGE_LIMITS,
        maxScans: positiveInt("--max-scans", f.maxScans),
        decodeTimeoutMs: positiveInt("--deadline-ms", f.deadlineMs),
      };
      const inputs =
        files.length > 0
          ? await Promise.all(
              files.map(async (file) => [path.basename(file), await readFile(file)] as [string, Uint8Array]),
            )
          : await generated();
      const pool = new DecoderPool({ size: positiveInt("--decoders", f.decoders), maxWaiting: 1000 });
      try {
        const warm = await readFile(COFFEE);
        await pool.convert(warm, limits); // the first decoder started: start-up is not timed below
        console.log(`intake: ${inputs.length} files, median of ${repeat}, limits ${JSON.stringify(limits)}`);
        console.log("file | bytes | probe (header, markers) | check + convert | verdict");
        for (const [name, bytes] of inputs) {
          const probes: number[] = [];
          const converts: number[] = [];
          let verdict = "";
          for (let i = 0; i < repeat; i++) {
            probes.push((await timed(() => probeImage(bytes, limits)))[0]);
            const [t, out] = await timed(() => pool.convert(bytes, limits));
            converts.push(t);
            verdict =
              out instanceof ImageInputError
                ? `refused: ${out.message}`
                : `accepted → ${out.width}×${out.height}`;
          }
          console.log(
            `${name} | ${bytes.byteLength} | ${ms(median(probes))} | ${ms(median(converts))} | ${verdict}`,
          );
        }
        if (burst > 0) {
          const photo = await sharp(warm)
            .resize(4032, 3024, { fit: "fill" })
            .jpeg({ quality: 90 })
            .toBuffer();
          const start = performance.now();
          await Promise.all(Array.from({ length: burst }, () => pool.convert(photo, limits)));
          const seconds = (performance.now() - start) / 1000;
          console.log(
            `burst: ${burst} concurrent 12 MP JPEGs in ${seconds.toFixed(2)} s = ${(burst / seconds).toFixed(2)} uploads/s on ${f.decoders} decoders`,
          );
        }
      } finally {
        await pool.close();
      }
    });
}
