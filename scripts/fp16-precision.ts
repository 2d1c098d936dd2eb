/**
 * How precise a device's float16 is, against float64 and against its own float32 (docs/PERFORMANCE.md,
 * "WebGPU on a GPU after the fixes": WebGPU's MatMul accumulates in float16).
 *
 *   npx tsx scripts/fp16-precision.ts [--device webgpu] [--latents 8] [--roundings 8] [--cpu-reference]
 *
 * - fp16 MatMul of 64×K by K×64 against float64 at growing K, on the CPU provider and on the device: an
 *   fp32-accumulating kernel stays at the fp16 output's own rounding (≈ 2e-4) at every K; one that
 *   accumulates in float16 grows as √K.
 * - SD 1.5's UNet (random weights, batch 2, `--latents`²) in fp16 on the device against fp32 (the CPU
 *   provider's with `--cpu-reference`, else the device's own).
 * - The fixtures' fp16 UNet call and d loss / d context against their goldens, unperturbed and then with
 *   the input (the sample; the clean latents) moved by up to half an fp16 ulp, `--roundings` times in all,
 *   on the CPU provider and on the device: how much of one run's error is the luck of rounding.
 */
import "../src/cli/require-shim.js";
import { Command } from "commander";
import { goldenLossArgs, goldenUnetArgs, loadGoldenData } from "../src/cli/bench/golden.js";
import { sd15Shapes } from "../src/cli/bench/sd.js";
import { mulberry32 } from "../src/engine/diffusion/rng.js";
import { relativeDistance } from "../src/engine/distance.js";
import { cast, f16ToF32, f32ToF16, Graph, matmul } from "../src/engine/graph/index.js";
import { StableDiffusion } from "../src/engine/index.js";
import { IO, unetGraph } from "../src/engine/models/components.js";
import { randomWeights } from "../src/engine/models/random-weights.js";
import { createSession, type Device, type HostTensor } from "../src/engine/runtime/index.js";

const o = new Command()
  .option("--device <device>", "the device measured against the CPU provider", "webgpu")
  .option("--latents <n>", "latent size of the SD 1.5 UNet call", "8")
  .option("--roundings <n>", "runs per fixture check (the first unperturbed)", "8")
  .option("--cpu-reference", "SD 1.5's fp32 reference on the CPU provider (slow at 64² latents)")
  .parse()
  .opts<{ device: Device; latents: string; roundings: string; cpuReference?: boolean }>();
const devices: Device[] = ["cpu", o.device];
const tensor = (dtype: HostTensor["dtype"], shape: number[], data: Float32Array | Uint16Array) =>
  ({ dtype, shape, data }) as HostTensor;

async function run(graph: Graph, device: Device, feeds: Record<string, HostTensor>) {
  const session = await createSession(graph, { device });
  try {
    return await session.run(feeds);
  } finally {
    await session.release();
  }
}

async function matmulAgainstFloat64(): Promise<void> {
  const r = mulberry32(5);
  const [M, N] = [64, 64];
  for (const K of [32, 320, 2880, 11520]) {
    const a = f32ToF16(Float32Array.from({ length: M * K }, () => 2 * r() - 1));
    const b = f32ToF16(Float32Array.from({ length: K * N }, () => 2 * r() - 1));
    const [wa, wb] = [f16ToF32(a), f16ToF32(b)];
    const exact = new Float32Array(M * N);
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += (wa[i * K + k] as number) * (wb[k * N + j] as number);
        exact[i * N + j] = s;
      }
    const g = new Graph("fp16_matmul");
    g.output("y", cast(matmul(g.input("a", "float16", [M, K]), g.input("b", "float16", [K, N])), "float32"));
    const feeds = { a: tensor("float16", [M, K], a), b: tensor("float16", [K, N], b) };
    const errors: string[] = [];
    for (const device of devices) {
      const y = (await run(g, device, feeds)).y?.data as Float32Array;
      errors.push(`${device} ${relativeDistance(y, exact).toExponential(2)}`);
    }
    console.log(`fp16 MatMul 64×${K}×64 vs float64: ${errors.join("  ")}`);
  }
}

async function sd15Unet(): Promise<void> {
  const n = Number(o.latents);
  const r = mulberry32(9);
  const randn = (len: number) =>
    Float32Array.from({ length: len }, () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()));
  const feeds = {
    [IO.sample]: tensor("float32", [2, 4, n, n], randn(2 * 4 * n * n)),
    [IO.timestep]: tensor("float32", [2], Float32Array.of(500, 500)),
    [IO.context]: tensor("float32", [2, 77, 768], randn(2 * 77 * 768)),
  };
  const call = async (device: Device, dtype: "float32" | "float16") => {
    const { graph } = unetGraph(randomWeights(dtype), sd15Shapes().unet, {
      batch: 2,
      height: n,
      width: n,
      dtype,
    });
    return (await run(graph, device, feeds))[IO.unetOut]?.data as Float32Array;
  };
  const refDevice = o.cpuReference ? "cpu" : o.device;
  const ref = await call(refDevice, "float32");
  const fp32 = refDevice === o.device ? ref : await call(o.device, "float32");
  const fp16 = await call(o.device, "float16");
  console.log(
    `SD 1.5 UNet (random weights, ${n}² latents, batch 2) against ${refDevice} fp32: ${o.device} fp32 ${relativeDistance(fp32, ref).toExponential(2)}, ${o.device} fp16 ${relativeDistance(fp16, ref).toExponential(2)}`,
  );
}

async function fixtureSpread(fixture: string): Promise<void> {
  const dir = `test/fixtures/models/${fixture}`;
  const g = loadGoldenData(dir);
  const [sample, size, t, ctx] = goldenUnetArgs(g);
  const [unetOut, dContext] = [g.f32("unet.out"), g.f32("grad.d_context")];
  const loss = goldenLossArgs(g);
  const nudge = (x: Float32Array, k: number) => {
    const r = mulberry32(k);
    return k === 0 ? x : x.map((v) => v * (1 + (r() - 0.5) * 2 ** -11));
  };
  for (const device of devices) {
    const sd = await StableDiffusion.load(`${dir}/model`, { device, dtype: "fp16", trainDtype: "fp16" });
    const unet: number[] = [];
    const grad: number[] = [];
    try {
      for (let k = 0; k < Number(o.roundings); k++) {
        unet.push(relativeDistance(await sd.predictNoise(nudge(sample, k), size, t, ctx), unetOut));
        const r = await sd.lossAndGrads({ ...loss, latents0: nudge(loss.latents0, k), wrt: ["context"] });
        grad.push(relativeDistance(r.dContext as Float32Array, dContext));
      }
    } finally {
      await sd.release();
    }
    const span = (e: number[]) => `${Math.min(...e).toExponential(2)} … ${Math.max(...e).toExponential(2)}`;
    console.log(
      `${fixture} fp16 on ${device}, ${unet.length} roundings: UNet call ${span(unet)}, d loss / d context ${span(grad)}`,
    );
  }
}

await matmulAgainstFloat64();
await sd15Unet();
for (const fixture of ["sd1", "sd2"]) await fixtureSpread(fixture);
