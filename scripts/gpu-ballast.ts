/**
 * Makes the lent 141 GB GPU behave like a smaller card: holds all but <GiB> of its free memory in
 * onnxruntime CUDA arenas until killed, so that a benchmark started beside it can use only that much.
 * onnxruntime-node 1.29 cannot cap its CUDA arena (docs/ENGINE.md "Runtime"), and on a large card the
 * arena keeps whatever it grows to, so nvidia-smi's peak says what a run took, not what it needed; a run
 * that completes beside this ballast needed at most <GiB> (its own CUDA context included).
 *   npx esbuild scripts/gpu-ballast.ts --bundle --platform=node --format=esm \
 *     --external:onnxruntime-node --alias:sharp=./dist-gpu/no-sharp.mjs --outfile=dist-gpu/ballast.mjs
 *   node dist-gpu/ballast.mjs 16 &   # prints "ballast: holding …" once the memory is taken
 * Each chunk is one session's arena, filled by one Expand of ≤ 7 GiB (the CUDA kernels index with
 * 32-bit integers, so one tensor stays below 2^31 elements); arenas keep their regions after a run.
 */
import "../src/cli/require-shim.js";
import { execFileSync } from "node:child_process";
import { expand, Graph, reduceSum } from "../src/engine/graph/index.js";
import { createSession, type Session } from "../src/engine/runtime/index.js";

const MiB = 1 << 20;
const CHUNK_MIB = 7 * 1024;

function freeMiB(): number {
  const out = execFileSync("nvidia-smi", ["--query-gpu=memory.free", "--format=csv,noheader,nounits"]);
  return Number(out.toString().trim().split("\n")[0]);
}

/** A session whose one run leaves `mib` MiB in its arena. */
async function hold(mib: number): Promise<Session> {
  const g = new Graph(`ballast-${mib}`);
  const x = g.input("x", "float32", [1, 1]);
  g.output("sum", reduceSum(expand(x, [mib, MiB / 4]), [0, 1]));
  const session = await createSession(g, { device: "cuda", packOutputs: false });
  await session.run({ x: { dtype: "float32", shape: [1, 1], data: new Float32Array([1]) } });
  return session;
}

const leaveGiB = Number(process.argv[2]);
if (!(leaveGiB > 0)) throw new Error("usage: ballast.mjs <GiB to leave free>");
const held: Session[] = [await hold(1)]; // the CUDA context, cuBLAS and cuDNN handles first
// Measured again after each chunk: every session also takes some memory of its own (its handles).
for (let toHold = freeMiB() - leaveGiB * 1024; toHold > 64; toHold = freeMiB() - leaveGiB * 1024)
  held.push(await hold(Math.min(CHUNK_MIB, toHold)));
console.log(`ballast: holding ${held.length} arenas; ${freeMiB()} MiB free on the device`);
setInterval(() => {}, 1 << 30);
