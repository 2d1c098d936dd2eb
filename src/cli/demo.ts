/**
 * `demo`: one Imagic edit end to end on this machine, the way a chat user gets it, without a chat
 * platform: a private Redis (or REDIS_URL), an engine worker on MODEL, the photo uploaded as a blob, an
 * `imagic.train` job through the queue (progress as it runs), its first grid written out, then — as if
 * the user had reacted to a tile — an `imagic.render` job for that seed's η sweep from the cached state.
 * `demo swap` does the same for Photoswap.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { Redis } from "ioredis";
import { blobLimits } from "../bots/queue-side.js";
import { appConfig, FIXTURE_MODEL } from "../config.js";
import { formatSeconds } from "../engine/progress.js";
import { startEngine } from "../engine/worker/index.js";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import { BlobStore } from "../queue/blobs.js";
import { QueueClient } from "../queue/client.js";
import type { JobName, JobResult } from "../queue/jobs.js";
import { resolveRedis } from "../queue/redis-server.js";
import { PRESET_NAMES, type PresetName, parseNumberList } from "../spec/imagic.js";
import { configuredModelIdentity } from "../spec/model.js";
import { requestedSizeOptions, type Size } from "../spec/shape.js";
import { checkSubjectWord, DEFAULT_CONCEPT_TOKEN, PAPER_STRENGTHS } from "../spec/swap.js";
import { collect } from "./edit/shared.js";
import { sizeOption } from "./options.js";

const log = childLogger("demo");

/** The sample photos (CC0) in test/fixtures/images, found from the fixture model's folder. */
const SAMPLE = (name: string) => path.resolve(FIXTURE_MODEL, "../../../images", name);
const CHELSEA = SAMPLE("chelsea.png");

interface Flags {
  image: string;
  prompt: string;
  preset: PresetName;
  seeds: string;
  pick: string;
  out: string;
  embeddingSteps?: string;
  finetuneSteps?: string;
  ddimSteps?: string;
  size?: Size;
}

/** An optional whole-number flag (the queue's payload schema checks its range). */
function count(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UserFacingError(`${flag} must be a whole number (got "${v}")`);
  return n;
}

/** On the tiny test checkpoint a demo shows the path, not an edit: say so before it starts. */
function warnIfFixture(fixture: boolean): void {
  if (!fixture) return;
  process.stderr.write(
    "\n  MODEL is unset: this demo runs on the tiny TEST checkpoint, whose images are NOISE.\n" +
      "  It shows the whole path (queue, worker, training, grids); set MODEL to a real SD 1.x/2.x\n" +
      "  checkpoint (a diffusers folder or a hub id) for an actual edit.\n\n",
  );
}

function readFile(file: string, flag: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new UserFacingError(`cannot read ${flag} ${file}: ${(e as Error).message}`);
  }
}

interface DemoQueue {
  blobs: BlobStore;
  /** Enqueues a job and waits for its result; a failure is thrown with the job's message. */
  run<N extends JobName>(name: N, payload: unknown): Promise<JobResult<N>>;
  /** Every progress stage reported so far (the first report of a stage is always published). */
  stages: ReadonlySet<string>;
}

/**
 * A private Redis (or REDIS_URL), an engine worker on MODEL and a queue client with progress lines on
 * stderr, for the length of `body`: what a chat user's job goes through, without the chat.
 */
async function withDemoQueue(body: (q: DemoQueue) => Promise<void>): Promise<void> {
  const config = appConfig();
  const redis = await resolveRedis(config);
  // No HTTP port: a demo must not collide with a running `start`.
  const engine = await startEngine({ config: { ...config, engineHttpPort: 0 }, redisUrl: redis.url });
  const conn = new Redis(redis.url, { maxRetriesPerRequest: null });
  const blobs = new BlobStore(conn, blobLimits(config));
  const client = new QueueClient({
    redisUrl: redis.url,
    blobs,
    limits: { maxQueued: config.userMaxQueuedJobs },
    model: configuredModelIdentity(config),
  });
  try {
    await client.listen();
    let lastLine = "";
    const stages = new Set<string>();
    client.events.on("progress", ({ progress: p }) => {
      stages.add(p.stage);
      const line = `${p.stage} ${p.step}/${p.total}${p.loss === undefined ? "" : `  loss ${p.loss.toFixed(4)}`}${
        p.etaSeconds === undefined ? "" : `  ETA ${formatSeconds(p.etaSeconds)}`
      }`;
      if (line !== lastLine) process.stderr.write(`  ${line}\n`);
      lastLine = line;
    });
    const run = async <N extends JobName>(name: N, payload: unknown): Promise<JobResult<N>> => {
      const { jobId } = await client.enqueue(name, payload);
      return new Promise((resolve, reject) => {
        client.events.on("completed", (e) => {
          if (e.jobId === jobId) resolve(e.result as JobResult<N>);
        });
        client.events.on("failed", (e) => {
          if (e.jobId === jobId) reject(new UserFacingError(`${name} failed: ${e.message}`));
        });
      });
    };
    await body({ blobs, run, stages });
  } finally {
    await client.close();
    conn.disconnect();
    await engine.stop();
    await redis.stop();
  }
}

interface SwapFlags {
  source: string;
  subject: string;
  ref: string[];
  seeds: string;
  pick: string;
  out: string;
  conceptSteps?: string;
  steps?: string;
  size?: Size;
}

/**
 * `demo swap`: one Photoswap swap end to end the way a chat user gets it: the photo and the references
 * uploaded as blobs, a `swap.edit` job whose concept is learned by its `swap.concept` child, the variants'
 * grid and images written out, the picked variant as final.png — then the same swap again for new seeds,
 * whose concept comes from the queue's cache and whose inversion the worker kept.
 */
function swapDemoCommand(): Command {
  return new Command("swap")
    .description("a Photoswap swap end to end through the queue and an engine worker (no chat needed)")
    .option("--source <file>", "the photo whose subject is replaced", CHELSEA)
    .option("--subject <word>", "the subject in the photo", "cat")
    .option(
      "--ref <file>",
      "a reference photo of the new subject (repeat; default the sample coffee.png)",
      collect,
      [],
    )
    .option("--seeds <list>", "variant seeds of the first swap", "0,1,2,3")
    .option("--pick <n>", "the variant (1-based) to keep as final.png, as a reaction would pick it", "1")
    .option("--concept-steps <n>", "override the concept preset's training steps (a shorter demo)")
    .option("--steps <n>", "DDIM steps of the swap (default 50)")
    .option("--out <dir>", "where the grids and images go", "swap-demo")
    .addOption(sizeOption("the source photo"))
    .action(async (f: SwapFlags) => {
      const config = appConfig();
      const seeds = parseNumberList(f.seeds, "--seeds");
      const pick = Number(f.pick);
      if (!Number.isInteger(pick) || pick < 1 || pick > seeds.length)
        throw new UserFacingError(
          `--pick must be a variant number from 1 to ${seeds.length} (got ${f.pick})`,
        );
      // Its concept is learned through the queue, with the default token.
      checkSubjectWord(f.subject, "--subject", DEFAULT_CONCEPT_TOKEN);
      const conceptSteps = count("--concept-steps", f.conceptSteps);
      const steps = count("--steps", f.steps);
      const source = readFile(f.source, "--source");
      const refs = (f.ref.length > 0 ? f.ref : [SAMPLE("coffee.png")]).map((r) => readFile(r, "--ref"));
      warnIfFixture(config.modelIsFixture);
      const started = performance.now();
      await withDemoQueue(async ({ blobs, run, stages }) => {
        const origin = { platform: "console", channel: "demo" } as const;
        const put = (bytes: Buffer) => blobs.put(bytes, { userId: "demo", kind: "image" });
        const sourceBlobId = await put(source);
        const referenceBlobIds = await Promise.all(refs.map(put));
        const swap = (variantSeeds: number[]) =>
          run("swap.edit", {
            userId: "demo",
            origin,
            sourceBlobId,
            referenceBlobIds,
            subject: f.subject,
            conceptOptions: { seed: 0, ...(conceptSteps === undefined ? {} : { steps: conceptSteps }) },
            // Fewer steps than the paper's strengths count: each strength at most every step.
            options: {
              seeds: variantSeeds,
              ...(steps === undefined
                ? {}
                : {
                    steps,
                    ...Object.fromEntries(
                      Object.entries(PAPER_STRENGTHS).map(([k, v]) => [k, Math.min(v, steps)]),
                    ),
                  }),
              ...requestedSizeOptions(f.size),
            },
          });
        process.stderr.write(
          `swap.edit: the "${f.subject}" of ${f.source} for the subject of ${refs.length} reference photo(s)\n`,
        );
        const first = await swap(seeds);
        const firstSeconds = (performance.now() - started) / 1000;
        // A concept learned by an earlier run (the queue's cache lives in STATE_DIR's Redis) is not learned again.
        const learned = stages.has("concept");
        mkdirSync(f.out, { recursive: true });
        const save = async (name: string, blobId: string) => {
          writeFileSync(path.join(f.out, name), await blobs.require(blobId, name));
          return name;
        };
        const files = [await save("grid.png", first.gridBlobId)];
        for (const [i, v] of first.images.entries())
          files.push(await save(`swap-${i + 1}-seed-${v.seed}.png`, v.blobId));
        const picked = first.images[pick - 1];
        if (picked) files.push(await save("final.png", picked.blobId));
        process.stderr.write("swap.edit again, new seeds: the concept cached, the inversion kept\n");
        const r0 = performance.now();
        const again = await swap(seeds.map((s) => s + 100));
        const againSeconds = (performance.now() - r0) / 1000;
        files.push(await save("grid-again.png", again.gridBlobId));
        process.stdout.write(
          `wrote ${files.length} files to ${f.out} (grid.png: the variants; final.png: variant ${pick}; grid-again.png: new seeds) ` +
            `— the first swap took ${formatSeconds(firstSeconds)} (${learned ? "concept learning included" : "its concept from the queue's cache: learned by an earlier run"}), ` +
            `the second ${formatSeconds(againSeconds)}\n`,
        );
        if (config.modelIsFixture)
          log.warn("these images come from the tiny TEST checkpoint: noise, not a swap");
      });
    });
}

export function demoCommand(): Command {
  return new Command("demo")
    .description(
      "an Imagic edit end to end through the queue and an engine worker (no chat needed); `demo swap`: a Photoswap swap",
    )
    .enablePositionalOptions()
    .addCommand(swapDemoCommand())
    .option("--image <file>", "the photo", CHELSEA)
    .option("--prompt <text>", "the edit", "a photo of a cat wearing a hat")
    .addOption(new Option("--preset <name>", "training schedule").choices(PRESET_NAMES).default("fast"))
    .option("--seeds <list>", "seeds of the first grid", "1,2,3,4")
    .option("--pick <n>", "the tile (1-based) whose η sweep to render next, as a reaction would pick it", "1")
    .option("--out <dir>", "where the grids and images go", "imagic-demo")
    .option("--embedding-steps <n>", "override the preset's embedding steps (a shorter demo)")
    .option("--finetune-steps <n>", "override the preset's fine-tune steps")
    .option("--ddim-steps <n>", "DDIM steps of both renders (default: the preset's / 50)")
    .addOption(sizeOption())
    .action(async (f: Flags) => {
      const config = appConfig();
      const seeds = parseNumberList(f.seeds, "--seeds");
      const pick = Number(f.pick);
      if (!Number.isInteger(pick) || pick < 1 || pick > seeds.length) {
        throw new UserFacingError(`--pick must be a tile number from 1 to ${seeds.length} (got ${f.pick})`);
      }
      const embeddingSteps = count("--embedding-steps", f.embeddingSteps);
      const finetuneSteps = count("--finetune-steps", f.finetuneSteps);
      const steps = count("--ddim-steps", f.ddimSteps);
      const photo = readFile(f.image, "--image");
      warnIfFixture(config.modelIsFixture);
      const started = performance.now();
      await withDemoQueue(async ({ blobs, run }) => {
        const origin = { platform: "console", channel: "demo" } as const;
        const imageBlobId = await blobs.put(photo, { userId: "demo", kind: "image" });
        process.stderr.write(`imagic.train: "${f.prompt}" on ${f.image}, preset ${f.preset}\n`);
        const trained = await run("imagic.train", {
          userId: "demo",
          origin,
          imageBlobId,
          prompt: f.prompt,
          options: {
            preset: f.preset,
            seeds,
            ...(embeddingSteps === undefined ? {} : { embeddingSteps }),
            ...(finetuneSteps === undefined ? {} : { finetuneSteps }),
            ...(steps === undefined ? {} : { steps }),
            ...requestedSizeOptions(f.size),
          },
        });
        mkdirSync(f.out, { recursive: true });
        const save = async (name: string, blobId: string) => {
          writeFileSync(path.join(f.out, name), await blobs.require(blobId, name));
          return path.join(f.out, name);
        };
        const files = [await save("grid.png", trained.gridBlobId)];
        for (const i of trained.images) files.push(await save(`eta-${i.eta}-seed-${i.seed}.png`, i.blobId));
        const seed = seeds[pick - 1] as number;
        process.stderr.write(
          `imagic.render: the η sweep of tile ${pick} (seed ${seed}) from the cached state\n`,
        );
        const r0 = performance.now();
        const sweep = await run("imagic.render", {
          userId: "demo",
          origin,
          stateBlobId: trained.stateBlobId,
          seeds: [seed],
          etas: [0.6, 0.8, 1, 1.2, 1.4],
          ...(steps === undefined ? {} : { steps }),
        });
        const renderSeconds = (performance.now() - r0) / 1000;
        files.push(await save(`sweep-seed-${seed}.png`, sweep.gridBlobId));
        for (const i of sweep.images) files.push(await save(`eta-${i.eta}-seed-${i.seed}.png`, i.blobId));
        process.stdout.write(
          `wrote ${files.length} files to ${f.out} (grid.png: the first grid; sweep-seed-${seed}.png: η 0.6 → 1.4) ` +
            `in ${formatSeconds((performance.now() - started) / 1000)}; the sweep from the cached state took ${formatSeconds(renderSeconds)}\n`,
        );
        if (config.modelIsFixture)
          log.warn("these images come from the tiny TEST checkpoint: noise, not an edit");
      });
    });
}
